"""The main window's status bar: the open project's counts, and the running job with its progress."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar

from gui.runner import QtJobRunner

MAX_JOB_TEXT = 60  # characters of a job's message: a long one must not widen the window


class StatusLine:
    """Fills ``status_bar``'s permanent widgets; follows ``runner``'s progress."""

    def __init__(self, status_bar: QStatusBar, runner: QtJobRunner):
        self.counts_label = QLabel()
        self.job_label = QLabel()
        self.job_progress = QProgressBar()
        self.job_progress.setRange(0, 1000)
        self.job_progress.setMaximumWidth(160)
        self.job_progress.setVisible(False)
        status_bar.addPermanentWidget(self.job_label)
        status_bar.addPermanentWidget(self.job_progress)
        status_bar.addPermanentWidget(self.counts_label)
        runner.progress.connect(self._job_progress)
        runner.busy_changed.connect(self._busy_changed)

    def show_counts(self, project_name: str | None, images: int = 0, labeled: int = 0) -> None:
        if project_name is None:
            self.counts_label.setText("No project open")
            return
        self.counts_label.setText(
            f"<b>{project_name}</b>: {images:,} images · {labeled:,} labeled · {images - labeled:,} unlabeled")

    def _job_progress(self, name: str, fraction: float, message: str) -> None:
        self.job_progress.setVisible(True)
        self.job_progress.setValue(int(fraction * 1000))
        text = message or name
        self.job_label.setText(text if len(text) <= MAX_JOB_TEXT else text[: MAX_JOB_TEXT - 1] + "…")
        self.job_label.setToolTip(text)

    def _busy_changed(self, busy: bool) -> None:
        if not busy:
            self.job_progress.setVisible(False)
            self.job_label.setText("")
            self.job_label.setToolTip("")
