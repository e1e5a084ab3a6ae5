"""The training panel: pick a method in plain words, start or cancel, watch progress and curves.

The panel talks to the engine only through the QtJobRunner it is given. What it needs from the
engine (the training job, the model history, whether training can succeed, the backbones and the
device) has a default here and can be passed in instead, so the panel can be tested with fake jobs
that return the engine's real typed results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QTabWidget, QVBoxLayout, QWidget

from engine.insight.history import AccuracyHistory, model_history
from engine.insight.options import BackboneChoice, TrainingOptions, default_backbone_choice, training_options_job
from engine.models.methods import TrainingMethod
from engine.models.results import EpochResult
from engine.runtime.first_imports import heavy_imports
from engine.runtime.jobs import JobOutcome, JobStatus
from gui.advice_view import AdviceView
from gui.curves import TrainingCurves
from gui.one_per_turn import in_turn
from gui.runner import QtJobRunner
from gui.training_options import TrainingOptionsForm
from gui.training_status import TrainingStatus
from storage.catalog import labeled_class_count

JOB_NAME = "train"
OPTIONS_JOB = "training-options"
AUTO_RETRAIN_DELAY_MS = 2500


def has_two_labeled_classes(project) -> bool:
    """Whether training can succeed: images of at least two classes are labeled (the engine's own
    rule, engine.models.classifiers.check_labels)."""
    return labeled_class_count(project, at_most=2) >= 2


def train_model(context, project, **options):
    """The engine's training job, imported when first used (it imports scikit-learn, maybe while
    a report on another worker thread does too: one thread at a time)."""
    with heavy_imports():
        from engine.models.training import train_model as train

    return train(context, project, **options)


class ChartTabs(QTabWidget):
    """The panel's two charts, one at a time. Their word-wrapped captions would otherwise ask for the
    height the text needs at the dock's width, and make the whole panel scroll inside its dock."""

    def hasHeightForWidth(self) -> bool:
        return False


class TrainingPanel(QWidget):
    """Method, advanced options, Start/Cancel, progress with time left, device, and curves."""

    training_started = Signal(str)  # method name
    training_finished = Signal(object)  # JobOutcome; its result is a TrainResult when DONE

    def __init__(
        self,
        runner: QtJobRunner,
        project=None,
        *,
        train_fn: Callable[..., Any] = train_model,
        backbones: Sequence[BackboneChoice] | None = None,
        device: str | None = None,
        history_fn: Callable[[Any], AccuracyHistory] = model_history,
        can_train_fn: Callable[[Any], bool] = has_two_labeled_classes,
        parent: QWidget | None = None,
    ):
        """``backbones`` and ``device`` not given are found by a background job (the heavy imports;
        torch only where a GPU driver is) that ``find_options()`` starts: the window calls it once it is on screen."""
        super().__init__(parent)
        self.runner = runner
        self.project = project
        self._train_fn = train_fn
        self._history_fn = history_fn
        self._can_train_fn = can_train_fn
        self._running_method: TrainingMethod | None = None
        self._running_automatic = False
        self._running_project = None  # the project the running job trains
        self._options_wanted = (device is None, backbones is None)
        self._retrain_pending = False

        self.options = TrainingOptionsForm()
        self.method_buttons = self.options.method_buttons
        self.auto_retrain = self.options.auto_retrain
        self.start_button = QPushButton("Start training")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        self.status = TrainingStatus()
        self.curves = TrainingCurves()
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Train a model</b>"))
        layout.addWidget(self.options)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        self.advice = AdviceView()  # how many more labels each class needs (the window refreshes it)
        # The two charts take turns: one above the other, a 768-pixel-high screen squeezed both flat.
        self.charts = ChartTabs()
        self.charts.setDocumentMode(True)
        self.charts.addTab(self.curves, "Progress")
        self.charts.addTab(self.advice, "More labels?")
        self.charts.setTabToolTip(1, "How many more labels each class needs for a better model")
        # The charts take the height left over, never more: a taller panel would scroll inside its dock.
        self.charts.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Ignored)
        layout.addWidget(self.charts, 1)

        self._retrain_timer = QTimer(self)
        self._retrain_timer.setSingleShot(True)
        self._retrain_timer.setInterval(AUTO_RETRAIN_DELAY_MS)
        self._retrain_timer.timeout.connect(self._auto_retrain_now)

        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.options.method_changed.connect(self._method_changed)
        runner.progress.connect(self._on_progress)
        runner.partial.connect(self._on_partial)

        self.options.set_backbones(backbones if backbones is not None else [default_backbone_choice()])
        if device is not None:
            self.status.set_device(device)
        self.refresh_history()
        self._update_buttons()  # nothing to train before a project is open

    def find_options(self) -> None:
        """Find the device and the backbones not given (once): asking about GPUs and
        backbones takes seconds, so a background job does it, and warms up the other heavy
        imports on the way (engine.insight.options)."""
        want_device, want_backbones = self._options_wanted
        self._options_wanted = (False, False)
        if (want_device or want_backbones) and not self.runner.closed:
            self.runner.submit(OPTIONS_JOB, training_options_job, want_device, want_backbones,
                               on_done=self._options_known)

    # -- configuration ------------------------------------------------------------------------
    def set_project(self, project) -> None:
        """Another project (or none): nothing of the last one's runs stays on screen."""
        self.project = project
        self._retrain_timer.stop()
        self._retrain_pending = False
        self.status.reset()
        self.curves.clear()
        self.refresh_history()
        self._method_changed(self.method)
        self._update_buttons()

    def project_content_changed(self) -> None:
        """Images or labels arrived: a failure they may have fixed ("No labeled images yet") goes."""
        if not self.is_running:
            self.status.clear_failure()

    def _options_known(self, outcome: JobOutcome) -> None:
        if outcome.status is JobStatus.FAILED:
            self.status.device_unknown(outcome.error)  # the default backbone stays offered
        if outcome.status is not JobStatus.DONE:
            return
        options: TrainingOptions = outcome.result
        if options.device is not None:
            self.status.set_device(options.device)
        if options.backbones and not self.is_running:
            self.options.set_backbones(options.backbones)

    def _method_changed(self, method: TrainingMethod) -> None:
        if method.trains_on_features:
            self.curves.show_history_view()
        else:
            self.curves.show_epochs_view()

    # -- state --------------------------------------------------------------------------------
    @property
    def method(self) -> TrainingMethod:
        return self.options.method

    def set_method(self, name: str) -> None:
        self.options.set_method(name)

    @property
    def backbone(self) -> str:
        return self.options.backbone

    @property
    def layer(self) -> str | None:
        return self.options.layer

    @property
    def is_running(self) -> bool:
        return self._running_method is not None

    def _update_buttons(self) -> None:
        running = self.is_running
        self.start_button.setEnabled(not running and self.project is not None)
        self.cancel_button.setEnabled(running)
        self.options.set_running(running)

    # -- start / cancel -----------------------------------------------------------------------
    def start(self, automatic: bool = False) -> bool:
        """Start training with the chosen options; False if one is already running or no project."""
        if self.is_running or self.project is None:
            return False
        method = self.method
        self._running_method = method
        self._running_automatic = automatic
        self._running_project = self.project
        self.status.show_started(automatic)
        if not automatic:
            self.charts.setCurrentWidget(self.curves)  # the run's progress
        if not method.trains_on_features:
            self.curves.start_run()
        self._update_buttons()
        # An automatic rerun is stored as the evolving version (engine.models.evolving), one on purpose is kept.
        extra = {"automatic": True} if automatic else {}
        self.runner.submit(
            JOB_NAME, self._train_fn, self.project,
            method=method.name, backbone=self.backbone, layer=self.layer,
            on_done=self._on_done, **extra,
        )
        self.training_started.emit(method.name)
        return True

    def cancel(self) -> None:
        if self.is_running:
            self.status.show_cancelling()
            self.runner.cancel(JOB_NAME)

    # -- automatic quick retraining -----------------------------------------------------------
    def _retrains_by_itself(self) -> bool:
        return self.options.retrains_by_itself and self.project is not None

    def labels_changed(self, *_args) -> None:
        """Connect to the workspace's labels-changed signal: quick training reruns, debounced."""
        if not self._retrains_by_itself():
            return
        if self.is_running:
            self._retrain_pending = self._running_method.trains_on_features
            return
        self._retrain_timer.start()

    def _auto_retrain_now(self) -> None:
        """The debounced automatic rerun; skipped quietly while training cannot succeed yet
        (fewer than two classes labeled): the Start button is there to say why."""
        if not self._retrains_by_itself():
            return
        if self.is_running:
            self._retrain_pending = True
            return
        if self._can_train_fn(self.project):
            self.start(automatic=True)

    # -- job signals --------------------------------------------------------------------------
    def _showing_the_run(self) -> bool:
        """A run is going on for the project on screen (not one closed meanwhile, still stopping)."""
        return self.is_running and self._running_project is self.project

    def _on_progress(self, name: str, fraction: float, message: str) -> None:
        if name == JOB_NAME and self._showing_the_run():
            self.status.show_progress(fraction, message)

    def _on_partial(self, name: str, result: Any) -> None:
        """Per-epoch results of network training (engine.torch.finetune streams an EpochResult each epoch)."""
        if name == JOB_NAME and isinstance(result, EpochResult) and self._showing_the_run():
            self.curves.add_epoch(result)

    def _on_done(self, outcome: JobOutcome) -> None:
        method, automatic = self._running_method, self._running_automatic
        same_project = self._running_project is self.project
        self._running_method = self._running_project = None
        self._running_automatic = False
        self._update_buttons()
        if not same_project:
            return  # a run of the project closed meanwhile: the panel already shows the new one
        cancelled_text = ""
        if outcome.status is JobStatus.CANCELLED and not method.trains_on_features:
            cancelled_text = self._back_to_quick(method)
        self.status.show_outcome(outcome, automatic, cancelled_text)
        if method.trains_on_features:
            in_turn(self._show_history_after_training, self)  # a turn of its own (gui.one_per_turn)
        self.training_finished.emit(outcome)
        if self._retrain_pending:
            self._retrain_pending = False
            self._retrain_timer.start()

    def _back_to_quick(self, cancelled: TrainingMethod) -> str:
        """After a cancelled Thorough run, choose Quick again, so the model keeps retraining by
        itself as the user labels (nothing does while Thorough is chosen); says so."""
        quick = self.options.methods[0]
        self.set_method(quick.name)
        again = ": it retrains by itself as you label" if self.auto_retrain.isChecked() else ""
        return (f"{cancelled.title} training cancelled; the previous model is still in use. "
                f"Back to {quick.title}{again}.")

    def _show_history_after_training(self) -> None:
        self.refresh_history()
        self.curves.show_history_view()

    def refresh_history(self) -> None:
        """Redraw validation accuracy vs. labels from the project's model versions."""
        self.curves.set_has_project(self.project is not None)
        if self.project is None:
            return
        self.curves.set_history(*self._history_fn(self.project))
