"""The grid's list model: image ids in the current filter order, with tile facts fetched by page.

The model keeps just an int64 array of ids, so 100,000 rows cost under a megabyte. Tile facts
(name, label, prediction) are read a page of rows at a time when the view first asks, and
thumbnails arrive asynchronously from the ThumbnailLoader; until then the delegate draws a
placeholder. Missing thumbnails asked for while painting are collected and handed to the loader
once per event-loop turn (one lock and one wake-up per frame, not one per tile).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QPixmap

from gui.lru_cache import LruCache
from gui.thumbnails import THUMB_SIDE, THUMBNAIL_CACHE_SIZE, ThumbnailLoader
from storage import browse, modelstore

IMAGE_ID_ROLE = Qt.ItemDataRole.UserRole + 1
TILE_ROLE = Qt.ItemDataRole.UserRole + 2
PAGE_ROWS = 256
MAX_PAGES = 64
MAX_ROW_SIGNALS = 256  # refresh_tiles for more ids than this repaints the view instead (see there)


class ThumbnailGridModel(QAbstractListModel):
    """Rows are images of the current query; DecorationRole is the thumbnail once it has loaded.

    ``tiles_changed`` means "the facts of many or all tiles changed": views repaint what they show.
    """

    tiles_changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.project = None
        self.model_version: int | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._row_of: dict[int, int] | None = None
        self._notes: dict[int, str] = {}  # a curation mode's words per image ("why this one"), in tooltips
        self._pages: LruCache[int, dict[int, browse.TileInfo]] = LruCache(MAX_PAGES)
        self._pixmaps: LruCache[int, QPixmap] = LruCache(THUMBNAIL_CACHE_SIZE)
        self._loader: ThumbnailLoader | None = None
        self._wanted: dict[int, None] = {}  # thumbnails asked for since the last flush, in order
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(0)
        self._flush_timer.timeout.connect(self._flush_requests)
        self.device_pixel_ratio = 1.0

    # -- setup ----------------------------------------------------------------------------------
    def set_project(self, project) -> None:
        if self._loader is not None:
            self._loader.stop()
            self._loader = None
        self.project = project
        self._pixmaps.clear()
        self._wanted.clear()
        if project is not None:
            screen = QGuiApplication.primaryScreen()
            self.device_pixel_ratio = screen.devicePixelRatio() if screen is not None else 1.0
            side = round(THUMB_SIDE * self.device_pixel_ratio)
            self._loader = ThumbnailLoader(project, max_side=side, parent=self)
            self._loader.loaded.connect(self._thumbnails_loaded)
            self.model_version = modelstore.active_version(project)
        self._notes = {}
        self.set_ids(np.zeros(0, dtype=np.int64))

    def set_ids(self, ids: np.ndarray) -> None:
        """Show exactly these images, in this order."""
        self.beginResetModel()
        self._ids = np.asarray(ids, dtype=np.int64)
        self._row_of = None
        self._pages.clear()
        self._wanted.clear()
        if self._loader is not None:
            self._loader.forget_pending()
        self.endResetModel()

    def append_ids(self, ids) -> None:
        """Add these images after the rows shown (rows already shown keep their place and tiles)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        first = len(self._ids)
        self.beginInsertRows(QModelIndex(), first, first + len(ids) - 1)
        self._ids = np.concatenate([self._ids, ids])
        self._row_of = None
        self._pages.clear()  # the last page was read without the new rows
        self.endInsertRows()

    def set_notes(self, notes: dict[int, str]) -> None:
        """A line of words per image, shown as its tooltip (e.g. why Sortlab picked it); {} for none."""
        self._notes = {int(k): v for k, v in notes.items()}

    def note(self, image_id: int) -> str | None:
        return self._notes.get(int(image_id))

    def shutdown(self) -> None:
        self._flush_timer.stop()
        self._wanted.clear()
        if self._loader is not None:
            self._loader.stop()
            self._loader = None

    # -- lookups --------------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def image_id(self, row: int) -> int:
        return int(self._ids[row])

    def row_of(self, image_id: int) -> int | None:
        if self._row_of is None:  # built on first use only: most sessions never need it
            self._row_of = {int(image_id): row for row, image_id in enumerate(self._ids)}
        return self._row_of.get(int(image_id))

    def tile(self, row: int) -> browse.TileInfo | None:
        page_number = row // PAGE_ROWS
        page = self._pages.get(page_number)
        if page is None:
            page = self._load_page(page_number)
        return page.get(int(self._ids[row]))

    def pixmap(self, image_id: int) -> QPixmap | None:
        """The cached thumbnail, or None (never starts a load)."""
        return self._pixmaps.get(image_id)

    def thumbnail(self, row: int) -> QPixmap | None:
        """The thumbnail of this row if cached; otherwise None, and it is queued for loading."""
        image_id = int(self._ids[row])
        pixmap = self._pixmaps.get(image_id)
        if pixmap is None and self._loader is not None:
            self._wanted[image_id] = None
            if not self._flush_timer.isActive():
                self._flush_timer.start()
        return pixmap

    def retain_thumbnail_rows(self, first: int, last: int) -> None:
        """Only rows first..last are still worth loading (the rest scrolled out of sight)."""
        if self._loader is None:
            return
        keep = self._ids[max(0, first) : max(0, last + 1)].tolist()
        keep_set = set(keep)
        self._wanted = {i: None for i in self._wanted if i in keep_set}
        self._loader.retain(keep)

    @property
    def pending_thumbnails(self) -> int:
        """Thumbnails queued but not loaded yet (for tests and the benchmark)."""
        return len(self._wanted) + (self._loader.pending if self._loader is not None else 0)

    @property
    def cached_thumbnails(self) -> int:
        return len(self._pixmaps)

    # -- Qt model API ---------------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._ids)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self._ids):
            return None
        row = index.row()
        image_id = int(self._ids[row])
        if role == IMAGE_ID_ROLE:
            return image_id
        if role == Qt.ItemDataRole.DecorationRole:
            return self.thumbnail(row)
        if role == TILE_ROLE:
            return self.tile(row)
        if role == Qt.ItemDataRole.ToolTipRole and image_id in self._notes:
            tile = self.tile(row)
            return f"{tile.name if tile else image_id}\n{self._notes[image_id]}"
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            tile = self.tile(row)
            return tile.name if tile else str(image_id)
        return None

    # -- updates --------------------------------------------------------------------------------
    def refresh_tiles(self, image_ids=None) -> None:
        """Labels (these ids) or predictions (all: ``image_ids`` None) changed: drop cached tile
        facts and repaint. Only a refresh of all re-reads which model version is in use.

        For many rows this emits ``tiles_changed`` instead of dataChanged: a QListView handles
        dataChanged row by row (on 100,000 rows, a second of Python rowCount calls), while the
        view only needs to repaint what is on screen, which re-reads its tile facts."""
        if self.project is not None and image_ids is None:
            self.model_version = modelstore.active_version(self.project)
        self._pages.clear()
        if not len(self._ids):
            return
        if image_ids is None or len(image_ids) > MAX_ROW_SIGNALS:
            self.tiles_changed.emit()
            return
        for image_id in image_ids:
            row = self.row_of(image_id)
            if row is not None:
                index = self.index(row)
                self.dataChanged.emit(index, index, [TILE_ROLE])

    def _load_page(self, page_number: int) -> dict[int, browse.TileInfo]:
        start = page_number * PAGE_ROWS
        ids = self._ids[start : start + PAGE_ROWS].tolist()
        page = browse.tile_infos(self.project, ids, self.model_version) if self.project is not None else {}
        return self._pages.put(page_number, page)

    def _flush_requests(self) -> None:
        if self._wanted and self._loader is not None:
            self._loader.request(list(self._wanted)[::-1])  # the loader serves the last first
        self._wanted.clear()

    def _thumbnails_loaded(self, images) -> None:
        ratio = self.device_pixel_ratio
        rows = []
        for image_id, image in images:
            pixmap = QPixmap.fromImage(image)
            pixmap.setDevicePixelRatio(ratio)
            self._pixmaps.put(image_id, pixmap)
            row = self.row_of(image_id)
            if row is not None:
                rows.append(row)
        # One signal per run of consecutive rows: the view repaints each changed row's rectangle
        # (one visualRect per row), so a signal must never span rows that did not change.
        rows.sort()
        start = previous = None
        for row in rows + [None]:
            if start is not None and (row is None or row != previous + 1):
                self.dataChanged.emit(self.index(start), self.index(previous), [Qt.ItemDataRole.DecorationRole])
                start = None
            if row is not None and start is None:
                start = row
            previous = row
