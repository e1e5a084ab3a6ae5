"""The import summary's second part: once an import has finished, a background job
(engine.curation.import_check) says which new images look like ones the project already had and which
look like nothing else, each with a button that shows exactly those images in the grid."""

from __future__ import annotations

from collections.abc import Callable

import shiboken6
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.curation import import_check
from engine.runtime.jobs import JobOutcome, JobStatus
from gui.runner import QtJobRunner

JOB_NAME = "import-check"
CHECKING_TEXT = "Checking the new images for look-alikes and for images unlike the rest…"


def images_text(count: int) -> str:
    return f"{count:,} image{'s' if count != 1 else ''}"


def look_alike_text(count: int) -> str:
    verb = "looks" if count == 1 else "look"
    return f"{images_text(count)} {verb} like {'one' if count == 1 else 'ones'} you already have."


def outlier_text(count: int) -> str:
    verb = "looks" if count == 1 else "look"
    return (f"{images_text(count)} {verb} like no other image of the project or of {'its' if count == 1 else 'their'} "
            "class (a placeholder, a wrong picture?).")


class ImportCheckView(QWidget):
    """Look-alikes and unusual images among the images an import added. ``show_images(ids, title)``
    asks the window to show exactly those images."""

    show_images = Signal(object, str)

    def __init__(self, runner: QtJobRunner, check_fn: Callable | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.runner = runner
        self._check_fn = check_fn
        self.result: import_check.ImportCheck | None = None
        self.running = False
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.look_alike_label = QLabel()
        self.look_alike_label.setWordWrap(True)
        self.show_look_alikes = QPushButton("Show them")
        self.outlier_label = QLabel()
        self.outlier_label.setWordWrap(True)
        self.show_outliers = QPushButton("Show them")
        self.show_look_alikes.clicked.connect(
            lambda: self.show_images.emit(self.result.look_alike_ids, "New images that look like ones you had"))
        self.show_outliers.clicked.connect(
            lambda: self.show_images.emit(self.result.outlier_ids, "New images unlike the rest"))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.status)
        for label, button in ((self.look_alike_label, self.show_look_alikes), (self.outlier_label, self.show_outliers)):
            row = QHBoxLayout()
            row.addWidget(label, 1)
            row.addWidget(button)
            layout.addLayout(row)
        self._show(None)
        self.setVisible(False)

    def start(self, project, new_ids) -> bool:
        """Check the images an import added (none: nothing to do)."""
        new_ids = [int(i) for i in new_ids]
        if not new_ids or self.runner.closed:
            return False
        self.running = True
        self.result = None
        self._show(None)
        self.status.setText(CHECKING_TEXT)
        self.setVisible(True)
        check = self._check_fn or import_check.check_new_images  # looked up now: tests replace it there
        self.runner.submit(JOB_NAME, check, project, new_ids, on_done=self._done)
        return True

    def cancel(self) -> None:
        if self.running:
            self.runner.cancel(JOB_NAME)

    def _done(self, outcome: JobOutcome) -> None:
        if not shiboken6.isValid(self):  # the dialog was closed and deleted meanwhile
            return
        self.running = False
        if outcome.status is JobStatus.DONE:
            self.result = outcome.result
            self._show(self.result)
        elif outcome.status is JobStatus.CANCELLED:
            self.status.setText("The check for look-alikes was cancelled.")
        else:
            self.status.setText("The new images could not be compared with the others. Training will still "
                                "use them.")
            self.status.setToolTip(outcome.error)

    def _show(self, result: import_check.ImportCheck | None) -> None:
        look_alikes = len(result.look_alikes) if result is not None else 0
        outliers = len(result.outliers) if result is not None else 0
        self.look_alike_label.setText(look_alike_text(look_alikes) if look_alikes else "")
        self.outlier_label.setText(outlier_text(outliers) if outliers else "")
        for widget in (self.look_alike_label, self.show_look_alikes):
            widget.setVisible(bool(look_alikes))
        for widget in (self.outlier_label, self.show_outliers):
            widget.setVisible(bool(outliers))
        if result is not None:
            self.status.setText("" if look_alikes or outliers else
                                f"None of the {images_text(result.checked)} looks like one you already have, "
                                "and none looks out of place.")
            self.status.setVisible(not (look_alikes or outliers))
        else:
            self.status.setVisible(True)
