"""Thumbnails for the grid: read from the project and decoded off the GUI thread, cached as pixmaps.

A single daemon thread serves requests newest-first (what the user scrolled to last is what they
look at), reads JPEG bytes in small batches with ``storage.images.read_thumbnails`` (reads only, no
engine work) and decodes them into QImages already scaled to the tile's display size, which are
safe to build outside the GUI thread; painting a tile is then a plain 1:1 copy. The grid model
turns them into QPixmaps on the GUI thread and keeps them in a bounded LRU cache, so memory stays
flat however far the user scrolls. Requests for tiles the user has scrolled past are dropped
(``retain``), so a fast scroll through 100,000 images decodes only what ends up on screen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage

from storage.images import read_thumbnails

THUMB_SIDE = 150  # the side of the square a grid tile shows its thumbnail in (logical pixels)
BATCH = 48
MAX_PENDING = 4000
THUMBNAIL_CACHE_SIZE = 1000  # pixmaps the grid keeps; at 150x113 32-bit about 68 KB each, so ~70 MB at most


class ThumbnailLoader(QObject):
    """Loads requested thumbnails in the background; ``loaded`` carries [(image_id, QImage)]."""

    loaded = Signal(object)

    def __init__(self, project, max_side: int = THUMB_SIDE, parent: QObject | None = None):
        super().__init__(parent)
        self._project = project
        self._max_side = max_side  # device pixels: thumbnails come out fitted into this square
        self._pending: OrderedDict[int, None] = OrderedDict()  # newest requests at the end
        self._in_flight: set[int] = set()
        self._condition = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="sortlab-thumbnails", daemon=True)
        self._thread.start()

    def request(self, image_ids) -> None:
        """Ask for these thumbnails (again asking moves them to the front of the queue)."""
        with self._condition:
            for image_id in image_ids:
                if image_id in self._in_flight:
                    continue
                self._pending[image_id] = None
                self._pending.move_to_end(image_id)
            while len(self._pending) > MAX_PENDING:  # long-gone scroll positions: forget them
                self._pending.popitem(last=False)
            self._condition.notify()

    def retain(self, image_ids) -> None:
        """Drop queued requests except these (the user scrolled away from the others)."""
        keep = set(image_ids)
        with self._condition:
            for image_id in [i for i in self._pending if i not in keep]:
                del self._pending[image_id]

    @property
    def pending(self) -> int:
        with self._condition:
            return len(self._pending)

    def forget_pending(self) -> None:
        """Drop queued requests (the filter changed; those rows are gone)."""
        with self._condition:
            self._pending.clear()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._pending.clear()
            self._condition.notify()
        self._thread.join(timeout=5)

    def _next_batch(self) -> list[int] | None:
        with self._condition:
            while not self._pending and not self._stopped:
                self._condition.wait()
            if self._stopped:
                return None
            batch = []
            while self._pending and len(batch) < BATCH:
                image_id, _ = self._pending.popitem(last=True)
                batch.append(image_id)
            self._in_flight.update(batch)
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                data = read_thumbnails(self._project, batch)
                images = [(image_id, self._decode(data[image_id])) for image_id in batch if image_id in data]
            except Exception:  # project closed under us, or a bad row: those tiles stay blank
                images = []
            with self._condition:
                self._in_flight.difference_update(batch)
                if self._stopped:
                    return
            if images:
                self.loaded.emit(images)

    def _decode(self, data: bytes) -> QImage:
        image = QImage.fromData(data)
        if image.isNull():
            return image
        if max(image.width(), image.height()) != self._max_side:
            image = image.scaled(
                self._max_side, self._max_side, Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
        return image
