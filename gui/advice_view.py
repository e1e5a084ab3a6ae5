"""How many more labels each class needs: the advice in sentences and the learning curve behind it.

Plain data in: ``set_advice(advice)`` takes the engine's ``Advice`` (engine.insight.advice, run as
``advice_job``). The sentences come first, since they are the answer; below them a small plot of the
chosen curve (the whole model, or one class): the measured out-of-fold points, the fitted curve
drawn on to twice today's labels, and a line at today's labels, so the extrapolation shows as such.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QComboBox, QLabel, QVBoxLayout, QWidget

from engine.insight.advice import Advice, ClassAdvice
from gui.curves import VAL_COLOR, themed_plot

CURVE_COLOR = "#0072B2"
NO_ADVICE_TEXT = "Train a model: how many more labels each class needs appears here."
WHOLE_MODEL = "whole model"


class AdviceView(QWidget):
    """The advice sentences, and the learning curve of the class chosen in the combo box."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
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
        self._draw()

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
