"""The large image viewer: one image big, with its label, the suggestion and every class's
probability. Left/Right walk through the grid's current filter; the grid's labeling keys label the
image shown and move on to the next one, as in the grid; Ctrl+Z / Ctrl+Shift+Z undo and redo on
the workspace's one undo stack."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence, QPixmap, QUndoStack
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from gui.grid_model import ThumbnailGridModel
from storage import browse
from storage.catalog import ClassInfo
from storage.images import read_image_bytes

LabelKeyHandler = Callable[[list[int], str], bool]
HELP_TEXT = ("← → previous / next\n1–9, 0 label (then the next image)\nBackspace remove the label\n"
             "A or Enter accept the suggestion\nCtrl+Z undo   Ctrl+Shift+Z redo\nSpace or Esc close")


class ImageViewer(QDialog):
    """Shows grid row ``row`` of ``model``; ``label_key(ids, key)`` applies a labeling key (True
    when it labeled), ``undo_stack`` is the workspace's."""

    row_changed = Signal(int)

    def __init__(self, model: ThumbnailGridModel, row: int, classes: Callable[[], list[ClassInfo]],
                 label_key: LabelKeyHandler, undo_stack: QUndoStack, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Image")
        self.model = model
        self.row = row
        self.classes = classes
        self.label_key = label_key
        self._pixmap = QPixmap()

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

        side = QWidget()
        side.setFixedWidth(260)
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.title_label)
        side_layout.addSpacing(8)
        side_layout.addWidget(self.label_label)
        side_layout.addWidget(self.prediction_label)
        side_layout.addLayout(self.bars)
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
            self.image_label.setText("(image not available)")
            return
        self.image_label.setPixmap(self._pixmap.scaled(
            self.image_label.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_pixmap()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Right, Qt.Key.Key_Down):
            self.show_row(self.row + 1)
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Up):
            self.show_row(self.row - 1)
        elif key in (Qt.Key.Key_Space, Qt.Key.Key_Escape):
            self.accept()
        elif event.text() and self.label_key([self.image_id], self._key_name(event)):
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
