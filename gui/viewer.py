"""The large image viewer: one image big, with its label, the suggestion and every class's
probability. Left/Right walk through the grid's current filter; the grid's labeling keys label the
image shown and move on to the next one, as in the grid; Ctrl+Z / Ctrl+Shift+Z undo and redo on
the workspace's one undo stack. "Where the model looks" (H) paints the model's class activation map
over the image, computed as a background job on the window's runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence, QPixmap, QUndoStack
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from engine.runtime.jobs import JobOutcome, JobStatus
from gui.grid_model import ThumbnailGridModel
from gui.heatmap_overlay import heat_caption, with_heat_map
from gui.runner import QtJobRunner
from storage import browse, modelstore
from storage.catalog import ClassInfo

if TYPE_CHECKING:
    from engine.insight.explain import Explanation


def explain_image(context, *args, **kwargs):
    """engine.insight.explain.explain_image, imported on the worker thread when first asked for: it brings
    scikit-learn and SciPy, which the window does not need to appear."""
    from engine.runtime.first_imports import heavy_imports

    with heavy_imports():
        from engine.insight.explain import explain_image as run
    return run(context, *args, **kwargs)
from storage.images import read_image_bytes
from storage.trust_blobs import refusal_reason

LabelKeyHandler = Callable[[list[int], str], bool]
LABELING_KEYS = (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Backspace, Qt.Key.Key_Delete)
COMMAND_MODIFIERS = (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier
                     | Qt.KeyboardModifier.MetaModifier)
HELP_TEXT = ("← → previous / next\n1–9, 0 label (then the next image)\nBackspace remove the label\n"
             "A or Enter accept the suggestion\nH where the model looks\nCtrl+Z undo   Ctrl+Shift+Z redo\nSpace or Esc close")


EXPLAIN_JOB = "explain"
HEAT_TIP = "Colour the regions of the image that made the model say what it says (H)"
NO_MODEL_TIP = "Train a model first"


@dataclass(frozen=True)
class HeatRequest:
    """What one heat-map job explains (class None: the predicted one); a result for any other request
    is stale and dropped."""

    image_id: int
    class_name: str | None
    model_version: int


class HeatControls(QWidget):
    """The side panel's "Where the model looks": the toggle, the class it explains and one line saying
    what the colours show (or why there are none). ``changed`` fires when the user changes either."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.toggle = QCheckBox("Where the model looks")
        self.class_choice = QComboBox()
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        # Keys stay with the viewer: arrows walk the images, letters label them.
        for widget in (self.toggle, self.class_choice):
            widget.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(self.class_choice)
        layout.addWidget(self.caption)
        self.toggle.toggled.connect(self._toggled)
        self.class_choice.activated.connect(lambda _index: self.changed.emit())
        self.set_classes(None, None)

    def _toggled(self, on: bool) -> None:
        self.class_choice.setVisible(on)
        if not on:
            self.caption.clear()
        self.changed.emit()

    @property
    def on(self) -> bool:
        return self.toggle.isChecked()

    def chosen_class(self) -> str | None:
        return self.class_choice.currentData()

    def set_classes(self, class_names: list[str] | None, predicted: str | None) -> None:
        """Offer the model's classes, the predicted one first (None: no model, so no heat map); a class
        the user chose stays chosen."""
        self.toggle.setEnabled(class_names is not None)
        self.toggle.setToolTip(HEAT_TIP if class_names is not None else NO_MODEL_TIP)
        if class_names is None:
            self.toggle.blockSignals(True)
            self.toggle.setChecked(False)
            self.toggle.blockSignals(False)
            self.caption.clear()
        self.class_choice.setVisible(self.on)
        chosen = self.chosen_class()
        self.class_choice.clear()
        self.class_choice.addItem(f"Explain: {predicted or 'the predicted class'}", None)
        for name in class_names or []:
            if name != predicted:
                self.class_choice.addItem(f"Explain: {name}", name)
        self.class_choice.setCurrentIndex(max(0, self.class_choice.findData(chosen)) if chosen else 0)

    def say(self, text: str, error: bool = False) -> None:
        self.caption.setStyleSheet("color: #c5221f;" if error else "")
        self.caption.setText(text)


class ImageViewer(QDialog):
    """Shows grid row ``row`` of ``model``; ``label_key(ids, key)`` applies a labeling key (True
    when it labeled), ``undo_stack`` is the workspace's; heat maps run on ``runner``."""

    row_changed = Signal(int)

    def __init__(self, model: ThumbnailGridModel, row: int, classes: Callable[[], list[ClassInfo]],
                 label_key: LabelKeyHandler, undo_stack: QUndoStack, runner: QtJobRunner, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Image")
        self.model = model
        self.row = row
        self.classes = classes
        self.label_key = label_key
        self.runner = runner
        self._pixmap = QPixmap()
        self._wanted_heat: HeatRequest | None = None
        self.explanation: Explanation | None = None  # the heat map painted over the image now

        self.image_label = QLabel()
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_label.setMinimumSize(480, 360)
        self.image_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.image_label.setStyleSheet("background: #202124;")
        self.title_label = QLabel()
        self.title_label.setWordWrap(True)
        self.label_label = QLabel()
        self.label_label.setWordWrap(True)
        self.prediction_label = QLabel()
        self.prediction_label.setWordWrap(True)
        self.bars = QVBoxLayout()
        self.bars.setSpacing(4)
        help_label = QLabel(HELP_TEXT)
        help_label.setStyleSheet("color: palette(placeholder-text);")
        self.heat = HeatControls()
        self.heat.changed.connect(self._update_heat)

        side = QWidget()
        side.setFixedWidth(260)
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.title_label)
        side_layout.addSpacing(8)
        side_layout.addWidget(self.label_label)
        side_layout.addWidget(self.prediction_label)
        side_layout.addLayout(self.bars)
        side_layout.addSpacing(8)
        side_layout.addWidget(self.heat)
        side_layout.addStretch(1)
        side_layout.addWidget(help_label)

        layout = QHBoxLayout(self)
        layout.addWidget(self.image_label, 1)
        layout.addWidget(side)
        # The viewer is a window of its own: the main window's Ctrl+Z does not reach it.
        self.undo_action = undo_stack.createUndoAction(self, "Undo")
        self.undo_action.setShortcuts([QKeySequence.StandardKey.Undo])
        self.redo_action = undo_stack.createRedoAction(self, "Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.addActions([self.undo_action, self.redo_action])
        self.resize(1100, 700)
        self.show_row(row)

    @property
    def image_id(self) -> int:
        return self.model.image_id(self.row)

    def show_row(self, row: int) -> None:
        if not (0 <= row < self.model.rowCount()):
            return
        self.row = row
        data = read_image_bytes(self.model.project, [self.image_id]).get(self.image_id, b"")
        self._pixmap = QPixmap()
        self._pixmap.loadFromData(data)
        self.explanation = None  # the last image's heat map
        self._fit_pixmap()
        self.refresh_facts()
        self.row_changed.emit(row)

    def refresh_facts(self) -> None:
        """Re-read label and prediction (after a label key, or new suggestions)."""
        detail = browse.image_detail(self.model.project, self.image_id, self.model.model_version)
        if detail is None:
            return
        classes = {info.id: info for info in self.classes()}
        self.setWindowTitle(f"{detail.name} — {self.row + 1} of {self.model.rowCount()}")
        self.title_label.setText(f"<b>{detail.name}</b><br>{detail.width}×{detail.height}"
                                 + (f" · from {detail.source}" if detail.source else ""))
        label = classes.get(detail.class_id) if detail.class_id is not None else None
        if label is not None:
            self.label_label.setText(f"Label: <b><span style='color:{label.color}'>■</span> {label.name}</b>")
        else:
            self.label_label.setText("Label: <i>none yet</i>")
        predicted = classes.get(detail.predicted_class_id) if detail.predicted_class_id is not None else None
        if predicted is not None and detail.probability is not None:
            self.prediction_label.setText(f"Suggestion: <b>{predicted.name}</b> ({detail.probability:.0%} sure)")
        else:
            self.prediction_label.setText("Suggestion: <i>none (train a model first)</i>")
        self._fill_bars(detail, classes)
        self._offer_heat_classes(predicted.name if predicted is not None else None)
        self._update_heat()

    # -- where the model looks -----------------------------------------------------------------
    def _offer_heat_classes(self, predicted: str | None) -> None:
        version = self.model.model_version
        names = modelstore.get_model(self.model.project, version).class_names if version is not None else None
        self.heat.set_classes(names, predicted)

    def _heat_request(self) -> HeatRequest | None:
        if not self.heat.on or self.model.model_version is None:
            return None
        return HeatRequest(self.image_id, self.heat.chosen_class(), self.model.model_version)

    def _update_heat(self) -> None:
        """Explain what is shown now (another image, class or model: a new job; the older one's
        result will be dropped), or take the heat map away when the toggle is off."""
        request = self._heat_request()
        if request == self._wanted_heat:
            return
        self.runner.cancel(EXPLAIN_JOB)
        self._wanted_heat = request
        if self.explanation is not None:
            self.explanation = None
            self._fit_pixmap()
        if request is None:
            return
        self.heat.say("Looking…")
        self.runner.submit(EXPLAIN_JOB, explain_image, self.model.project, request.image_id,
                           class_name=request.class_name, model_version=request.model_version,
                           on_done=lambda outcome: self._heat_done(request, outcome))

    def _heat_done(self, request: HeatRequest, outcome: JobOutcome) -> None:
        if request != self._wanted_heat:
            return  # stale: the viewer moved on to another image, class or model meanwhile
        if outcome.status is JobStatus.DONE:
            self.explanation = outcome.result
            self.heat.say(heat_caption(self.explanation))
            self._fit_pixmap()
        elif outcome.status is JobStatus.FAILED:
            first_line = (outcome.error or "").strip().splitlines()
            self.heat.say(first_line[0] if first_line else "The heat map could not be made.", error=True)
        else:
            self._wanted_heat = None  # cancelled from outside: the next change asks again
            self.heat.say("")

    def _fill_bars(self, detail: browse.ImageDetail, classes: dict[int, ClassInfo]) -> None:
        while self.bars.count():
            item = self.bars.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for class_id, probability in detail.probabilities.items():
            info = classes.get(class_id)
            if info is None:
                continue
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(int(probability * 1000))
            bar.setFormat(f"{info.name}  {probability:.0%}")
            bar.setTextVisible(True)
            bar.setFixedHeight(20)
            bar.setStyleSheet(f"QProgressBar {{ border: 1px solid #bbb; border-radius: 3px; text-align: left; "
                              f"padding-left: 4px; }} QProgressBar::chunk {{ background: {info.color}; }}")
            self.bars.addWidget(bar)

    def _fit_pixmap(self) -> None:
        if self._pixmap.isNull():
            reason = refusal_reason(self.model.project, "image", self.image_id)  # storage.trust_blobs
            self.image_label.setText(f"(image not available: {reason})" if reason else "(image not available)")
            return
        shown = self._pixmap.scaled(self.image_label.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                    Qt.TransformationMode.SmoothTransformation)
        self.image_label.setPixmap(with_heat_map(shown, self.explanation) if self.explanation is not None else shown)

    def hideEvent(self, event) -> None:
        """A closed viewer leaves no heat-map job behind."""
        if self._wanted_heat is not None:
            self.runner.cancel(EXPLAIN_JOB)
            self._wanted_heat = None
        super().hideEvent(event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_pixmap()

    def event(self, event) -> bool:
        """Labeling keys pressed here label the image shown, even where the main window's own
        shortcuts for them would match (they label the grid's selection)."""
        if event.type() == QEvent.Type.ShortcutOverride and self._is_labeling_key(event):
            event.accept()
            return True
        return super().event(event)

    @staticmethod
    def _is_labeling_key(event: QKeyEvent) -> bool:
        if event.modifiers() & COMMAND_MODIFIERS:
            return False
        return event.key() in LABELING_KEYS or (len(event.text()) == 1 and event.text().isalnum())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Right, Qt.Key.Key_Down):
            self.show_row(self.row + 1)
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Up):
            self.show_row(self.row - 1)
        elif key in (Qt.Key.Key_Space, Qt.Key.Key_Escape):
            self.accept()
        elif key == Qt.Key.Key_H and not event.modifiers() & COMMAND_MODIFIERS:
            if self.heat.toggle.isEnabled():
                self.heat.toggle.toggle()
        elif self._is_labeling_key(event) and self.label_key([self.image_id], self._key_name(event)):
            self._move_on()
        else:
            super().keyPressEvent(event)

    def _move_on(self) -> None:
        """After labeling, show the next image (the last one stays, with its new label)."""
        if self.row + 1 < self.model.rowCount():
            self.show_row(self.row + 1)
        else:
            self.refresh_facts()

    @staticmethod
    def _key_name(event: QKeyEvent) -> str:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            return "accept"
        if event.key() in (Qt.Key.Key_Backspace, Qt.Key.Key_Delete):
            return "clear"
        return event.text().lower()
