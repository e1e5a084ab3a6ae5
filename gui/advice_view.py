"""How many more labels each class needs: the advice in sentences and the learning curve behind it.

Plain data in: ``set_advice(advice)`` takes the engine's ``Advice`` (engine.insight.advice, run as
``advice_job``). ``refresh(project)`` computes it in the background, on the view's own worker thread
(32 refits take seconds on a big project; they never queue in front of labeling, training or the
report's reads), and shows it when it arrives, unless another project or refresh came meanwhile. The
training panel shows the view; the window refreshes it when a project opens and after each training
that is not a quick retrain (those follow single label edits and barely move the curves). The sentences come first, since they are the answer; below them a small plot of the
chosen curve (the whole model, or one class): the measured out-of-fold points, the fitted curve
drawn on to twice today's labels, and a line at today's labels, so the extrapolation shows as such.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QComboBox, QLabel, QVBoxLayout, QWidget

from engine.runtime.first_imports import heavy_imports
from engine.runtime.jobs import JobOutcome, JobStatus
from gui.curves import VAL_COLOR, themed_plot
from gui.runner import QtJobRunner

if TYPE_CHECKING:
    from engine.insight.advice import Advice, ClassAdvice

CURVE_COLOR = "#0072B2"
NO_ADVICE_TEXT = "Train a model: how many more labels each class needs appears here."
WORKING_TEXT = "Working out how many more labels each class needs…"
WHOLE_MODEL = "whole model"
ADVICE_JOB = "advice"
PLOT_MIN_HEIGHT = 180


def advice_job(context, project):
    """The engine's advice job, imported when first used (it imports scikit-learn: not at start-up,
    and one thread at a time)."""
    with heavy_imports():
        from engine.insight.advice import advice_job as job

    return job(context, project)


class AdviceView(QWidget):
    """The advice sentences, and the learning curve of the class chosen in the combo box."""

    def __init__(self, parent: QWidget | None = None, *, advice_fn=advice_job):
        super().__init__(parent)
        self._advice_fn = advice_fn
        self._runner: QtJobRunner | None = None  # made on first refresh
        self._wanted = 0  # the refresh whose result may still be shown
        self._curved: list[ClassAdvice] = []
        self.sentences = QLabel(NO_ADVICE_TEXT)
        self.sentences.setWordWrap(True)
        self.sentences.setTextFormat(Qt.TextFormat.RichText)
        self.sentences.setForegroundRole(QPalette.ColorRole.Text)
        self.choice = QComboBox()
        self.choice.setToolTip("Whose learning curve to draw")
        self.choice.currentIndexChanged.connect(self._draw)
        self.plot = themed_plot("Accuracy as labels grow", "accuracy %", "labeled images")
        self.plot.setYRange(0, 100, padding=0.02)
        self.plot.setMinimumHeight(PLOT_MIN_HEIGHT)
        self.points = pg.ScatterPlotItem(size=6, brush=pg.mkBrush(VAL_COLOR), pen=None)
        self.fitted = pg.PlotDataItem(pen=pg.mkPen(CURVE_COLOR, width=2))
        self.today = pg.InfiniteLine(angle=90, pen=pg.mkPen("#888", style=Qt.PenStyle.DashLine))
        for item in (self.points, self.fitted, self.today):
            self.plot.addItem(item)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.sentences)
        layout.addWidget(self.choice)
        layout.addWidget(self.plot, 1)
        self.set_advice(None)

    def refresh(self, project) -> None:
        """Compute the advice for ``project`` (None: clear) in the background and show it when done."""
        self._wanted += 1
        if self._runner is not None:
            self._runner.cancel(ADVICE_JOB)
        self.set_advice(None)
        if project is None:
            return
        if self._runner is None:
            self._runner = QtJobRunner(self)
        if self._runner.closed:
            return
        wanted = self._wanted
        self.sentences.setText(WORKING_TEXT)
        self._fit_sentences()
        self._runner.submit(ADVICE_JOB, self._advice_fn, project, on_done=lambda outcome: self._arrived(wanted, outcome))

    def _arrived(self, wanted: int, outcome: JobOutcome) -> None:
        if wanted != self._wanted:
            return  # another project or a newer refresh
        if outcome.status is JobStatus.DONE:
            self.set_advice(outcome.result)
        elif outcome.status is JobStatus.FAILED:
            self.set_advice(None)
            self.sentences.setText(_escape(f"No advice: {outcome.error}"))
            self._fit_sentences()
        else:
            self.set_advice(None)

    def shutdown(self) -> None:
        """Stop the background worker (the window is closing). Safe to call twice."""
        self._wanted += 1
        if self._runner is not None:
            self._runner.shutdown()

    def set_advice(self, advice: Advice | None) -> None:
        """Show ``advice`` (None: say how to get some)."""
        if advice is None:
            self.sentences.setText(NO_ADVICE_TEXT)
            self._curved = []
        else:
            self.sentences.setText("<br>".join(_escape(line) for line in advice.sentences()))
            self._curved = [item for item in (advice.overall, *advice.classes) if item.curve is not None]
        self.choice.blockSignals(True)
        self.choice.clear()
        self.choice.addItems([item.name or WHOLE_MODEL for item in self._curved])
        self.choice.blockSignals(False)
        self.choice.setVisible(bool(self._curved))
        self.plot.setVisible(bool(self._curved))
        self._fit_sentences()
        self._draw()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_sentences()

    def _fit_sentences(self) -> None:
        """Ask for the height the wrapped sentences need at this width: a word-wrapped label's size hint
        does not say it, and a panel squeezed below it would draw its neighbours over each other."""
        width = self.sentences.width()
        if width > 0:
            self.sentences.setMinimumHeight(self.sentences.heightForWidth(width))

    def _draw(self) -> None:
        index = self.choice.currentIndex()
        if not 0 <= index < len(self._curved):
            self.points.setData([], [])
            self.fitted.setData([], [])
            return
        item = self._curved[index]
        curve = item.curve
        # The points are at each fold's training labels; the curve runs to twice today's labels.
        xs = np.linspace(min(curve.sizes), 2 * max(item.labeled, 1), 80)
        self.points.setData(list(curve.sizes), [100 * a for a in curve.accuracies])
        self.fitted.setData(xs, 100 * curve.predict(xs))
        self.today.setValue(item.labeled)
        self.plot.getPlotItem().getAxis("bottom").setLabel(
            "labeled images" if item.name is None else f"labeled images of {item.name}")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
