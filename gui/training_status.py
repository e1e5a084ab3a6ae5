"""The training panel's status lines: a progress bar with the current step and the time left,
how the last run ended, and which device trains."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from engine.models.results import TrainResult
from engine.runtime.jobs import JobOutcome, JobStatus

ERROR_STYLE = "color: #b00020;"
GPU_STYLE = "color: #1b7f3b;"
BAR_STEPS = 1000


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


def done_text(result: TrainResult, seconds: float) -> str:
    """What a finished run says: the new version, how long it took, and how good it is."""
    text = f"Model version {result.model_version} ready in {format_seconds(seconds)}."
    if result.metrics.accuracy is not None:
        text += f" Validation accuracy {result.metrics.accuracy * 100:.1f}%."
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
        self.step_label = QLabel("Ready.")
        self.step_label.setWordWrap(True)
        self.device_label = QLabel("Checking for a GPU…")
        self.device_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.progress_bar, self.step_label, self.device_label):
            layout.addWidget(widget)

    def show_started(self, automatic: bool) -> None:
        self.estimator.reset()
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p%")
        self._say("Retraining after your labeling…" if automatic else "Starting…")

    def show_progress(self, fraction: float, message: str) -> None:
        self.progress_bar.setValue(int(fraction * BAR_STEPS))
        left = self.estimator.update(fraction)
        text = message or "Working…"
        if left is not None and fraction < 0.999:
            text += f" — about {format_seconds(left)} left"
        self._say(text)

    def show_cancelling(self) -> None:
        self._say("Cancelling…")

    def show_outcome(self, outcome: JobOutcome, automatic: bool) -> None:
        """How the run ended. A failed automatic rerun (nobody pressed Start) is said quietly."""
        self.progress_bar.setFormat("")
        done = outcome.status is JobStatus.DONE
        self.progress_bar.setValue(BAR_STEPS if done else 0)
        if done:
            self._say(done_text(outcome.result, outcome.seconds))
        elif outcome.status is JobStatus.CANCELLED:
            self._say("Training cancelled. The previous model is still in use.")
        elif automatic:
            self._say(f"Not retrained automatically: {outcome.error} The previous model is still in use.")
        else:
            self._say(f"Training failed: {outcome.error}", ERROR_STYLE)

    def set_device(self, name: str) -> None:
        """``name`` as engine.features.runners.device_name says it ("GPU: <name> (...)", "CPU, ...")."""
        lowered = name.lower()
        if lowered.startswith(("cuda", "mps", "gpu")) or "nvidia" in lowered:
            shown = name[4:].strip() if lowered.startswith("gpu:") else name
            self.device_label.setText(f"GPU in use: {shown}")
            self.device_label.setStyleSheet(GPU_STYLE)
        else:
            where = f" ({name})" if name and name != "cpu" else ""
            self.device_label.setText(
                f"No GPU found: training uses the processor{where}. Quick training stays fast; "
                "Thorough training will be slow."
            )
            self.device_label.setStyleSheet("")

    def _say(self, text: str, style: str = "") -> None:
        self.step_label.setText(text)
        self.step_label.setStyleSheet(style)
