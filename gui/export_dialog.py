"""The export dialog: save a trained model as a verified bundle, or the labeled images as a dataset.

``ExportDialog(project, runner, parent)``. The work runs as a job on the given QtJobRunner; the
dialog shows progress, lets the user cancel, and ends with the export check's agreement (or the
reason the export failed) in plain words. The main window hooks it into a menu.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine.models.methods import method_title
from engine.models.metrics import Metrics
from engine.runtime.jobs import JobOutcome, JobStatus
from engine.ship.dataset_export import DatasetExportReport, export_dataset
from engine.ship.export import ExportReport, ExportVerificationFailed, export_bundle
from engine.ship.verify import VerificationResult
from gui.runner import QtJobRunner
from storage.modelstore import ModelInfo, list_models
from storage.project import Project

JOB_NAME = "export"


def _model_title(info: ModelInfo) -> str:
    accuracy = Metrics.from_json(info.metrics).accuracy
    parts = [f"Version {info.version}", method_title(info.method), f"{len(info.class_names)} classes"]
    if accuracy is not None:
        parts.append(f"right on {accuracy * 100:.1f}% of its tests")
    if info.is_active:
        parts.append("in use")
    return " · ".join(parts)


IMAGES_CHECKED = {"validation": "images held back for testing", "labeled": "labeled images", "all": "images"}


def check_words(verification: VerificationResult) -> str:
    """The export check in plain words; the figures (ONNX, largest probability difference) go in a tooltip."""
    images = IMAGES_CHECKED.get(verification.images, "images")
    return (f"Checked: the exported model gives the same answer as Sortlab on {verification.agreed} of "
            f"{verification.compared} {images}, with the same confidence.")


class _FolderPicker(QWidget):
    """A line edit with a Browse button for an output path that does not exist yet."""

    def __init__(self, default: Path, parent: QWidget | None = None):
        super().__init__(parent)
        self.edit = QLineEdit(str(default))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(browse)

    def _browse(self) -> None:
        start = str(Path(self.edit.text()).parent)
        chosen, _ = QFileDialog.getSaveFileName(self, "Export to a new folder", self.edit.text() or start)
        if chosen:
            self.edit.setText(chosen)

    def path(self) -> Path:
        return Path(self.edit.text().strip()).expanduser()


class ExportDialog(QDialog):
    """Export a model bundle (tab 1) or the labeled dataset (tab 2)."""

    def __init__(self, project: Project, runner: QtJobRunner, parent: QWidget | None = None):
        super().__init__(parent)
        self.project = project
        self.runner = runner
        self.last_outcome: JobOutcome | None = None
        self._check_failure: ExportVerificationFailed | None = None
        self._written_so_far: DatasetExportReport | None = None  # a cancelled dataset export's partial
        self.setWindowTitle("Export")
        self.setMinimumWidth(560)
        base = project.path.parent if project.path is not None else Path.home()  # a team project: no folder

        self.tabs = QTabWidget()
        model_tab = QWidget()
        model_form = QFormLayout(model_tab)
        self.model_combo = QComboBox()
        self.models = list(reversed(list_models(project)))
        for info in self.models:
            self.model_combo.addItem(_model_title(info), info.version)
        active = next((i for i, m in enumerate(self.models) if m.is_active), 0)
        self.model_combo.setCurrentIndex(active)
        self.model_target = _FolderPicker(base / f"{project.name}-model")
        self.zip_check = QCheckBox("Also pack it into one .zip file (easier to send)")
        model_form.addRow("Model:", self.model_combo)
        model_form.addRow("Save to:", self.model_target)
        model_form.addRow("", self.zip_check)
        model_form.addRow(QLabel(
            "The bundle runs anywhere with Python, onnxruntime, numpy and Pillow (see its README.md). "
            "Sortlab checks the exported model against its own predictions before it says it is done."
        ))
        self.tabs.addTab(model_tab, "Model")

        data_tab = QWidget()
        data_form = QFormLayout(data_tab)
        self.dataset_target = _FolderPicker(base / f"{project.name}-dataset")
        self.unlabeled_check = QCheckBox("Include unlabeled images (in a folder named 'unlabeled')")
        data_form.addRow("Save to:", self.dataset_target)
        data_form.addRow("", self.unlabeled_check)
        data_form.addRow(QLabel("One folder per class, plus dataset.csv with label, source, split and prediction."))
        self.tabs.addTab(data_tab, "Labeled images")
        if not self.models:
            self.tabs.setTabEnabled(0, False)
            self.tabs.setCurrentIndex(1)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.export_button.clicked.connect(self.start_export)
        self.cancel_button.clicked.connect(self._cancel_or_close)

        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        runner.progress.connect(self._on_progress)

    @property
    def running(self) -> bool:
        return self.runner.is_running(JOB_NAME)

    def _export_checked(self, context, *args, **kwargs):
        """export_bundle on the worker thread; a failed check is kept for the dialog to tell in plain words."""
        try:
            return export_bundle(context, *args, **kwargs)
        except ExportVerificationFailed as failure:
            self._check_failure = failure
            raise

    def start_export(self) -> None:
        if self.running:
            return
        self.status.setToolTip("")
        if self.tabs.currentIndex() == 0:
            target = self.model_target.path()
            version = self.model_combo.currentData()
            self._check_failure = None
            self.runner.submit(JOB_NAME, self._export_checked, self.project, target, model_version=version,
                               make_zip=self.zip_check.isChecked(), on_done=self._on_done)
            self.status.setText(f"Exporting model version {version}…")
        else:
            target = self.dataset_target.path()
            self._written_so_far = None
            self.runner.submit(JOB_NAME, export_dataset, self.project, target,
                               include_unlabeled=self.unlabeled_check.isChecked(), on_done=self._on_done,
                               on_partial=self._on_partial)
            self.status.setText("Exporting labeled images…")
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.export_button.setEnabled(False)
        self.tabs.setEnabled(False)
        self.cancel_button.setText("Cancel")

    def _cancel_or_close(self) -> None:
        if self.running:
            self.runner.cancel(JOB_NAME)
            self.status.setText("Cancelling…")
        else:
            self.reject()

    def _on_progress(self, name: str, fraction: float, message: str) -> None:
        if name == JOB_NAME:
            self.progress.setValue(int(fraction * 1000))
            if message:
                self.status.setText(message)

    def _on_partial(self, report: DatasetExportReport) -> None:
        self._written_so_far = report

    def _on_done(self, outcome: JobOutcome) -> None:
        self.last_outcome = outcome
        self.progress.setVisible(False)
        self.export_button.setEnabled(True)
        self.tabs.setEnabled(True)
        self.cancel_button.setText("Close")
        if outcome.status is JobStatus.DONE:
            result = outcome.result
            if isinstance(result, ExportReport):
                created = (f"Created the folder {result.created_folder} (it did not exist).\n"
                           if result.created_folder is not None else "")
                self.status.setText(f"{created}Saved to {result.path}.\n{check_words(result.verification)}")
                self.status.setToolTip(f"{result.verification.summary()}.")
            else:
                self.status.setText(f"Saved {result.images} images to {result.out_dir}.")
        elif outcome.status is JobStatus.CANCELLED:
            written = self._written_so_far
            self.status.setText("Export cancelled." if written is None else
                                f"Export cancelled after {written.images} images (in {written.out_dir}).")
        elif self._check_failure is not None:  # the figures of the failed check go in the tooltip
            failure, self._check_failure = self._check_failure, None
            self.status.setText(
                "Export stopped: the exported model did not give the same answers as Sortlab on your labeled "
                f"images, so it was not saved as a finished export (what was made is kept in {failure.failed_path} "
                "for a bug report). This is a fault in Sortlab, not in your project.")
            self.status.setToolTip(str(failure))
        else:
            self.status.setText(f"Export failed: {outcome.error}")

    def done(self, result: int) -> None:  # closing the window while exporting cancels the job
        if self.running:
            self.runner.cancel(JOB_NAME)
        try:
            self.runner.progress.disconnect(self._on_progress)
        except RuntimeError:  # the runner was already deleted (the app is closing)
            pass
        super().done(result)
