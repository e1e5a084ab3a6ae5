"""The grid's list model: image ids in the current filter order, with tile facts fetched by page.

The model keeps just an int64 array of ids, so 100,000 rows cost under a megabyte. Tile facts
(name, label, prediction) are read a page of rows at a time when the view first asks, and
thumbnails arrive asynchronously from the ThumbnailLoader; until then the delegate draws a
placeholder.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QPixmap

from gui.thumbnails import PixmapCache, ThumbnailLoader
from storage import browse

IMAGE_ID_ROLE = Qt.ItemDataRole.UserRole + 1
TILE_ROLE = Qt.ItemDataRole.UserRole + 2
PAGE_ROWS = 256
MAX_PAGES = 64


class ThumbnailGridModel(QAbstractListModel):
    """Rows are images of the current query; DecorationRole is the thumbnail once it has loaded."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.project = None
        self.model_version: int | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._row_of: dict[int, int] | None = None
        self._pages: OrderedDict[int, dict[int, browse.TileInfo]] = OrderedDict()
        self._pixmaps = PixmapCache()
        self._loader: ThumbnailLoader | None = None

    # -- setup ----------------------------------------------------------------------------------
    def set_project(self, project) -> None:
        if self._loader is not None:
            self._loader.stop()
            self._loader = None
        self.project = project
        self._pixmaps.clear()
        if project is not None:
            self._loader = ThumbnailLoader(project, parent=self)
            self._loader.loaded.connect(self._thumbnails_loaded)
            self.model_version = browse.active_model_version(project)
        self.set_ids(np.zeros(0, dtype=np.int64))

    def set_ids(self, ids: np.ndarray) -> None:
        """Show exactly these images, in this order."""
        self.beginResetModel()
        self._ids = np.asarray(ids, dtype=np.int64)
        self._row_of = None
        self._pages.clear()
        if self._loader is not None:
            self._loader.forget_pending()
        self.endResetModel()

    def shutdown(self) -> None:
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
        else:
            self._pages.move_to_end(page_number)
        return page.get(int(self._ids[row]))

    def pixmap(self, image_id: int) -> QPixmap | None:
        return self._pixmaps.get(image_id)

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
            pixmap = self._pixmaps.get(image_id)
            if pixmap is None and self._loader is not None:
                self._loader.request([image_id])
            return pixmap
        if role == TILE_ROLE:
            return self.tile(row)
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            tile = self.tile(row)
            return tile.name if tile else str(image_id)
        return None

    # -- updates --------------------------------------------------------------------------------
    def refresh_tiles(self, image_ids=None) -> None:
        """Labels or predictions changed: drop cached tile facts and repaint (these ids, or all)."""
        if self.project is not None:
            self.model_version = browse.active_model_version(self.project)
        self._pages.clear()
        if not len(self._ids):
            return
        if image_ids is None:
            self.dataChanged.emit(self.index(0), self.index(len(self._ids) - 1), [TILE_ROLE])
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
        self._pages[page_number] = page
        while len(self._pages) > MAX_PAGES:
            self._pages.popitem(last=False)
        return page

    def _thumbnails_loaded(self, images) -> None:
        rows = []
        for image_id, image in images:
            self._pixmaps.put(image_id, QPixmap.fromImage(image))
            row = self.row_of(image_id)
            if row is not None:
                rows.append(row)
        if rows:
            first, last = min(rows), max(rows)
            # One signal for the batch: the rows of a batch are on one screen, so the span is small.
            if last - first < 400:
                self.dataChanged.emit(self.index(first), self.index(last), [Qt.ItemDataRole.DecorationRole])
            else:
                for row in rows:
                    self.dataChanged.emit(self.index(row), self.index(row), [Qt.ItemDataRole.DecorationRole])
