"""Paints one grid tile: the thumbnail framed in its label's colour, a label bar, and the suggestion.

Painting is custom because a tile carries three facts at a glance (what it is, what the user said,
what the model thinks), and a plain icon+text item cannot show colour and confidence compactly.
"""

from __future__ import annotations

from PySide6.QtCore import QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette, QPen
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from gui.grid_model import TILE_ROLE
from storage.catalog import ClassInfo

THUMB_SIDE = 150
PADDING = 6
FRAME = 4
BAR_HEIGHT = 20
LINE_HEIGHT = 18
TILE_SIZE = QSize(THUMB_SIDE + 2 * (PADDING + FRAME), THUMB_SIDE + 2 * (PADDING + FRAME) + BAR_HEIGHT + LINE_HEIGHT)
UNLABELED_FRAME = QColor("#d0d0d0")
DISAGREE_COLOR = QColor("#c62828")


def text_color_on(background: QColor) -> QColor:
    """Black or white, whichever reads better on this colour."""
    luminance = 0.299 * background.red() + 0.587 * background.green() + 0.114 * background.blue()
    return QColor("#111111") if luminance > 150 else QColor("#ffffff")


class TileDelegate(QStyledItemDelegate):
    """Draws tiles from TILE_ROLE facts and DecorationRole pixmaps; classes give names and colours."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.classes: dict[int, ClassInfo] = {}
        self.show_predictions = True

    def set_classes(self, classes: list[ClassInfo]) -> None:
        self.classes = {info.id: info for info in classes}

    def sizeHint(self, option: QStyleOptionViewItem, index) -> QSize:
        return TILE_SIZE

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        rect = QRect(option.rect).adjusted(2, 2, -2, -2)
        palette = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            highlight = QColor(palette.color(QPalette.ColorRole.Highlight))
            fill = QColor(highlight)
            fill.setAlpha(60)
            painter.setPen(QPen(highlight, 2))
            painter.setBrush(fill)
            painter.drawRoundedRect(QRectF(rect), 6, 6)
        tile = index.data(TILE_ROLE)
        label = self.classes.get(tile.class_id) if tile and tile.class_id is not None else None

        # Thumbnail inside a frame of the label's colour.
        frame_rect = QRect(rect.left() + PADDING, rect.top() + PADDING, THUMB_SIDE + 2 * FRAME, THUMB_SIDE + 2 * FRAME)
        frame_color = QColor(label.color) if label else UNLABELED_FRAME
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(frame_color)
        painter.drawRoundedRect(QRectF(frame_rect), 4, 4)
        inner = frame_rect.adjusted(FRAME, FRAME, -FRAME, -FRAME)
        painter.fillRect(inner, QColor("#f4f4f4"))
        pixmap = index.data(Qt.ItemDataRole.DecorationRole)
        if pixmap is not None and not pixmap.isNull():
            scaled = pixmap.size().scaled(inner.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, scaled.width(), scaled.height())
            target.moveCenter(inner.center())
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawPixmap(target, pixmap)

        # Label bar under the thumbnail.
        bar = QRect(frame_rect.left(), frame_rect.bottom() + 3, frame_rect.width(), BAR_HEIGHT)
        font = QFont(option.font)
        if label:
            painter.setBrush(QColor(label.color))
            painter.drawRoundedRect(QRectF(bar), 4, 4)
            font.setBold(True)
            painter.setFont(font)
            painter.setPen(text_color_on(QColor(label.color)))
            text = label.name + ("  ✓ suggestion" if tile.origin == "suggestion" else "")
        else:
            painter.setFont(font)
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
            text = tile.name if tile else ""
        metrics = QFontMetrics(font)
        painter.drawText(bar.adjusted(6, 0, -6, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                         metrics.elidedText(text, Qt.TextElideMode.ElideRight, bar.width() - 12))

        # The model's suggestion: a coloured dot, class and confidence.
        if self.show_predictions and tile and tile.predicted_class_id is not None:
            predicted = self.classes.get(tile.predicted_class_id)
            if predicted is not None:
                self._paint_prediction(painter, option, bar, tile, predicted, label)
        painter.restore()

    def _paint_prediction(self, painter, option, bar: QRect, tile, predicted: ClassInfo, label) -> None:
        line = QRect(bar.left(), bar.bottom() + 2, bar.width(), LINE_HEIGHT)
        dot = QRect(line.left() + 4, line.center().y() - 4, 9, 9)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(predicted.color))
        painter.drawEllipse(dot)
        font = QFont(option.font)
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        disagrees = label is not None and label.id != predicted.id
        painter.setFont(font)
        painter.setPen(DISAGREE_COLOR if disagrees else option.palette.color(QPalette.ColorRole.Text))
        confidence = f"{tile.probability * 100:.0f}%" if tile.probability is not None else ""
        text = f"{'≠ ' if disagrees else ''}{predicted.name} {confidence}"
        metrics = QFontMetrics(font)
        area = line.adjusted(18, 0, -4, 0)
        painter.drawText(area, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                         metrics.elidedText(text, Qt.TextElideMode.ElideRight, area.width()))
