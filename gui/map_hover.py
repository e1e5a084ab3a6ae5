"""Hovering the map: the point under the mouse gets a ring and a card with its thumbnail, its file
name and a caption. The card is a child frame of the map, transparent to the mouse, so it never
opens a top-level window or steals a click; it has a fixed width, so a long file name is elided
in the middle instead of stretching the card past the map."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, Qt, QTimer
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

from gui.lru_cache import LruCache
from gui.map_canvas import MapCanvas
from storage.images import list_images, read_thumbnails

THUMBNAIL_PX = 128
CARD_WIDTH_PX = 220
CACHED_THUMBNAILS = 300
OFFSET_PX = 16  # from the pointer, so the card never covers the point it describes
HOVER_DELAY_MS = 25  # mouse moves closer together than this are looked up once

ImageReader = Callable[[int], tuple[bytes | None, str]]  # image id -> (thumbnail, file name)


def read_hover_image(project, image_id: int) -> tuple[bytes | None, str]:
    """An image's thumbnail and file name from the project (none without one): the card reads
    each hovered image once and keeps it."""
    if project is None:
        return None, ""
    infos = list_images(project, [image_id])
    return read_thumbnails(project, [image_id]).get(image_id), infos[0].original_name if infos else ""


class HoverCard(QFrame):
    """Shows one image's thumbnail and file name (read through ``read_image``, cached) and caption."""

    def __init__(self, parent: QWidget, read_image: ImageReader):
        super().__init__(parent)
        self._read_image = read_image
        self._images: LruCache[int, tuple[QPixmap, str]] = LruCache(CACHED_THUMBNAILS)
        self.setObjectName("mapThumbnail")
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setStyleSheet(
            "#mapThumbnail { background: palette(tool-tip-base); border: 1px solid palette(mid); border-radius: 4px; }"
            " QLabel { color: palette(tool-tip-text); }"
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(2)
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.name = QLabel()
        font = self.name.font()
        font.setBold(True)
        self.name.setFont(font)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout.addWidget(self.image)
        layout.addWidget(self.name)
        layout.addWidget(self.caption)
        self.setFixedWidth(CARD_WIDTH_PX)
        self.hide()

    def forget_thumbnails(self) -> None:
        """Another project: its image ids mean other images."""
        self._images.clear()

    def show_image(self, image_id: int, caption: str, pointer: QPoint) -> None:
        """Show the card for one image next to ``pointer`` (in the parent's coordinates)."""
        pixmap, name = self.image_and_name(image_id)
        self.image.setPixmap(pixmap)
        self.image.setVisible(not pixmap.isNull())
        self.name.setToolTip(name)
        room = CARD_WIDTH_PX - self.contentsMargins().left() - self.contentsMargins().right() - 8
        self.name.setText(self.name.fontMetrics().elidedText(name or f"Image {image_id}",
                                                             Qt.TextElideMode.ElideMiddle, room))
        self.caption.setText(caption)
        self.adjustSize()
        self.follow(pointer)
        self.show()
        self.raise_()

    def follow(self, pointer: QPoint) -> None:
        """Place the card below right of the pointer, or on the other side where the map ends."""
        parent = self.parentWidget()
        x, y = pointer.x() + OFFSET_PX, pointer.y() + OFFSET_PX
        if x + self.width() > parent.width():
            x = pointer.x() - OFFSET_PX - self.width()
        if y + self.height() > parent.height():
            y = pointer.y() - OFFSET_PX - self.height()
        self.move(max(0, x), max(0, y))

    def image_and_name(self, image_id: int) -> tuple[QPixmap, str]:
        """The image's thumbnail at most THUMBNAIL_PX on a side (a null pixmap when there is none)
        and its file name ("" when unknown)."""
        cached = self._images.get(image_id)
        if cached is not None:
            return cached
        pixmap = QPixmap()
        data, name = self._read_image(image_id)
        if data:
            pixmap.loadFromData(data)
            if not pixmap.isNull() and max(pixmap.width(), pixmap.height()) > THUMBNAIL_PX:
                pixmap = pixmap.scaled(THUMBNAIL_PX, THUMBNAIL_PX, Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation)
        return self._images.put(image_id, (pixmap, name))


class PointHover(QObject):
    """Follows the mouse over the map (at most once per HOVER_DELAY_MS), rings the point under it
    and shows its card. ``describe(index)`` gives that point's image id and caption."""

    def __init__(self, view: QWidget, canvas: MapCanvas, coords: Callable[[], np.ndarray],
                 describe: Callable[[int], tuple[int, str]], read_image: ImageReader):
        super().__init__(view)
        self.view = view
        self.canvas = canvas
        self._coords = coords
        self._describe = describe
        self.card = HoverCard(view, read_image)
        self.index = -1  # the point under the mouse, -1 for none
        self.scene_pos: QPointF | None = None  # the mouse over the canvas, in scene coordinates
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(HOVER_DELAY_MS)
        self._timer.timeout.connect(self.update)
        canvas.scene().sigMouseMoved.connect(self._mouse_moved)
        canvas.viewport().installEventFilter(self)

    def _mouse_moved(self, scene_pos: QPointF) -> None:
        self.scene_pos = scene_pos
        if not self._timer.isActive():
            self._timer.start()

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.Leave:
            self.show_point(-1)
        return False

    def update(self) -> None:
        """Find the point under the mouse and show it (or nothing)."""
        viewbox = self.canvas.viewbox
        if self.scene_pos is None or not viewbox.sceneBoundingRect().contains(self.scene_pos):
            self.show_point(-1)
            return
        pos = viewbox.mapSceneToView(self.scene_pos)
        self.show_point(self.canvas.nearest_point(self._coords(), pos.x(), pos.y()))

    def show_point(self, index: int) -> None:
        if index == self.index:
            if index >= 0:
                self.card.follow(self._pointer())
            return
        self.index = index
        self.canvas.draw_hover(self._coords(), index)
        if index < 0:
            self.card.hide()
            return
        image_id, caption = self._describe(index)
        self.card.show_image(image_id, caption, self._pointer())

    def forget(self) -> None:
        """The points were replaced: no point is under the mouse until it moves again."""
        self.index = -1

    def redraw(self) -> None:
        """The points moved: the ring follows its point."""
        self.canvas.draw_hover(self._coords(), self.index)

    def _pointer(self) -> QPoint:
        """The mouse position in the map panel's coordinates."""
        return self.canvas.mapTo(self.view, self.canvas.mapFromScene(self.scene_pos))
