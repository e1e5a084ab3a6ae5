"""The import dialog: choose files or folders, import them in the background with a progress bar
and Cancel, then report what was imported, which duplicates were skipped (and which of them got
their folder's label, or keep another one), and why files failed."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

from engine.images.importing import ImportReport, import_paths
from engine.runtime.jobs import JobOutcome, JobStatus
from gui.import_check import ImportCheckView
from gui.runner import QtJobRunner

JOB_NAME = "import"


def has_class_folders(paths: list[str]) -> bool:
    """A single folder whose sub-folders hold the images looks like a folder-per-class layout."""
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    return len(folders) == 1 and len(paths) == 1 and any(
        child.is_dir() and not child.name.startswith(".") for child in folders[0].iterdir()
    )


class ImportDialog(QDialog):
    """``finished_import(report)`` is emitted once the job ended (done or cancelled)."""

    finished_import = Signal(object)

    def __init__(self, project, runner: QtJobRunner, paths: list[str] | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle(f"Import images into {project.name}")
        self.project = project
        self.runner = runner
        self.report: ImportReport | None = None
        self._imported_so_far: ImportReport | None = None  # a cancelled import's partial result
        self.running = False

        intro = QLabel("Add image files or folders (folders are searched with all their sub-folders). "
                       "You can also drop them onto the main window.")
        intro.setWordWrap(True)
        self.path_list = QListWidget()
        self.path_list.setMinimumHeight(110)
        self.add_files_button = QPushButton("Add files…")
        self.add_folder_button = QPushButton("Add folder…")
        self.clear_button = QPushButton("Clear")
        self.add_files_button.clicked.connect(self._choose_files)
        self.add_folder_button.clicked.connect(self._choose_folder)
        self.clear_button.clicked.connect(self._clear)
        pick_row = QHBoxLayout()
        for button in (self.add_files_button, self.add_folder_button, self.clear_button):
            pick_row.addWidget(button)
        pick_row.addStretch(1)

        self.folders_are_classes = QCheckBox("Sub-folder names are classes (e.g. cans/, bottles/ → labels)")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("Choose what to import.")
        self.status.setWordWrap(True)
        self.failures = QTreeWidget()  # files that failed, and duplicates whose label differs from their folder
        self.failures.setHeaderLabels(["File", "What happened"])
        self.failures.setColumnWidth(0, 380)
        self.failures.setVisible(False)
        self.check = ImportCheckView(runner)  # look-alikes and unusual images among the new ones

        self.import_button = QPushButton("Import")
        self.import_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.close_button = QPushButton("Close")
        self.import_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.import_button, self.cancel_button, self.close_button):
            buttons.addWidget(button)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.path_list)
        layout.addLayout(pick_row)
        layout.addWidget(self.folders_are_classes)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.check)
        layout.addWidget(self.failures, 1)
        layout.addLayout(buttons)
        self.resize(680, 460)
        runner.progress.connect(self._on_progress)
        self.add_paths(paths or [])
        self._update_buttons()

    # -- choosing -------------------------------------------------------------------------------
    def add_paths(self, paths: list[str]) -> None:
        known = set(self.paths())
        for path in paths:
            if path not in known:
                self.path_list.addItem(str(path))
        if paths:
            self.folders_are_classes.setChecked(has_class_folders(self.paths()))
        self._update_buttons()

    @property
    def accepts_paths(self) -> bool:
        """True until an import has run: afterwards the dialog only shows its report."""
        return not self.running and self.report is None

    def paths(self) -> list[str]:
        return [self.path_list.item(i).text() for i in range(self.path_list.count())]

    def _choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Choose images", os.path.expanduser("~"),
                                                "Images (*.jpg *.jpeg *.png *.bmp *.gif *.webp *.tif *.tiff);;All files (*)")
        self.add_paths(files)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder of images", os.path.expanduser("~"))
        if folder:
            self.add_paths([folder])

    def _clear(self) -> None:
        self.path_list.clear()
        self._update_buttons()

    def _update_buttons(self) -> None:
        idle = not self.running
        self.import_button.setEnabled(idle and bool(self.paths()) and self.report is None)
        self.cancel_button.setEnabled(self.running)
        self.close_button.setEnabled(idle)
        for widget in (self.add_files_button, self.add_folder_button, self.clear_button, self.folders_are_classes):
            widget.setEnabled(idle and self.report is None)

    # -- running --------------------------------------------------------------------------------
    def start(self) -> bool:
        """Submit the import job; the dialog stays open and responsive until it finishes."""
        if self.running or not self.paths():
            return False
        self.running = True
        self.progress.setValue(0)
        self.status.setText("Starting…")
        self.runner.submit(JOB_NAME, import_paths, self.project, self.paths(),
                           labels_from_folders=self.folders_are_classes.isChecked(), on_done=self._on_done,
                           on_partial=self._on_partial)
        self._update_buttons()
        return True

    def cancel(self) -> None:
        if self.running:
            self.status.setText("Cancelling after the current batch… (everything imported so far is kept)")
            self.runner.cancel(JOB_NAME)

    def _on_progress(self, name: str, fraction: float, message: str) -> None:
        if name == JOB_NAME and self.running:
            self.progress.setValue(int(fraction * 1000))
            if message:
                self.status.setText(message)

    def _on_partial(self, report: ImportReport) -> None:
        self._imported_so_far = report

    def _on_done(self, outcome: JobOutcome) -> None:
        self.running = False
        if outcome.status is JobStatus.FAILED:
            self.status.setText(f"The import stopped: {outcome.error}")
            self.status.setStyleSheet("color: #b00020;")
        elif outcome.status is JobStatus.CANCELLED and self._imported_so_far is None:
            self.status.setText("Import cancelled before it began. Nothing was imported.")
        else:
            cancelled = outcome.status is JobStatus.CANCELLED
            self.report = self._imported_so_far if cancelled else outcome.result
            self.progress.setValue(1000)
            self._show_report(self.report, cancelled)
            if not cancelled:
                self.check.start(self.project, self.report.image_ids)
        self._update_buttons()
        self.finished_import.emit(self.report)

    def _show_report(self, report: ImportReport, cancelled: bool) -> None:
        lines = [f"<b>{report.imported} image{'s' if report.imported != 1 else ''} imported</b>"]
        if report.labeled:
            classes = ", ".join(f"{name} ({count})" for name, count in report.classes.items())
            lines.append(f"{report.labeled} labeled from folder names: {classes}")
        lines.append(f"{report.duplicates} duplicate{'s' if report.duplicates != 1 else ''} skipped "
                     "(already in the project)")
        if report.labeled_duplicates:
            lines.append(f"{report.labeled_duplicates} of them had no label and got their folder's label")
        if report.conflicts:
            lines.append(f"{len(report.conflicts)} of them {'is' if len(report.conflicts) == 1 else 'are'} labeled "
                         "otherwise than their folder says: their label was kept — see below")
        if report.skipped:
            lines.append(f"{report.skipped} non-image file{'s' if report.skipped != 1 else ''} ignored")
        lines.append(f"{len(report.failed)} file{'s' if len(report.failed) != 1 else ''} failed"
                     + (" — see below" if report.failed else ""))
        if cancelled:
            lines.insert(0, "<b>Cancelled.</b> Everything imported before that is kept.")
        self.status.setText("<br>".join(lines))
        self.failures.clear()
        rows = [(failed.path, failed.reason) for failed in report.failed]
        rows.extend((c.path, f"kept its label “{c.label}”; its folder says “{c.folder_label}”")
                    for c in report.conflicts)
        for path, what in rows:
            item = QTreeWidgetItem([path, what])
            item.setToolTip(0, path)
            item.setToolTip(1, what)
            self.failures.addTopLevelItem(item)
        self.failures.setVisible(bool(rows))

    def reject(self) -> None:
        """Esc or the close box while importing means cancel, not leaving a job behind unseen."""
        if self.running:
            self.cancel()
            return
        super().reject()

    def closeEvent(self, event) -> None:
        if self.running:
            self.cancel()
            event.ignore()
            return
        super().closeEvent(event)

