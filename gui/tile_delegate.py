"""Paints one grid tile: the thumbnail framed in its label's colour, a label bar, and the suggestion.

Painting is custom because a tile carries three facts at a glance (what it is, what the user said,
what the model thinks), and a plain icon+text item cannot show colour and confidence compactly.

Speed matters here: a scrolling grid paints dozens of tiles per frame, and every Python -> Qt call
costs about a microsecond. So the delegate reads tile facts and thumbnails from the grid model
directly (not through ``QModelIndex.data``, which round-trips through C++ and QVariant), and the
parts that repeat across tiles (the tile with its coloured frame and label bar, "cans 87%") are
drawn once into small opaque pixmaps ("sprites", the view's background baked in) and then only
copied: an opaque copy is a memcpy per line, where alpha blending or antialiased shapes are not.
Thumbnails arrive pre-scaled to ``THUMB_SIDE`` (see gui/thumbnails.py), so drawing one is a 1:1
copy too. A tile is then two or three copies, plus the file name for unlabeled images.
"""

from __future__ import annotations

from PySide6.QtCore import QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from gui.grid_model import TILE_ROLE
from gui.lru_cache import LruCache
from gui.thumbnails import THUMB_SIDE
from storage.catalog import ClassInfo

PADDING = 6
FRAME = 4
BAR_HEIGHT = 20
LINE_HEIGHT = 18
TILE_SIZE = QSize(THUMB_SIDE + 2 * (PADDING + FRAME), THUMB_SIDE + 2 * (PADDING + FRAME) + BAR_HEIGHT + LINE_HEIGHT)
UNLABELED_FRAME = QColor("#d0d0d0")
THUMB_BACKGROUND = QColor("#f4f4f4")
DISAGREE_COLOR = QColor("#c62828")
SPRITE_CACHE_SIZE = 1500  # tiles (~140 KB, a few dozen) and prediction lines (~11 KB, one per class and %)
NAME_CACHE_SIZE = 2000  # elided file names of unlabeled tiles (short strings): eliding costs more than drawing
SELECTION_ALPHA = 60
NAME_WIDTH = THUMB_SIDE + 2 * FRAME - 12  # the label bar less its margins

# Enum values combined once: enum arithmetic in PySide is Python code, too slow for every tile.
_LEFT_MIDDLE = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft
_ELIDE_RIGHT = Qt.TextElideMode.ElideRight
_SELECTED = QStyle.StateFlag.State_Selected
_ANTIALIASING = QPainter.RenderHint.Antialiasing
_NO_PEN = Qt.PenStyle.NoPen
_KEEP_ASPECT = Qt.AspectRatioMode.KeepAspectRatio
_SMOOTH = QPainter.RenderHint.SmoothPixmapTransform
_HIGHLIGHT = QPalette.ColorRole.Highlight
_TEXT = QPalette.ColorRole.Text
_BASE = QPalette.ColorRole.Base
_PLACEHOLDER = QPalette.ColorRole.PlaceholderText


def text_color_on(background: QColor) -> QColor:
    """Black or white, whichever reads better on this colour."""
    luminance = 0.299 * background.red() + 0.587 * background.green() + 0.114 * background.blue()
    return QColor("#111111") if luminance > 150 else QColor("#ffffff")


class TileDelegate(QStyledItemDelegate):
    """Draws tiles from the grid model's tile facts and thumbnails; classes give names and colours.

    ``source`` is the ThumbnailGridModel to read from directly; without one (a plain model), the
    delegate falls back to TILE_ROLE and DecorationRole through ``index.data``. A view that calls
    ``prepare`` once per paint event sets ``prepared_by_view``, sparing every tile that check.
    """

    def __init__(self, parent=None, source=None):
        super().__init__(parent)
        self.source = source
        self.classes: dict[int, ClassInfo] = {}
        self.show_predictions = True
        self.prepared_by_view = False
        self._colors: dict[int, QColor] = {}
        self._sprites: LruCache[tuple, QPixmap] = LruCache(SPRITE_CACHE_SIZE)
        self._names: LruCache[str, str] = LruCache(NAME_CACHE_SIZE)  # file name -> elided to fit the bar
        self._style_key: tuple | None = None
        self._ratio = 1.0
        self._font = QFont()
        self._bold = QFont()
        self._small = QFont()
        self._metrics = QFontMetrics(self._font)
        self._name_baseline = (BAR_HEIGHT + self._metrics.ascent() - self._metrics.descent()) // 2
        self._bold_metrics = QFontMetrics(self._bold)
        self._small_metrics = QFontMetrics(self._small)
        self._base = QColor("#ffffff")
        self._highlight = QColor("#3daee9")
        self._selected_fill = QColor("#3daee9")
        self._placeholder = QColor("#808080")
        self._text = QColor("#000000")

    def set_classes(self, classes: list[ClassInfo]) -> None:
        self.classes = {info.id: info for info in classes}
        self._colors = {info.id: QColor(info.color) for info in classes}
        self._sprites.clear()

    @property
    def cached_sprites(self) -> int:
        return len(self._sprites)

    def sizeHint(self, option: QStyleOptionViewItem, index) -> QSize:
        return TILE_SIZE

    def prepare(self, font: QFont, palette: QPalette, ratio: float) -> None:
        """Fonts, metrics and colours for this font, palette and screen (the caches reset on change)."""
        key = (font.key(), palette.cacheKey(), ratio)
        if key == self._style_key:
            return
        self._style_key = key
        self._ratio = ratio
        self._font = QFont(font)
        self._bold = QFont(font)
        self._bold.setBold(True)
        self._small = QFont(font)
        self._small.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        self._metrics = QFontMetrics(self._font)
        self._name_baseline = (BAR_HEIGHT + self._metrics.ascent() - self._metrics.descent()) // 2
        self._bold_metrics = QFontMetrics(self._bold)
        self._small_metrics = QFontMetrics(self._small)
        self._base = QColor(palette.color(_BASE))
        self._highlight = QColor(palette.color(_HIGHLIGHT))
        a = SELECTION_ALPHA / 255
        self._selected_fill = QColor.fromRgbF(  # the highlight at this alpha over the background
            *(b * (1 - a) + h * a for b, h in zip(self._base.getRgbF()[:3], self._highlight.getRgbF()[:3])))
        self._placeholder = QColor(palette.color(_PLACEHOLDER))
        self._text = QColor(palette.color(_TEXT))
        self._sprites.clear()
        self._names.clear()

    # -- painting -------------------------------------------------------------------------------
    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index) -> None:
        if not self.prepared_by_view:
            self.prepare(option.font, option.palette, painter.device().devicePixelRatioF())
        source = self.source
        if source is not None:
            row = index.row()
            tile = source.tile(row)
            pixmap = source.thumbnail(row)
        else:
            tile = index.data(TILE_ROLE)
            pixmap = index.data(Qt.ItemDataRole.DecorationRole)
        rect = option.rect
        x, y = rect.x(), rect.y()
        selected = _SELECTED in option.state
        class_id = tile.class_id if tile is not None else None
        label = self.classes.get(class_id) if class_id is not None else None
        suggestion = label is not None and tile.origin == "suggestion"

        # The tile: background, selection, the frame in the label's colour and the label bar.
        painter.drawPixmap(x, y, self._tile_sprite(rect.width(), rect.height(), label, suggestion, selected))
        frame_left, frame_top = x + 2 + PADDING, y + 2 + PADDING
        if pixmap is not None and not pixmap.isNull():
            self._draw_thumbnail(painter, pixmap, frame_left + FRAME, frame_top + FRAME)

        # Unlabeled images show their file name in the bar instead.
        bar_top = frame_top + THUMB_SIDE + 2 * FRAME + 2
        if label is None and tile is not None:
            name = self._names.get(tile.name)
            if name is None:
                name = self._elided_name(tile.name)
            painter.setFont(self._font)
            painter.setPen(self._placeholder)
            painter.drawText(frame_left + 6, bar_top + self._name_baseline, name)  # at a baseline: 2x faster

        # The model's suggestion: a coloured dot, class and confidence.
        if self.show_predictions and tile is not None and tile.predicted_class_id is not None:
            predicted = self.classes.get(tile.predicted_class_id)
            if predicted is not None:
                percent = round(tile.probability * 100) if tile.probability is not None else None
                disagrees = label is not None and label.id != predicted.id
                painter.drawPixmap(frame_left, bar_top + BAR_HEIGHT + 1,
                                   self._prediction_sprite(predicted, percent, disagrees, selected))

    def _draw_thumbnail(self, painter: QPainter, pixmap: QPixmap, left: int, top: int) -> None:
        inner = THUMB_SIDE
        ratio = pixmap.devicePixelRatio()
        width, height = pixmap.width() / ratio, pixmap.height() / ratio
        if abs(max(width, height) - inner) < 0.5:  # pre-scaled by the loader: a plain copy
            painter.drawPixmap(left + int((inner - width) / 2), top + int((inner - height) / 2), pixmap)
            return
        size = QSize(round(width), round(height)).scaled(QSize(inner, inner), _KEEP_ASPECT)
        target = QRect(0, 0, size.width(), size.height())
        target.moveCenter(QRect(left, top, inner, inner).center())
        painter.save()
        painter.setRenderHint(_SMOOTH, True)
        painter.drawPixmap(target, pixmap)
        painter.restore()

    # -- cached pieces --------------------------------------------------------------------------
    def _sprite(self, key: tuple, width: int, height: int, background: QColor, draw) -> QPixmap:
        """An opaque pixmap (``background`` then ``draw(painter, rect)``), made once per key."""
        sprite = self._sprites.get(key)
        if sprite is not None:
            return sprite
        ratio = self._ratio
        sprite = QPixmap(round(width * ratio), round(height * ratio))
        sprite.setDevicePixelRatio(ratio)
        sprite.fill(background)
        painter = QPainter(sprite)
        painter.setRenderHint(_ANTIALIASING, True)
        draw(painter, QRect(0, 0, width, height))
        painter.end()
        return self._sprites.put(key, sprite)

    def _tile_sprite(self, width: int, height: int, label: ClassInfo | None, suggestion: bool,
                     selected: bool) -> QPixmap:
        color = self._colors.get(label.id, UNLABELED_FRAME) if label is not None else UNLABELED_FRAME

        def draw(painter: QPainter, rect: QRect) -> None:
            outer = rect.adjusted(2, 2, -2, -2)
            if selected:
                painter.setPen(QPen(self._highlight, 2))
                painter.setBrush(self._selected_fill)
                painter.drawRoundedRect(QRectF(outer), 6, 6)
            side = THUMB_SIDE + 2 * FRAME
            frame = QRect(outer.left() + PADDING, outer.top() + PADDING, side, side)
            painter.setPen(_NO_PEN)
            painter.setBrush(color)
            painter.drawRoundedRect(QRectF(frame), 4, 4)
            painter.fillRect(frame.adjusted(FRAME, FRAME, -FRAME, -FRAME), THUMB_BACKGROUND)
            if label is None:
                return
            bar = QRect(frame.left(), frame.bottom() + 3, side, BAR_HEIGHT)
            painter.drawRoundedRect(QRectF(bar), 4, 4)
            painter.setFont(self._bold)
            painter.setPen(text_color_on(color))
            text = label.name + ("  ✓ suggestion" if suggestion else "")
            painter.drawText(bar.adjusted(6, 0, -6, 0), _LEFT_MIDDLE,
                             self._bold_metrics.elidedText(text, _ELIDE_RIGHT, bar.width() - 12))

        key = ("tile", width, height, label.id if label is not None else None, suggestion, selected)
        return self._sprite(key, width, height, self._background(selected), draw)

    def _elided_name(self, name: str) -> str:
        return self._names.put(name, self._metrics.elidedText(name, _ELIDE_RIGHT, NAME_WIDTH))

    def _prediction_sprite(self, predicted: ClassInfo, percent: int | None, disagrees: bool,
                           selected: bool) -> QPixmap:
        width = THUMB_SIDE + 2 * FRAME
        color = self._colors.get(predicted.id) or QColor(predicted.color)
        confidence = f"{percent}%" if percent is not None else ""
        text = f"{'≠ ' if disagrees else ''}{predicted.name} {confidence}"

        def draw(painter: QPainter, rect: QRect) -> None:
            painter.setPen(_NO_PEN)
            painter.setBrush(color)
            painter.drawEllipse(QRect(rect.left() + 4, rect.center().y() - 4, 9, 9))
            painter.setFont(self._small)
            painter.setPen(DISAGREE_COLOR if disagrees else self._text)
            area = rect.adjusted(18, 0, -4, 0)
            painter.drawText(area, _LEFT_MIDDLE, self._small_metrics.elidedText(text, _ELIDE_RIGHT, area.width()))

        key = ("prediction", predicted.id, percent, disagrees, selected)
        return self._sprite(key, width, LINE_HEIGHT, self._background(selected), draw)

    def _background(self, selected: bool) -> QColor:
        return self._selected_fill if selected else self._base
