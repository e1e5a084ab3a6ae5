"""The model report panel: the project's model versions (make one active) and the selected
version's report (gui/report_view.py). The numbers are computed by engine.insight.report, in the
background on the runner it is given; reports of requests the user has moved on from are dropped.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QHBoxLayout, QLabel, QPushButton, QSplitter, QTableWidgetItem, QVBoxLayout, QWidget

from engine.insight.history import VersionSummary, list_versions
from engine.insight.report import Report, ReportFn, project_report, report_job
from engine.models.evolving import ACCURACY_STEP
from engine.runtime.jobs import JobOutcome, JobStatus
from gui.report_view import ReportView, percent, readonly_table
from gui.runner import QtJobRunner
from storage.modelstore import set_active_model

REPORT_JOB = "model-report"
NO_PROJECT_TEXT = "Open or create a project: its model versions, and how well each one does, appear here."
# What matters first comes first, so a narrow dock still shows which version is in use and how good each is.
VERSION_COLUMNS = ["Version", "In use", "Accuracy", "Labeled", "Method", "Network", "Date"]
EVOLVING_TIP = (
    "Retrained by itself as you label: each retrain replaces it, and the accuracy it had along the way stays "
    "on the training chart. It becomes a version of its own when you train on purpose, export it, or its "
    "accuracy moves by {step:.0f} points or more."
).format(step=ACCURACY_STEP * 100)
VERSION_TIPS = {
    "Version": "Versions you trained on purpose or exported are kept; the one marked “updating” follows "
               "your labels",
    "In use": "The version that sorts your images and makes the suggestions",
    "Accuracy": "Right on this share of the images it was tested on (validation accuracy)",
    "Labeled": "Labeled images it was trained with",
}


def version_cells(summary: VersionSummary) -> list[str]:
    """One row of the versions table."""
    return [
        f"{summary.version} · updating" if summary.evolving else str(summary.version),
        "✓" if summary.is_active else "",
        percent(summary.metrics.accuracy),
        str(summary.n_labeled),
        summary.method_title,
        summary.backbone_title,
        summary.created_at.strftime("%d %b %H:%M"),
    ]


class ModelReport(QWidget):
    """Model versions (make one active) and the selected version's report."""

    show_images = Signal(object, str)  # image ids, description (a confusion-matrix cell)
    active_changed = Signal(int)
    report_shown = Signal(object)  # the version whose report (or lack of one) is now on screen

    def __init__(self, project=None, *, report_fn: ReportFn = project_report, runner: QtJobRunner | None = None,
                 parent: QWidget | None = None):
        """``runner`` (a QtJobRunner for reads) computes reports in the background: a report reads
        every prediction and label, which would freeze the window at 100k images. Without one
        the report is computed at once, on the calling thread."""
        super().__init__(parent)
        self.project = project
        self.runner = runner
        self._report_fn = report_fn
        self._versions: list[VersionSummary] = []
        self._active_shown: int | None = None  # the version in use when the table was last filled
        self._generation = 0  # reports of older requests are dropped when they arrive

        self.versions_table = readonly_table(VERSION_COLUMNS)
        self.versions_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.versions_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.versions_table.itemSelectionChanged.connect(self._version_selected)
        for column, name in enumerate(VERSION_COLUMNS):
            self.versions_table.horizontalHeaderItem(column).setToolTip(VERSION_TIPS.get(name, ""))
        self.activate_button = QPushButton("Use this version")
        self.activate_button.setToolTip("Make the selected version the one that sorts and suggests")
        self.activate_button.setEnabled(False)
        self.activate_button.clicked.connect(self.activate_selected)
        self.view = ReportView()
        self.view.show_images.connect(self.show_images)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(QLabel("<b>Model versions</b>"))
        top_layout.addWidget(self.versions_table)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.activate_button)
        top_layout.addLayout(buttons)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(self.view)
        splitter.setStretchFactor(1, 3)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self.refresh()

    @property
    def report(self) -> Report | None:
        return self.view.report

    @property
    def report_version(self) -> int | None:
        return self.view.version

    # -- data ---------------------------------------------------------------------------------
    def set_project(self, project) -> None:
        """Another project (or none): its versions, opened on the one in use."""
        self.cancel()
        self.project = project
        self._versions = []
        self._active_shown = None
        self.versions_table.setRowCount(0)
        self.refresh()

    def cancel(self) -> None:
        """Drop the report being computed (another project, or the window is closing)."""
        self._generation += 1
        if self.runner is not None and not self.runner.closed:
            self.runner.cancel(REPORT_JOB)

    def refresh(self) -> None:
        """Reload the versions list and recompute the report of the version the user was looking
        at (labels may have changed). When another version came into use (a new training, "Use
        this version", another project) the one in use is shown instead (or else the newest)."""
        previous = self.selected_version()
        self._versions = list_versions(self.project) if self.project is not None else []
        active = next((v.version for v in self._versions if v.is_active), None)
        if active != self._active_shown:
            previous, self._active_shown = None, active
        table = self.versions_table
        table.blockSignals(True)
        table.setRowCount(len(self._versions))
        for row, summary in enumerate(self._versions):
            for column, text in enumerate(version_cells(summary)):
                item = QTableWidgetItem(text)
                if VERSION_COLUMNS[column] == "Date":
                    item.setToolTip(summary.created_at.strftime("%Y-%m-%d %H:%M:%S"))
                elif VERSION_COLUMNS[column] == "Version" and summary.evolving:
                    item.setToolTip(EVOLVING_TIP)
                if summary.is_active:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                table.setItem(row, column, item)
        if self._versions:
            table.selectRow(self._row_to_select(previous))
        table.blockSignals(False)
        if self._versions:
            self._version_selected()  # always: the same version's report changes with the labels
        else:
            self._generation += 1
            self.view.show_report(None, None)
            if self.project is None:
                self.view.say(NO_PROJECT_TEXT)
            else:  # no model yet: the labelers' agreement may still be worth showing
                self.request_report(None)
            self.report_shown.emit(None)
            self.activate_button.setEnabled(False)

    def _row_to_select(self, previous: int | None) -> int:
        versions = [v.version for v in self._versions]
        if previous in versions:
            return versions.index(previous)
        active = [row for row, v in enumerate(self._versions) if v.is_active]
        return active[0] if active else len(versions) - 1

    def selected_version(self) -> int | None:
        rows = self.versions_table.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self._versions):
            return None
        return self._versions[rows[0].row()].version

    def _version_selected(self) -> None:
        version = self.selected_version()
        summary = next((v for v in self._versions if v.version == version), None)
        self.activate_button.setEnabled(summary is not None and not summary.is_active)
        if version is not None and self.project is not None:
            self.request_report(version)

    def request_report(self, version: int | None) -> None:
        """Compute and show one version's report: in the background when there is a runner."""
        self._generation += 1
        runner = self.runner
        if runner is None:
            self._show(self._report_fn(self.project, version), version)
            return
        if runner.closed:
            return
        runner.cancel(REPORT_JOB)  # a queued older request is skipped
        generation = self._generation
        if self.report_version != version:
            self.view.say(f"Computing the report of version {version}…")
        runner.submit(REPORT_JOB, report_job, self._report_fn, self.project, version,
                      on_done=lambda outcome: self._report_ready(generation, version, outcome))

    def _report_ready(self, generation: int, version: int, outcome: JobOutcome) -> None:
        if generation != self._generation:
            return  # the user moved on (another version, new labels, another project)
        if outcome.status is JobStatus.DONE:
            self._show(outcome.result, version)
        elif outcome.status is JobStatus.FAILED:  # what went wrong, for a bug report, in the tooltip
            self.view.say(f"The report of version {version} could not be computed. Select the version "
                          "again to retry.", details=outcome.error)

    def _show(self, report: Report | None, version: int) -> None:
        self.view.show_report(report, version)
        self.report_shown.emit(version)

    def activate_selected(self) -> None:
        version = self.selected_version()
        if version is None or self.project is None:
            return
        set_active_model(self.project, version)
        self.refresh()
        self.active_changed.emit(int(version))
