"""Keeps the model's suggestions fresh while the user labels: a debounced background retrain.

After a label change, once the user pauses for ``DELAY_MS``, and only when a model exists, the
active feature-based classifier is retrained quickly (warm-started, on cached features) through
the QtJobRunner; training stores fresh predictions, and the grid repaints when the job ends. When
the insight panels are installed, their training panel does this (with visible progress) and this
one stays off.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal

from engine.jobs import JobOutcome
from gui.runner import QtJobRunner
from storage import browse

JOB_NAME = "suggestions"
DELAY_MS = 1500


def refresh_suggestions_job(context, project):
    """Retrain the active feature-based model quickly; train_model stores predictions for every image.

    A network model (fine-tuned, minutes to train) is left alone: replacing it with a quick one
    behind the user's back would lose their thorough training."""
    from engine.training import FEATURE_METHODS, train_model
    from storage.modelstore import active_model

    model = active_model(project)
    if model is None or model.method not in FEATURE_METHODS:
        return None
    return train_model(context, project, method=model.method, backbone=model.backbone, layer=model.layer, quick=True)


class SuggestionRefresher(QObject):
    """``labels_changed()`` (re)starts the timer; ``refreshed`` fires after new suggestions landed."""

    refreshed = Signal()
    message = Signal(str)

    def __init__(self, runner: QtJobRunner, parent=None, job=refresh_suggestions_job):
        super().__init__(parent)
        self.runner = runner
        self.project = None
        self.enabled = True
        self._job = job
        self._again = False
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DELAY_MS)
        self.timer.timeout.connect(self._start)

    def set_project(self, project) -> None:
        self.project = project
        self.timer.stop()

    def labels_changed(self, *_args) -> None:
        if not self.enabled or self.project is None:
            return
        if browse.active_model_version(self.project) is None:
            return  # nothing to refresh until the user trains a first model
        self.timer.start()

    def _start(self) -> None:
        if self.project is None:
            return
        if self.runner.is_running(JOB_NAME):
            self._again = True  # one more run once this one ends, with the newest labels
            return
        self.message.emit("Updating suggestions with your new labels…")
        self.runner.submit(JOB_NAME, self._job, self.project, on_done=self._done)

    def _done(self, outcome: JobOutcome) -> None:
        if outcome.status == "done":
            self.message.emit("Suggestions updated.")
            self.refreshed.emit()
        elif outcome.status == "failed":
            self.message.emit(f"Suggestions were not updated: {outcome.error}")
        if self._again:
            self._again = False
            self.timer.start()
