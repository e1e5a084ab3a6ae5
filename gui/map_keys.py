"""The map's keyboard: with points selected, a number key labels them and Esc clears the selection,
even though the main window has shortcuts on the same keys (the grid's 1-9)."""

from __future__ import annotations

from typing import Protocol

from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QKeyEvent


class KeyedView(Protocol):
    def handles_key(self, event: QKeyEvent) -> bool: ...

    def keyPressEvent(self, event: QKeyEvent) -> None: ...


class MapKeyFilter(QObject):
    """Installed on the map and its canvas: keys the map handles never reach a window shortcut."""

    def __init__(self, view: QObject):
        super().__init__(view)
        self.view: KeyedView = view

    def eventFilter(self, obj, event):
        if event.type() in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress):
            if self.view.handles_key(event):
                event.accept()
                if event.type() == QEvent.Type.KeyPress:
                    self.view.keyPressEvent(event)
                return True
        return False
