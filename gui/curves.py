"""Training curves (pyqtgraph): loss and accuracy per epoch while fine-tuning, and, for quick
training, validation accuracy against the number of labeled images over the project's history.

Plain data in: ``add_epoch(epoch)`` takes the engine's per-epoch partial as is (an
engine.models.results.EpochResult), and ``set_history(n_labeled, accuracy)`` takes two sequences
(engine.insight.history.AccuracyHistory). Accuracies are fractions (0..1), shown as percentages.
Curves are updated with array setData. Read by people who never saw a loss curve: whole epochs
and image counts on the x axes, plain numbers on the y axes, the legend beside the plots (never
over the points), and a sentence instead of an empty chart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QStackedWidget, QVBoxLayout, QWidget

from engine.models.results import EpochResult

TRAIN_COLOR = "#0072B2"
VAL_COLOR = "#D55E00"
EPOCH_KEYS = ("train_loss", "val_loss", "train_acc", "val_acc")
NO_PROJECT_TEXT = "Open or create a project: once you label images, how well the model does is drawn here."
NO_HISTORY_TEXT = (
    "Nothing to draw yet. Label a few images of at least two classes: a Quick model then trains by "
    "itself, and its accuracy appears here each time, against the number of labeled images."
)
NO_EPOCHS_TEXT = (
    "Press Start training: Thorough training goes over your images several times (epochs), and "
    "after each one its loss and accuracy appear here."
)
EPOCH_LEGEND = (
    f'<span style="color:{TRAIN_COLOR}">●</span>&nbsp;training images&nbsp;&nbsp;&nbsp;'
    f'<span style="color:{VAL_COLOR}">●</span>&nbsp;validation images'
)


class WholeNumberAxis(pg.AxisItem):
    """An axis of things counted (epochs, images): ticks only at whole numbers."""

    def tickSpacing(self, minVal: float, maxVal: float, size: float):
        levels = [(spacing, offset) for spacing, offset in super().tickSpacing(minVal, maxVal, size)
                  if spacing >= 1 - 1e-9]
        return levels or [(1.0, 0.0)]


def themed_plot(title: str, left: str, bottom: str) -> pg.PlotWidget:
    """A PlotWidget that follows the application palette (light or dark) instead of black, with
    plain numbers on its axes (no "×0.001" prefix), whole numbers along the bottom and none of
    pyqtgraph's own buttons and menus. No grid lines: pyqtgraph draws them through its axes,
    and they made each repaint of a 470-pixel plot cost 28 ms instead of 10 on the GUI thread."""
    palette = pg.mkQApp().palette()
    background = palette.color(QPalette.ColorRole.Base)
    text = palette.color(QPalette.ColorRole.Text)
    plot = pg.PlotWidget(background=background, axisItems={"bottom": WholeNumberAxis("bottom")})
    item = plot.getPlotItem()
    item.setTitle(title, color=text.name(), size="10pt")
    for name, label in (("left", left), ("bottom", bottom)):
        axis = item.getAxis(name)
        axis.setPen(pg.mkPen(QColor(text).lighter(150) if background.lightness() < 128 else QColor("#888")))
        axis.setTextPen(pg.mkPen(text))
        axis.enableAutoSIPrefix(False)
        axis.setLabel(label, color=text.name())
    item.setMenuEnabled(False)
    item.hideButtons()  # the "A" (auto-range) button means nothing to users
    plot.setMinimumSize(160, 140)
    return plot


class TrainingCurves(QWidget):
    """Loss and accuracy per epoch (live), or validation accuracy vs. labels (history), or a
    sentence saying what will appear once there is something to draw."""

    EPOCHS, HISTORY, EMPTY = range(3)  # the stack's pages
    _epochs_view = False  # the epoch curves were asked for (else the history)
    _run_started = False  # a fine-tuning run started since the last clear

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._epochs: dict[str, list[float]] = {key: [] for key in ("epoch", *EPOCH_KEYS)}
        self._has_project = False
        self._latest: tuple[float, int] | None = None  # the newest version's accuracy % and labels

        self.loss_plot = themed_plot("Loss (lower is better)", "loss", "epoch")
        self.acc_plot = themed_plot("Accuracy (higher is better)", "accuracy %", "epoch")
        self.acc_plot.setYRange(0, 100, padding=0.02)
        self.loss_curves = {
            "train_loss": _curve(self.loss_plot, TRAIN_COLOR, 5),
            "val_loss": _curve(self.loss_plot, VAL_COLOR, 5),
        }
        self.acc_curves = {
            "train_acc": _curve(self.acc_plot, TRAIN_COLOR, 5),
            "val_acc": _curve(self.acc_plot, VAL_COLOR, 5),
        }
        self.epoch_legend = QLabel(EPOCH_LEGEND)  # one line (a wrapping label would make the panel scroll)
        self.epoch_legend.setTextFormat(Qt.TextFormat.RichText)
        self.epoch_legend.setToolTip("The model learns from the training images; the validation images are "
                                     "held back to test it on images it has not seen.")
        epochs_page = QWidget()
        column = QVBoxLayout(epochs_page)
        column.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.loss_plot)
        row.addWidget(self.acc_plot)
        column.addLayout(row, 1)
        column.addWidget(self.epoch_legend)

        self.history_plot = themed_plot(
            "How often the model is right, as you label more images", "right on test images %", "labeled images"
        )
        self.history_plot.setToolTip("Validation accuracy: the share of images held back for testing (or, with "
                                     "few labels, cross-validated) that the model gets right")
        self.history_plot.setYRange(0, 100, padding=0.02)
        self.history_curve = _curve(self.history_plot, VAL_COLOR, 7)

        self.empty_text = QLabel(NO_PROJECT_TEXT)
        self.empty_text.setWordWrap(True)
        self.empty_text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_text.setMargin(12)
        self.empty_text.setForegroundRole(QPalette.ColorRole.PlaceholderText)

        self.stack = QStackedWidget()
        self.stack.addWidget(epochs_page)
        self.stack.addWidget(self.history_plot)
        self.stack.addWidget(self.empty_text)
        # The charts take the room the panel has: their preferred 600 x 480 would make the panel
        # taller than a laptop's dock, which then scrolls the axes out of sight.
        self.stack.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)
        self.stack.setMinimumHeight(200)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setAlignment(Qt.AlignmentFlag.AlignLeft)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.caption)
        self.show_history_view()

    def set_has_project(self, has_project: bool) -> None:
        """Without a project there is nothing to draw: say how to get started."""
        self._has_project = has_project
        self._show_page()

    def clear(self) -> None:
        """Forget every curve (another project, or none)."""
        self._clear_epochs()
        self._run_started = False
        self.history_curve.setData([], [])
        self._latest = None
        self.caption.clear()
        self.show_history_view()

    def showing_empty_text(self) -> bool:
        return self.stack.currentIndex() == self.EMPTY

    # -- per-epoch curves (fine-tuning) --------------------------------------------------------
    def start_run(self) -> None:
        """Clear the epoch curves and show them (a fine-tuning run is starting)."""
        self._clear_epochs()
        self._run_started = True
        self.show_epochs_view()
        self.caption.setText("Waiting for the first epoch…")

    def _clear_epochs(self) -> None:
        for values in self._epochs.values():
            values.clear()
        for curve in (*self.loss_curves.values(), *self.acc_curves.values()):
            curve.setData([], [])

    def add_epoch(self, epoch: EpochResult) -> None:
        """Append one epoch of a running network training."""
        values = {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "val_loss": epoch.val_loss,
                  "train_acc": epoch.train_acc, "val_acc": epoch.val_acc}
        self._run_started = True
        for key, value in values.items():  # no validation values without validation images: gaps
            self._epochs[key].append(np.nan if value is None else float(value))
        x = np.asarray(self._epochs["epoch"], dtype=float)
        for key, curve in self.loss_curves.items():
            curve.setData(x, np.asarray(self._epochs[key], dtype=float), connect="finite")
        for key, curve in self.acc_curves.items():
            curve.setData(x, np.asarray(self._epochs[key], dtype=float) * 100, connect="finite")
        for plot in (self.loss_plot, self.acc_plot):  # whole epochs from the first on, half a step of margin
            plot.setXRange(min(float(x.min()), 1.0) - 0.5, float(x.max()) + 0.5, padding=0)
        self.show_epochs_view()
        val_acc = self._epochs["val_acc"][-1]
        text = f"Epoch {int(x[-1])}"
        if np.isfinite(val_acc):
            text += f": right on {val_acc * 100:.1f}% of the validation images"
        self.caption.setText(text)

    def epoch_data(self, key: str) -> np.ndarray:
        """The values plotted so far for one of 'epoch', 'train_loss', 'val_loss', 'train_acc', 'val_acc'."""
        return np.asarray(self._epochs[key], dtype=float)

    def show_epochs_view(self) -> None:
        self._epochs_view = True
        self._show_page()

    def showing_epochs(self) -> bool:
        """Whether the epoch curves of a run are on screen."""
        return self.stack.currentIndex() == self.EPOCHS

    # -- history (quick training) --------------------------------------------------------------
    def show_history_view(self) -> None:
        self._epochs_view = False
        self._show_page()

    def set_history(self, n_labeled: Sequence[float], accuracy: Sequence[float]) -> None:
        """One point per model version: number of labeled images vs. validation accuracy (0..1)."""
        n = np.asarray(n_labeled, dtype=float)
        acc = np.asarray(accuracy, dtype=float) * 100
        order = np.argsort(n, kind="stable")
        self.history_curve.setData(n[order], acc[order])
        self._latest = (float(acc[-1]), int(n[-1])) if len(n) else None  # the newest version's point
        self.history_plot.setXRange(0, max(float(n.max()) * 1.05, 10.0) if len(n) else 10.0, padding=0)
        self._show_page()

    def _history_points(self) -> int:
        x = self.history_curve.xData
        return 0 if x is None else len(x)

    def _show_page(self) -> None:
        """The chart asked for, or the sentence saying why it would be empty."""
        if not self._has_project:
            page, empty = self.EMPTY, NO_PROJECT_TEXT
        elif self._epochs_view:
            page, empty = (self.EPOCHS, "") if self._run_started else (self.EMPTY, NO_EPOCHS_TEXT)
        else:
            page, empty = (self.HISTORY, "") if self._history_points() else (self.EMPTY, NO_HISTORY_TEXT)
        self.empty_text.setText(empty)
        self.stack.setCurrentIndex(page)
        if page == self.HISTORY:
            self._caption_history()
        elif page == self.EMPTY:
            self.caption.clear()

    def _caption_history(self) -> None:
        count = self._history_points()
        accuracy, n_labeled = self._latest
        self.caption.setText(
            f"{count} training{'s' if count != 1 else ''} so far; the latest model is right on "
            f"{accuracy:.1f}% of the images it was tested on, with {n_labeled} labeled images."
        )


def _curve(plot: pg.PlotWidget, color: str, size: int) -> pg.PlotDataItem:
    return plot.plot(pen=pg.mkPen(color, width=2), symbol="o", symbolSize=size, symbolBrush=color, symbolPen=None)
