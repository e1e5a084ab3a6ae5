"""The thumbnail grid view: a QListView in icon mode tuned for very large projects.

Icon mode, not list mode with wrapping: list mode lays every row out again on any dataChanged
(100,000 Python rowCount calls each time a batch of thumbnails arrives). Batched layout keeps
opening 100,000 rows cheap; selection is read as row ranges (never as 100,000 QModelIndex
objects), so select-all then label stays instant. On every scroll the model is told which rows are
still on screen, so thumbnails of tiles scrolled past are never decoded, and the tile delegate is
prepared once per paint event rather than once per tile.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QItemSelection, QItemSelectionModel, QPoint, QSize, Signal
from PySide6.QtWidgets import QAbstractItemView, QListView

from gui.grid_model import ThumbnailGridModel
from gui.tile_delegate import TILE_SIZE, TileDelegate


class ThumbnailGrid(QListView):
    """Grid of tiles; ``open_requested(row)`` on double-click."""

    open_requested = Signal(int)

    def __init__(self, model: ThumbnailGridModel, parent=None):
        super().__init__(parent)
        self.grid_model = model
        self.tile_delegate = TileDelegate(self, source=model)
        self.tile_delegate.prepared_by_view = True  # paintEvent prepares it once per frame
        self.setModel(model)
        model.tiles_changed.connect(self.viewport().update)
        self.setItemDelegate(self.tile_delegate)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setMovement(QListView.Movement.Static)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(2000)
        self.setGridSize(TILE_SIZE + QSize(4, 4))
        self.setSpacing(0)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setSelectionRectVisible(True)
        self.setDragEnabled(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.verticalScrollBar().setSingleStep(TILE_SIZE.height() // 3)
        self.setMouseTracking(False)
        self.doubleClicked.connect(lambda index: self.open_requested.emit(index.row()))

    def selected_rows(self) -> np.ndarray:
        """Selected rows in ascending order, read from the selection's ranges."""
        parts = [np.arange(r.top(), r.bottom() + 1) for r in self.selectionModel().selection()]
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(parts))

    def selected_image_ids(self) -> list[int]:
        rows = self.selected_rows()
        return self.grid_model.ids[rows].tolist() if len(rows) else []

    def select_rows(self, rows) -> None:
        """Select exactly these rows (grouped into ranges), make the first current and visible."""
        rows = sorted(set(int(r) for r in rows))
        selection = QItemSelection()
        start = previous = None
        for row in rows + [None]:
            if start is not None and (row is None or row != previous + 1):
                selection.select(self.grid_model.index(start), self.grid_model.index(previous))
                start = None
            if row is not None and start is None:
                start = row
            previous = row
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect
        self.selectionModel().select(selection, flags)
        if rows:
            index = self.grid_model.index(rows[0])
            self.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.NoUpdate)
            self.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

    def visible_rows(self) -> range:
        """Rows whose tiles are (at least partly) on screen now."""
        area = self.viewport().rect()
        first = self.indexAt(area.topLeft() + QPoint(4, 4))
        if not first.isValid():
            first = self.indexAt(area.topLeft() + QPoint(TILE_SIZE.width() // 2, TILE_SIZE.height() // 2))
        if not first.isValid():
            return range(0)
        grid = self.gridSize()
        columns = max(1, area.width() // max(1, grid.width()))
        screen_rows = area.height() // max(1, grid.height()) + 2
        last = first.row()
        for row in range(first.row(), min(self.grid_model.rowCount(), first.row() + columns * screen_rows)):
            if self.visualRect(self.grid_model.index(row)).intersects(area):
                last = row
        return range(first.row(), last + 1)

    def visible_row_span(self) -> tuple[int, int] | None:
        """First and last row with a tile on screen (rows run left to right, top to bottom)."""
        area = self.viewport().rect()
        count = self.grid_model.rowCount()
        if not count or area.isEmpty():
            return None
        first = self.indexAt(area.topLeft() + QPoint(2, 2))
        if not first.isValid():
            first = self.indexAt(area.topLeft() + QPoint(TILE_SIZE.width() // 2, TILE_SIZE.height() // 2))
        if not first.isValid():
            return None
        last = self.indexAt(area.bottomRight() - QPoint(2, 2))
        grid = self.gridSize()
        columns = max(1, area.width() // max(1, grid.width()))
        screen = columns * (area.height() // max(1, grid.height()) + 2)
        last_row = last.row() if last.isValid() else min(count - 1, first.row() + screen)
        return first.row(), last_row

    def paintEvent(self, event) -> None:
        self.tile_delegate.prepare(self.font(), self.palette(), self.viewport().devicePixelRatioF())
        super().paintEvent(event)

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        span = self.visible_row_span()
        if span is not None:
            self.grid_model.retain_thumbnail_rows(span[0], span[1])

    def keyboardSearch(self, search: str) -> None:
        """Letters and digits are labeling shortcuts here, never jump-to-name."""
