"""The training panel: pick a method in plain words, start or cancel, watch progress and curves.

The panel talks to the engine only through the QtJobRunner it is given. Everything it needs from
the engine (the training function, the list of backbones, the device name, the model history) is
looked up lazily and can be passed in instead, so the panel can be tested with fake jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.jobs import JobOutcome
from gui.curves import TrainingCurves
from gui.runner import QtJobRunner

JOB_NAME = "train"
DEFAULT_BACKBONE = "efficientnet_lite0"
AUTO_RETRAIN_DELAY_MS = 2500


@dataclass(frozen=True)
class Method:
    key: str  # the engine's method name
    title: str
    detail: str
    fine_tune: bool


METHODS = (
    Method("logreg", "Quick — seconds, good with few labels",
           "Learns a simple classifier on top of the network's image features.", False),
    Method("finetune", "Thorough — fine-tune the network, best with more labels and a GPU",
           "Adjusts the whole network to your images; takes minutes to hours.", True),
)


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    title: str
    layers: tuple[str, ...]
    default_layer: str | None


DEFAULT_CHOICE = BackboneChoice(DEFAULT_BACKBONE, "EfficientNet-Lite0", (), None)


def available_backbones() -> list[BackboneChoice]:
    """Backbones from engine.backbones (name, title, feature layers)."""
    from engine.backbones import get_backbone, list_backbones

    entries = list_backbones(available_only=True) or list_backbones()  # those whose weights are here
    choices = []
    for entry in entries:
        spec = entry if hasattr(entry, "name") else get_backbone(str(entry))
        layers = tuple(getattr(spec, "layers", ()) or ())
        choices.append(BackboneChoice(spec.name, getattr(spec, "title", spec.name), layers,
                                      getattr(spec, "default_layer", layers[0] if layers else None)))
    return choices


def model_history(project) -> tuple[list[int], list[float]]:
    """(labeled images, validation accuracy) per model version, oldest first, from the model store."""
    from storage.modelstore import list_models

    points = []
    for info in list_models(project):
        accuracy = metric(getattr(info, "metrics", {}) or {}, "val_acc", "val_accuracy", "accuracy")
        n_labeled = getattr(info, "n_labeled", None)
        if accuracy is not None and n_labeled is not None:
            points.append((getattr(info, "created_at", None) or getattr(info, "version", 0), n_labeled, accuracy))
    points.sort(key=lambda p: (str(p[0]) if not isinstance(p[0], int) else f"{p[0]:012d}"))
    return [p[1] for p in points], [p[2] for p in points]


def metric(metrics: dict, *names: str) -> float | None:
    """The first of ``names`` present in a metrics dict (also looks one level down, e.g. metrics['val'])."""
    for name in names:
        value = metrics.get(name)
        if isinstance(value, (int, float)):
            return float(value)
    for nested in ("val", "validation"):
        inner = metrics.get(nested)
        if isinstance(inner, dict):
            found = metric(inner, *(n.removeprefix("val_") for n in names))
            if found is not None:
                return found
    return None


def has_two_labeled_classes(project) -> bool:
    """Whether training can succeed: images of at least two classes are labeled (the engine's
    own rule, engine.classifiers.check_labels). Two index look-ups, quick at 100k labels."""
    from sqlalchemy import select

    from storage.models import Label

    with project.session() as session:
        found = session.scalars(select(Label.class_id).distinct().limit(2)).all()
    return len(found) >= 2


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class TimeLeftEstimator:
    """Time left from the recent progress rate (a sliding window, so a slow start is forgotten)."""

    def __init__(self, window_s: float = 15.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self.samples: list[tuple[float, float]] = []

    def reset(self) -> None:
        self.samples.clear()

    def update(self, fraction: float) -> float | None:
        now = self.clock()
        if self.samples and fraction < self.samples[-1][1]:
            self.samples.clear()  # a new step restarted the bar
        self.samples.append((now, fraction))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window_s:
            self.samples.pop(0)
        first_t, first_f = self.samples[0]
        if now - first_t < 1.5 or fraction - first_f <= 0.005:
            return None
        rate = (fraction - first_f) / (now - first_t)
        return (1.0 - fraction) / rate


class TrainingPanel(QWidget):
    """Method, advanced options, Start/Cancel, progress with time left, device, and curves."""

    training_started = Signal(str)  # method
    training_finished = Signal(object)  # JobOutcome

    def __init__(
        self,
        runner: QtJobRunner,
        project=None,
        *,
        train_fn: Callable[..., Any] | None = None,
        backbones: Sequence[BackboneChoice] | None = None,
        device: str | None = None,
        history_fn: Callable[[Any], tuple[list[int], list[float]]] | None = None,
        can_train_fn: Callable[[Any], bool] | None = None,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.runner = runner
        self.project = project
        self._train_fn = train_fn
        self._history_fn = history_fn or model_history
        self._can_train_fn = can_train_fn or has_two_labeled_classes
        self._running_method: str | None = None
        self._running_automatic = False
        self._retrain_pending = False
        self._estimator = TimeLeftEstimator()

        title = QLabel("<b>Train a model</b>")
        self.method_buttons: dict[str, QRadioButton] = {}
        methods_box = QVBoxLayout()
        from engine.edition import FULL_EDITION_HINT, torch_available

        # The CPU edition has no PyTorch: its Thorough option stays visible but off, saying why.
        self._unavailable_methods = set() if torch_available() else {m.key for m in METHODS if m.fine_tune}
        for method in METHODS:
            button = QRadioButton(method.title)
            button.setToolTip(method.detail)
            if method.key in self._unavailable_methods:
                button.setText(f"{method.title} (full edition only)")
                button.setToolTip(f"Thorough training needs the full edition: {FULL_EDITION_HINT}")
                button.setEnabled(False)
            self.method_buttons[method.key] = button
            methods_box.addWidget(button)
        self.method_buttons[METHODS[0].key].setChecked(True)

        self.auto_retrain = QCheckBox("Retrain by itself when labels change (Quick only)")
        self.auto_retrain.setChecked(True)

        # Advanced, folded away.
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setAutoRaise(True)
        self.advanced = QFrame()
        form = QFormLayout(self.advanced)
        form.setContentsMargins(18, 0, 0, 0)
        self.backbone_combo = QComboBox()
        self.layer_combo = QComboBox()
        form.addRow("Network (backbone):", self.backbone_combo)
        form.addRow("Feature layer:", self.layer_combo)
        self.advanced.setVisible(False)
        self.advanced_toggle.toggled.connect(self._toggle_advanced)

        self.start_button = QPushButton("Start training")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("")
        self.step_label = QLabel("Ready.")
        self.step_label.setWordWrap(True)
        self.device_label = QLabel("Checking for a GPU…")
        self.device_label.setWordWrap(True)

        self.curves = TrainingCurves()

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addLayout(methods_box)
        layout.addWidget(self.auto_retrain)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.step_label)
        layout.addWidget(self.device_label)
        layout.addWidget(self.curves, 1)

        self._retrain_timer = QTimer(self)
        self._retrain_timer.setSingleShot(True)
        self._retrain_timer.setInterval(AUTO_RETRAIN_DELAY_MS)
        self._retrain_timer.timeout.connect(self._auto_retrain_now)

        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.backbone_combo.currentIndexChanged.connect(self._fill_layers)
        self.method_buttons[METHODS[0].key].toggled.connect(self._method_toggled)
        runner.progress.connect(self._on_progress)
        runner.partial.connect(self._on_partial)

        self._backbones: list[BackboneChoice] = []
        self.set_backbones(backbones if backbones is not None else [DEFAULT_CHOICE])
        if device is not None:
            self.set_device(device)
        if device is None or backbones is None:
            # Asking torch about GPUs and backbones takes seconds: do it off the GUI thread.
            runner.submit("training-options", _options_job, device is None, backbones is None,
                          on_done=self._options_known)
        self.refresh_history()
        self._update_buttons()  # nothing to train before a project is open

    # -- configuration ------------------------------------------------------------------------
    def set_project(self, project) -> None:
        self.project = project
        self.refresh_history()
        self._update_buttons()

    def set_backbones(self, backbones: Sequence[BackboneChoice]) -> None:
        self._backbones = list(backbones)
        self.backbone_combo.blockSignals(True)
        self.backbone_combo.clear()
        for choice in self._backbones:
            suffix = " (default)" if choice.name == DEFAULT_BACKBONE else ""
            self.backbone_combo.addItem(f"{choice.title}{suffix}", choice.name)
        index = max(0, self.backbone_combo.findData(DEFAULT_BACKBONE))
        self.backbone_combo.setCurrentIndex(index)
        self.backbone_combo.blockSignals(False)
        self._fill_layers()

    def _fill_layers(self) -> None:
        self.layer_combo.clear()
        index = self.backbone_combo.currentIndex()
        if not (0 <= index < len(self._backbones)):
            return
        choice = self._backbones[index]
        for layer in choice.layers:
            suffix = " (default)" if layer == choice.default_layer else ""
            self.layer_combo.addItem(f"{layer}{suffix}", layer)
        if not choice.layers:
            self.layer_combo.addItem("default", None)
        default = self.layer_combo.findData(choice.default_layer)
        self.layer_combo.setCurrentIndex(max(0, default))

    def set_device(self, name: str) -> None:
        lowered = (name or "").lower()
        if lowered.startswith(("cuda", "mps", "gpu")) or "nvidia" in lowered:
            shown = name[4:].strip() if lowered.startswith("gpu:") else name  # engine: "GPU: <name> (...)"
            self.device_label.setText(f"GPU in use: {shown}")
            self.device_label.setStyleSheet("color: #1b7f3b;")
        else:
            where = f" ({name})" if name and name != "cpu" else ""
            self.device_label.setText(
                f"No GPU found: training uses the processor{where}. Quick training stays fast; "
                "Thorough training will be slow."
            )
            self.device_label.setStyleSheet("")
        self.device = name

    def _options_known(self, outcome: JobOutcome) -> None:
        result = outcome.result if outcome.status == "done" else {}
        if "device" in result:
            self.set_device(result["device"] or "cpu")
        if result.get("backbones") and not self.is_running:
            self.set_backbones(result["backbones"])

    def _method_toggled(self, quick: bool) -> None:
        if quick:
            self.curves.show_history_view()
        elif len(self.curves.epoch_data("epoch")):
            self.curves.stack.setCurrentIndex(0)

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    # -- state --------------------------------------------------------------------------------
    @property
    def method(self) -> Method:
        for method in METHODS:
            if self.method_buttons[method.key].isChecked():
                return method
        return METHODS[0]

    def set_method(self, key: str) -> None:
        self.method_buttons[key].setChecked(True)

    @property
    def backbone(self) -> str:
        return self.backbone_combo.currentData() or DEFAULT_BACKBONE

    @property
    def layer(self) -> str | None:
        return self.layer_combo.currentData()

    @property
    def is_running(self) -> bool:
        return self._running_method is not None

    def _update_buttons(self) -> None:
        running = self.is_running
        self.start_button.setEnabled(not running and self.project is not None)
        self.cancel_button.setEnabled(running)
        for key, button in self.method_buttons.items():
            button.setEnabled(not running and key not in self._unavailable_methods)
        self.advanced.setEnabled(not running)

    # -- start / cancel -----------------------------------------------------------------------
    def start(self, automatic: bool = False) -> bool:
        """Start training with the chosen options; False if one is already running or no project."""
        if self.is_running or self.project is None:
            return False
        method = self.method
        train_fn = self._train_fn
        if train_fn is None:
            from engine.training import train_model as train_fn
        self._running_method = method.key
        self._running_automatic = automatic
        self._estimator.reset()
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p%")
        self.step_label.setText("Retraining after your labeling…" if automatic else "Starting…")
        self.step_label.setStyleSheet("")
        if method.fine_tune:
            self.curves.start_run()
        self._update_buttons()
        self.runner.submit(
            JOB_NAME, train_fn, self.project,
            method=method.key, backbone=self.backbone, layer=self.layer,
            on_done=self._on_done,
        )
        self.training_started.emit(method.key)
        return True

    def cancel(self) -> None:
        if self.is_running:
            self.step_label.setText("Cancelling…")
            self.runner.cancel(JOB_NAME)

    # -- automatic quick retraining -----------------------------------------------------------
    def labels_changed(self, *_args) -> None:
        """Connect to the workspace's labels-changed signal: quick training reruns, debounced."""
        if not self.auto_retrain.isChecked() or self.method.fine_tune or self.project is None:
            return
        if self.is_running:
            self._retrain_pending = self._running_method == METHODS[0].key
            return
        self._retrain_timer.start()

    def _auto_retrain_now(self) -> None:
        """The debounced automatic rerun; skipped quietly while training cannot succeed yet
        (fewer than two classes labeled): the Start button is there to say why."""
        if not self.auto_retrain.isChecked() or self.method.fine_tune or self.project is None:
            return
        if self.is_running:
            self._retrain_pending = True
            return
        if not self._can_train_fn(self.project):
            return
        self.start(automatic=True)

    # -- job signals --------------------------------------------------------------------------
    def _on_progress(self, name: str, fraction: float, message: str) -> None:
        if name != JOB_NAME or not self.is_running:
            return
        self.progress_bar.setValue(int(fraction * 1000))
        left = self._estimator.update(fraction)
        text = message or "Working…"
        if left is not None and fraction < 0.999:
            text += f" — about {format_seconds(left)} left"
        self.step_label.setText(text)

    def _on_partial(self, name: str, result: Any) -> None:
        if name != JOB_NAME or not isinstance(result, dict):
            return
        if result.get("kind") == "epoch":
            self.curves.add_epoch(result)

    def _on_done(self, outcome: JobOutcome) -> None:
        method = self._running_method
        automatic = self._running_automatic
        self._running_method = None
        self._running_automatic = False
        self._update_buttons()
        self.progress_bar.setFormat("")
        if outcome.status == "done":
            self.progress_bar.setValue(1000)
            self.step_label.setText(_done_text(outcome.result, outcome.seconds))
            self.step_label.setStyleSheet("")
        elif outcome.status == "cancelled":
            self.progress_bar.setValue(0)
            self.step_label.setText("Training cancelled. The previous model is still in use.")
            self.step_label.setStyleSheet("")
        elif automatic:
            # Nobody pressed Start: no red error. Say it quietly; the previous model stays in use.
            self.progress_bar.setValue(0)
            self.step_label.setText(f"Not retrained automatically: {outcome.error} The previous model is still in use.")
            self.step_label.setStyleSheet("")
        else:
            self.progress_bar.setValue(0)
            self.step_label.setText(f"Training failed: {outcome.error}")
            self.step_label.setStyleSheet("color: #b00020;")
        if method is not None and not any(m.fine_tune for m in METHODS if m.key == method):
            self.refresh_history()
            self.curves.show_history_view()
        self.training_finished.emit(outcome)
        if self._retrain_pending:
            self._retrain_pending = False
            self._retrain_timer.start()

    def refresh_history(self) -> None:
        """Redraw validation accuracy vs. labels from the project's model versions."""
        if self.project is None:
            return
        try:
            n_labeled, accuracy = self._history_fn(self.project)
        except ImportError:
            return
        self.curves.set_history(n_labeled, accuracy)
        if self.curves.stack.currentIndex() != 0 or not len(self.curves.epoch_data("epoch")):
            self.curves.show_history_view()


def _options_job(context, want_device: bool, want_backbones: bool) -> dict:
    """The compute device and the backbones with weights on this machine (both import torch).

    It also imports the training engine: a first import holds the GIL for long stretches (reading
    and compiling scikit-learn, torch, ...), which would stall the window in the middle of the
    user's first training; at start-up, in the background, nobody waits for it."""
    import engine.training  # noqa: F401  (warm-up, see above)
    from engine.projection import warm_up

    warm_up()  # the same for the map's t-SNE
    try:  # and for the feature runtime, imported by the first feature extraction (~0.3 s of GIL)
        import onnxruntime  # noqa: F401
    except ImportError:
        pass

    options: dict = {}
    if want_device:
        try:
            from engine.features import device_name
        except ImportError:
            options["device"] = None
        else:
            options["device"] = device_name()
    if want_backbones:
        options["backbones"] = available_backbones()
    return options


def _done_text(result: Any, seconds: float) -> str:
    metrics = getattr(result, "metrics", None) or (result.get("metrics") if isinstance(result, dict) else None) or {}
    version = getattr(result, "model_version", None)
    accuracy = metric(metrics, "val_acc", "val_accuracy", "accuracy")
    text = f"Done in {format_seconds(seconds)}."
    if version is not None:
        text = f"Model version {version} ready in {format_seconds(seconds)}."
    if accuracy is not None:
        text += f" Validation accuracy {accuracy * 100 if accuracy <= 1 else accuracy:.1f}%."
    return text
