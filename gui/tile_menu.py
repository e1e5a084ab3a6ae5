"""The grid's right-click menu: what users expect on a tile. Labeling entries act on the selection
(a right-click on an unselected tile selects it first, as file managers do); Open and the file
entries act on the tile under the mouse."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QPoint, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QMenu

from storage.images import list_images

if TYPE_CHECKING:
    from gui.main_window import MainWindow


def _map_rows(window: MainWindow, image_ids: list[int]) -> np.ndarray:
    """Where these images are among the map's points (empty: no map, or none of them on it)."""
    panels = getattr(window, "insight", None)  # docked by gui/insight.py; absent in a bare window
    if panels is None or not image_ids:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.isin(panels.embedding.image_ids, np.asarray(image_ids, dtype=np.int64)))


def show_in_map(window: MainWindow, image_ids: list[int]) -> bool:
    """Bring the map to the front with these images selected on it; False when the map has none
    of them (no map yet)."""
    rows = _map_rows(window, image_ids)
    if not len(rows):
        return False
    dock = window.insight.docks["map"]
    dock.show()
    dock.raise_()
    window.insight.embedding.select_indices(rows)
    return True


class TileMenu:
    """Builds and shows the context menu of the window's grid."""

    def __init__(self, window: MainWindow):
        self.window = window

    def show_at(self, position: QPoint) -> QMenu | None:
        """Right-click at ``position`` (grid viewport coordinates): the menu of the tile there."""
        menu = self.menu_at(position)
        if menu is not None:
            menu.exec(self.window.grid.viewport().mapToGlobal(position))
        return menu

    def menu_at(self, position: QPoint) -> QMenu | None:
        grid = self.window.grid
        index = grid.indexAt(position)
        if not index.isValid():
            return None
        if not grid.selectionModel().isSelected(index):
            grid.select_rows([index.row()])
        return self.menu_for(index.row(), grid.selected_image_ids())

    def menu_for(self, row: int, selected: list[int]) -> QMenu:
        """The menu for the tile in ``row`` with ``selected`` images selected."""
        window = self.window
        labeling = window.labeling
        image_id = window.grid_model.image_id(row)
        menu = QMenu(window.grid)
        label_menu = menu.addMenu("Label as")
        for info in window.classes_panel.classes:
            action = label_menu.addAction(f"{info.name}\t{info.shortcut or ''}")
            action.triggered.connect(lambda _c=False, cid=info.id: labeling.label_images(selected, cid))
        if not window.classes_panel.classes:
            label_menu.addAction("(no classes yet: add one with Ctrl+K)").setEnabled(False)
        menu.addAction("Remove label\tBackspace").triggered.connect(lambda: labeling.label_images(selected, None))
        accept = menu.addAction("Accept suggestion\tEnter")
        accept.triggered.connect(lambda: labeling.accept_suggestions(selected, advance=False))
        accept.setEnabled(window.has_model)
        menu.addSeparator()
        menu.addAction("Open\tSpace").triggered.connect(lambda: window.open_viewer(row))
        on_map = menu.addAction("Show in map")
        on_map.triggered.connect(lambda: show_in_map(window, selected))
        on_map.setEnabled(len(_map_rows(window, selected)) > 0)
        if not on_map.isEnabled():
            on_map.setToolTip("The map appears once the first model is trained.")
        [info] = list_images(window.project, [image_id])
        if os.path.exists(info.original_path):
            menu.addAction("Show the file in its folder").triggered.connect(
                lambda: self.reveal(info.original_path))
        else:
            menu.addAction("Copy the file's path").triggered.connect(lambda: self.copy_path(info.original_path))
        menu.setToolTipsVisible(True)
        return menu

    def reveal(self, path: str) -> None:
        """Open the folder holding the original file in the system's file manager."""
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(path).parent))):
            self.copy_path(path)

    def copy_path(self, path: str) -> None:
        QGuiApplication.clipboard().setText(path)
        gone = "" if os.path.exists(path) else " (the original file is no longer there; the project keeps its copy)"
        self.window.show_message(f"Copied the file's path: {path}{gone}", 8000)
