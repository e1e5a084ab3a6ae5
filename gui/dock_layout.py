"""The main window's docks: where panels go when they are added, and the window layout (geometry,
docks, toolbar) kept in QSettings so the app reopens as the user left it.

Each panel sits in a frameless scroll area: a panel's own minimum size (a plot, a row of buttons)
never sets the window's minimum size. Squeezed, a panel scrolls; so the window fits a 1366 x 768
laptop screen with every panel open, and 1024 x 700 as well."""

from __future__ import annotations

import re

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QDockWidget, QFrame, QLabel, QMainWindow, QMenu, QScrollArea, QWidget

LEFT_DOCK_WIDTH = 210  # the classes panel: names and counts
RIGHT_DOCK_WIDTH = 400  # training, map and report: wide enough for their plots
MIN_DOCK_WIDTH = 150  # the narrowest a side panel gets before the user closes or tabs it
MIN_DOCK_HEIGHT = 120
GRID_MIN_WIDTH = 480  # what the grid keeps when the side panels are sized on the first run
SCROLLBAR_ROOM = 20  # a panel as tall as the screen shows a vertical scroll bar beside it


def panel_of(dock: QDockWidget) -> QWidget:
    """The panel a dock shows (inside its scroll area)."""
    holder = dock.widget()
    return holder.widget() if isinstance(holder, QScrollArea) else holder


class DockLayout:
    """Adds panels as docks of ``window`` and saves and restores the window's layout."""

    def __init__(self, window: QMainWindow, settings: QSettings):
        self.window = window
        self.settings = settings
        self.docks: list[QDockWidget] = []
        self.view_menu: QMenu | None = None  # once set, each dock's show/hide action is listed there
        self._reserved: dict[str, QDockWidget] = {}  # title -> a dock waiting for its panel
        self._sized_while_reserved = False  # first-run widths were set before every panel was in

    def add(self, widget: QWidget, title: str, area: Qt.DockWidgetArea) -> QDockWidget:
        """Dock a panel; panels added to the same side share it as tabs. A dock reserved under this
        title (``reserve``) gets the panel instead of a new dock being made."""
        dock = self._reserved.pop(title, None)
        if dock is None:
            dock = self._new_dock(title, area)
        holder = dock.widget()
        holder.setWidget(widget)
        if self._sized_while_reserved and not self._reserved:
            self._sized_while_reserved = False
            self.apply_default_sizes()  # the first run's widths, now from the real panels' sizes
        return dock

    def reserve(self, title: str, area: Qt.DockWidgetArea) -> QDockWidget:
        """The dock of a panel that is made later (after the window's first paint, gui/app.py): in
        place now, with its title and tab, so the saved layout restores around it; ``add`` with the
        same title puts the panel in it."""
        dock = self._new_dock(title, area)
        waiting = QLabel("Loading…")
        waiting.setAlignment(Qt.AlignmentFlag.AlignCenter)
        waiting.setEnabled(False)  # drawn in the palette's muted text colour
        dock.widget().setWidget(waiting)
        self._reserved[title] = dock
        return dock

    @property
    def reserved(self) -> list[str]:
        """Titles of reserved docks that have no panel yet."""
        return list(self._reserved)

    def _new_dock(self, title: str, area: Qt.DockWidgetArea) -> QDockWidget:
        window = self.window
        dock = QDockWidget(title, window)
        dock.setObjectName("dock-" + re.sub(r"\W+", "-", title.lower()).strip("-"))  # saveState's key
        holder = QScrollArea()
        holder.setWidgetResizable(True)
        holder.setFrameShape(QFrame.Shape.NoFrame)
        holder.setMinimumSize(MIN_DOCK_WIDTH, MIN_DOCK_HEIGHT)
        dock.setWidget(holder)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        neighbour = next((d for d in self.docks if window.dockWidgetArea(d) == area), None)
        window.addDockWidget(area, dock)
        if neighbour is not None:
            window.tabifyDockWidget(neighbour, dock)
            neighbour.raise_()
        self.docks.append(dock)
        if self.view_menu is not None:
            self.view_menu.addAction(dock.toggleViewAction())
        return dock

    def list_in(self, view_menu: QMenu) -> None:
        """Show/hide actions of the docks so far, and of every dock added later, go into this menu."""
        self.view_menu = view_menu
        for dock in self.docks:
            view_menu.addAction(dock.toggleViewAction())

    def restore(self) -> None:
        """Geometry, docks and toolbar as the user left them (call once every dock exists)."""
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is not None:
            self.window.restoreGeometry(geometry)
        if state is not None:
            self.window.restoreState(state)
        else:
            self.apply_default_sizes()

    def apply_default_sizes(self) -> None:
        """First run: side panels as wide as their contents ask (never below the defaults), as long
        as the grid between them keeps GRID_MIN_WIDTH; the grid gets the rest."""
        window = self.window
        self._sized_while_reserved = bool(self._reserved)
        sides = [d for d in self.docks if not d.isFloating()]
        left = [d for d in sides if window.dockWidgetArea(d) == Qt.DockWidgetArea.LeftDockWidgetArea]
        right = [d for d in sides if d not in left]

        def wanted(docks: list[QDockWidget], default: int) -> int:
            return max([default, *(panel_of(d).minimumSizeHint().width() + SCROLLBAR_ROOM for d in docks)])

        left_width = wanted(left, LEFT_DOCK_WIDTH)
        room = window.width() - GRID_MIN_WIDTH - (left_width if any(d.isVisible() for d in left) else 0)
        right_width = max(MIN_DOCK_WIDTH, min(wanted(right, RIGHT_DOCK_WIDTH), room))
        widths = [left_width if d in left else right_width for d in sides]
        window.resizeDocks(sides, widths, Qt.Orientation.Horizontal)

    def save(self) -> None:
        self.settings.setValue("window/geometry", self.window.saveGeometry())
        self.settings.setValue("window/state", self.window.saveState())
        self.settings.sync()
