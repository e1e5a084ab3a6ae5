"""The thumbnail grid view: a QListView in icon mode tuned for very large projects.

Uniform item sizes and batched layout keep opening 100,000 rows cheap; selection is read as row
ranges (never as 100,000 QModelIndex objects), so select-all then label stays instant.
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
        self.tile_delegate = TileDelegate(self)
        self.setModel(model)
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

    def keyboardSearch(self, search: str) -> None:
        """Letters and digits are labeling shortcuts here, never jump-to-name."""
