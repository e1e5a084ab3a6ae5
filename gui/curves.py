"""Training curves (pyqtgraph): loss and accuracy per epoch while fine-tuning, and, for quick
training, validation accuracy against the number of labeled images over the project's history.

Plain data in: ``add_epoch(epoch)`` takes the engine's per-epoch partial as is (an
engine.models.results.EpochResult), and ``set_history(n_labeled, accuracy)`` takes two sequences
(engine.insight.history.AccuracyHistory). Accuracies are fractions (0..1), shown as percentages.
Curves are updated with array setData.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QHBoxLayout, QLabel, QStackedWidget, QVBoxLayout, QWidget

from engine.models.results import EpochResult

TRAIN_COLOR = "#0072B2"
VAL_COLOR = "#D55E00"
EPOCH_KEYS = ("train_loss", "val_loss", "train_acc", "val_acc")


def themed_plot(title: str, left: str, bottom: str) -> pg.PlotWidget:
    """A PlotWidget that follows the application palette (light or dark) instead of black."""
    palette = pg.mkQApp().palette()
    background = palette.color(QPalette.ColorRole.Base)
    text = palette.color(QPalette.ColorRole.Text)
    plot = pg.PlotWidget(background=background)
    item = plot.getPlotItem()
    item.setTitle(title, color=text.name(), size="10pt")
    for name, label in (("left", left), ("bottom", bottom)):
        axis = item.getAxis(name)
        axis.setPen(pg.mkPen(QColor(text).lighter(150) if background.lightness() < 128 else QColor("#888")))
        axis.setTextPen(pg.mkPen(text))
        axis.setLabel(label, color=text.name())
    item.showGrid(x=True, y=True, alpha=0.15)
    item.setMenuEnabled(False)
    plot.setMinimumSize(220, 160)
    return plot


class TrainingCurves(QWidget):
    """Loss and accuracy per epoch (live), or validation accuracy vs. labels (history)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._epochs: dict[str, list[float]] = {key: [] for key in ("epoch", *EPOCH_KEYS)}

        self.loss_plot = themed_plot("Loss (lower is better)", "loss", "epoch")
        self.acc_plot = themed_plot("Accuracy (higher is better)", "accuracy %", "epoch")
        self.acc_plot.setYRange(0, 100, padding=0.02)
        text_color = self.palette().color(QPalette.ColorRole.Text)
        # Loss falls and accuracy rises: keep each legend in the corner its curves leave empty.
        self.loss_plot.getPlotItem().addLegend(offset=(-10, 10), labelTextColor=text_color)
        self.acc_plot.getPlotItem().addLegend(offset=(-10, -30), labelTextColor=text_color)
        self.loss_curves = {
            "train_loss": self.loss_plot.plot(name="training", pen=pg.mkPen(TRAIN_COLOR, width=2), symbol="o", symbolSize=5, symbolBrush=TRAIN_COLOR, symbolPen=None),
            "val_loss": self.loss_plot.plot(name="validation", pen=pg.mkPen(VAL_COLOR, width=2), symbol="o", symbolSize=5, symbolBrush=VAL_COLOR, symbolPen=None),
        }
        self.acc_curves = {
            "train_acc": self.acc_plot.plot(name="training", pen=pg.mkPen(TRAIN_COLOR, width=2), symbol="o", symbolSize=5, symbolBrush=TRAIN_COLOR, symbolPen=None),
            "val_acc": self.acc_plot.plot(name="validation", pen=pg.mkPen(VAL_COLOR, width=2), symbol="o", symbolSize=5, symbolBrush=VAL_COLOR, symbolPen=None),
        }
        epochs_page = QWidget()
        row = QHBoxLayout(epochs_page)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.loss_plot)
        row.addWidget(self.acc_plot)

        self.history_plot = themed_plot(
            "Validation accuracy as you label more images", "validation accuracy %", "labeled images"
        )
        self.history_plot.setYRange(0, 100, padding=0.02)
        self.history_curve = self.history_plot.plot(
            pen=pg.mkPen(VAL_COLOR, width=2), symbol="o", symbolSize=7, symbolBrush=VAL_COLOR, symbolPen=None
        )

        self.stack = QStackedWidget()
        self.stack.addWidget(epochs_page)
        self.stack.addWidget(self.history_plot)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setAlignment(Qt.AlignmentFlag.AlignLeft)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.caption)
        self.show_history_view()

    # -- per-epoch curves (fine-tuning) --------------------------------------------------------
    def start_run(self) -> None:
        """Clear the epoch curves and show them (a fine-tuning run is starting)."""
        for values in self._epochs.values():
            values.clear()
        for curve in (*self.loss_curves.values(), *self.acc_curves.values()):
            curve.setData([], [])
        self.show_epochs_view()
        self.caption.setText("Waiting for the first epoch…")

    def add_epoch(self, epoch: EpochResult) -> None:
        """Append one epoch of a running network training."""
        self.show_epochs_view()
        values = {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "val_loss": epoch.val_loss,
                  "train_acc": epoch.train_acc, "val_acc": epoch.val_acc}
        for key, value in values.items():  # no validation values without validation images: gaps
            self._epochs[key].append(np.nan if value is None else float(value))
        x = np.asarray(self._epochs["epoch"], dtype=float)
        for key, curve in self.loss_curves.items():
            curve.setData(x, np.asarray(self._epochs[key], dtype=float), connect="finite")
        for key, curve in self.acc_curves.items():
            curve.setData(x, np.asarray(self._epochs[key], dtype=float) * 100, connect="finite")
        val_acc = self._epochs["val_acc"][-1]
        text = f"Epoch {int(x[-1])}"
        if np.isfinite(val_acc):
            text += f": validation accuracy {val_acc * 100:.1f}%"
        self.caption.setText(text)

    def epoch_data(self, key: str) -> np.ndarray:
        """The values plotted so far for one of 'epoch', 'train_loss', 'val_loss', 'train_acc', 'val_acc'."""
        return np.asarray(self._epochs[key], dtype=float)

    def show_epochs_view(self) -> None:
        self.stack.setCurrentIndex(0)

    def showing_epochs(self) -> bool:
        """Whether the epoch curves of a run are on screen."""
        return self.stack.currentIndex() == 0 and bool(self._epochs["epoch"])

    # -- history (quick training) --------------------------------------------------------------
    def show_history_view(self) -> None:
        self.stack.setCurrentIndex(1)
        if self.history_curve.xData is None or len(self.history_curve.xData) == 0:
            self.caption.setText("Train a model to see how accuracy grows with the number of labels.")

    def set_history(self, n_labeled: Sequence[float], accuracy: Sequence[float]) -> None:
        """One point per model version: number of labeled images vs. validation accuracy (0..1)."""
        n = np.asarray(n_labeled, dtype=float)
        acc = np.asarray(accuracy, dtype=float) * 100
        order = np.argsort(n, kind="stable")
        self.history_curve.setData(n[order], acc[order])
        if len(n):
            self.history_plot.setXRange(0, max(float(n.max()) * 1.05, 10.0), padding=0)
            self.caption.setText(
                f"{len(n)} model version{'s' if len(n) != 1 else ''}; latest: "
                f"{acc[-1]:.1f}% with {int(n[-1])} labeled images."
            )
        else:
            self.history_plot.setXRange(0, 10.0, padding=0)  # whole label counts, not 0.2 ... 0.8
            self.caption.setText("Train a model to see how accuracy grows with the number of labels.")

