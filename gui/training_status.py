"""The training panel's status lines: a progress bar for the whole run with the current step and a
steady estimate of the time left, how the last run ended, and which device trains."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from PySide6.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from engine.models.results import TrainResult
from engine.runtime.jobs import JobOutcome, JobStatus

ERROR_STYLE = "color: #b00020;"
GPU_STYLE = "color: #1b7f3b;"
BAR_STEPS = 1000
READY_TEXT = "Ready."


def format_seconds(seconds: float) -> str:
    """A duration that has passed, in words ("under a second", "12 s", "3 min 05 s")."""
    if seconds < 1:
        return "under a second"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def time_left_words(seconds: float) -> str:
    """An estimate, rounded so it reads as one ("about 3 minutes left"), not a countdown."""
    if seconds < 20:
        return "a few seconds left"
    if seconds < 50:
        return "less than a minute left"
    minutes = max(1, round(seconds / 60))
    if minutes == 1:
        return "about a minute left"
    if minutes < 60:
        return f"about {minutes} minutes left"
    hours, minutes = divmod(round(seconds / 600) * 10, 60)  # to the nearest 10 minutes
    hour_words = f"{hours} hour{'s' if hours != 1 else ''}"
    return f"about {hour_words} {minutes} minutes left" if minutes else f"about {hour_words} left"


class TimeLeftEstimator:
    """Time left from the run's pace, smoothed: an exponential moving average (over about
    ``smoothing_s`` seconds) of the fraction done per second, so one slow or fast stretch (a
    validation pass, a cached batch) does not make the estimate jump by minutes."""

    MIN_INTERVAL_S = 0.5  # progress reports closer together than this are measured together
    WARM_UP_S = 3.0  # no estimate before the pace has been watched this long

    def __init__(self, smoothing_s: float = 20.0, clock: Callable[[], float] = time.monotonic):
        self.smoothing_s = smoothing_s
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self._start: tuple[float, float] | None = None  # (time, fraction) of the first report
        self._last: tuple[float, float] | None = None  # ... of the last one measured
        self.rate: float | None = None  # smoothed fraction per second

    def update(self, fraction: float) -> float | None:
        """Seconds left after this report, or None while the pace is not known yet."""
        now = self.clock()
        if self._last is None or fraction < self._last[1]:  # the first report, or a new run
            self.reset()
            self._start = self._last = (now, fraction)
            return None
        last_t, last_f = self._last
        elapsed = now - last_t
        if elapsed >= self.MIN_INTERVAL_S:
            measured = max(fraction - last_f, 0.0) / elapsed
            weight = 1.0 - math.exp(-elapsed / self.smoothing_s)
            self.rate = measured if self.rate is None else self.rate + weight * (measured - self.rate)
            self._last = (now, fraction)
        if self.rate is None or self.rate <= 0 or now - self._start[0] < self.WARM_UP_S:
            return None
        return (1.0 - fraction) / self.rate


def done_text(result: TrainResult, seconds: float) -> str:
    """What a finished run says: the new version, how long it took, and how good it is. An automatic
    retrain updates the evolving version (engine.models.evolving) unless its accuracy moved enough to keep it."""
    took = format_seconds(seconds)
    if result.params.get("automatic") and not result.params.get("kept"):
        text = f"Model updated with your latest labels (took {took})."
    elif result.params.get("automatic"):
        text = f"Model updated (took {took}) and kept as version {result.model_version}: its accuracy moved."
    else:
        text = f"Model version {result.model_version} ready (took {took})."
    if result.metrics.accuracy is not None:
        text += f" Right on {result.metrics.accuracy * 100:.1f}% of the images it was tested on."
    if result.params.get("recipe") and not result.params.get("automatic"):
        text += f" Recipe: {result.params['recipe']}"
        text += f" ({result.params['recipe_reason']})." if result.params.get("recipe_reason") else "."
    return text


class TrainingStatus(QWidget):
    """Progress bar, step line (with the time left) and device line of the training panel."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.estimator = TimeLeftEstimator()
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, BAR_STEPS)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("")
        self.progress_bar.setToolTip("How much of the whole training run is done")
        self.step_label = QLabel(READY_TEXT)
        self.step_label.setWordWrap(True)
        self.device_label = QLabel("Checking for a GPU…")
        self.device_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.progress_bar, self.step_label, self.device_label):
            layout.addWidget(widget)
        self.failed = False  # the step line shows a failure (in red)

    def show_started(self, automatic: bool) -> None:
        self.estimator.reset()
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p% of the whole run")
        self._say("Retraining after your labeling…" if automatic else "Starting…")

    def show_progress(self, fraction: float, message: str) -> None:
        """The bar shows the whole run; the line names the step it is in (whose own count, such
        as "656 of 800 images", runs ahead of the bar when other steps follow)."""
        self.progress_bar.setValue(int(fraction * BAR_STEPS))
        left = self.estimator.update(fraction)
        text = f"Now: {message}" if message else "Working…"
        if left is not None and fraction < 0.999:
            text += f". In all, {time_left_words(left)}."
        self._say(text)

    def show_cancelling(self) -> None:
        self._say("Cancelling…")

    def show_outcome(self, outcome: JobOutcome, automatic: bool, cancelled_text: str = "") -> None:
        """How the run ended. A failed automatic rerun (nobody pressed Start) is said quietly."""
        self.progress_bar.setFormat("")
        done = outcome.status is JobStatus.DONE
        self.progress_bar.setValue(BAR_STEPS if done else 0)
        if done:
            self._say(done_text(outcome.result, outcome.seconds))
        elif outcome.status is JobStatus.CANCELLED:
            self._say(cancelled_text or "Training cancelled. The previous model is still in use.")
        elif automatic:
            self._say(f"Not retrained automatically: {outcome.error} The previous model is still in use.")
        else:
            self._say(f"Training failed: {outcome.error}", ERROR_STYLE)
            self.failed = True

    def reset(self) -> None:
        """Another project (or none): nothing of the last one's runs stays on screen."""
        self.estimator.reset()
        self.progress_bar.setFormat("")
        self.progress_bar.setValue(0)
        self._say(READY_TEXT)

    def clear_failure(self) -> None:
        """The project changed (images or labels arrived): an old failure no longer applies."""
        if self.failed:
            self._say(READY_TEXT)

    def set_device(self, name: str) -> None:
        """``name`` as engine.features.runners.device_name says it ("GPU: <name> (...)", "CPU, ...")."""
        lowered = name.lower()
        self.device_label.setToolTip("")
        if lowered.startswith(("cuda", "mps", "gpu")) or "nvidia" in lowered:
            shown = name[4:].strip() if lowered.startswith("gpu:") else name
            self.device_label.setText(f"GPU in use: {shown}")
            self.device_label.setStyleSheet(GPU_STYLE)
        else:
            self.device_label.setText(
                "No GPU found: training uses the processor. Quick training stays fast; "
                "Thorough tunes only the network's last stage and takes minutes."
            )
            if name and name != "cpu":
                self.device_label.setToolTip(name)
            self.device_label.setStyleSheet("")

    def device_unknown(self, reason: str) -> None:
        """The check for a GPU failed: say what training will do anyway (the reason in a tooltip)."""
        self.device_label.setText(
            "Could not check for a GPU. Training still works; it uses a GPU only if it finds one."
        )
        self.device_label.setToolTip(reason)
        self.device_label.setStyleSheet("")

    def _say(self, text: str, style: str = "") -> None:
        self.failed = False
        self.step_label.setText(text)
        self.step_label.setStyleSheet(style)
