"""The map's toolbar: the mouse tool (lasso, rectangle, move), Fit, the color mode and Recompute."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QButtonGroup, QComboBox, QHBoxLayout, QPushButton, QToolButton, QWidget

from gui.map_canvas import COLOR_MODES
from gui.map_lasso import TOOLS

TOOL_BUTTONS = {
    "lasso": ("Lasso", "Drag to draw around images (Shift adds to the selection)"),
    "rect": ("Rectangle", "Drag a rectangle around images (Shift adds to the selection)"),
    "move": ("Move", "Drag to move the map; the mouse wheel zooms in every mode"),
}


class MapToolbar(QWidget):
    """Buttons in, choices out as signals; ``show_tool``/``show_color_mode`` follow the map."""

    tool_chosen = Signal(str)  # one of TOOLS
    color_mode_chosen = Signal(str)  # a COLOR_MODES key
    fit_clicked = Signal()
    recompute_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.tool_buttons: dict[str, QToolButton] = {}
        self._tools = QButtonGroup(self)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        for name in TOOLS:
            text, tip = TOOL_BUTTONS[name]
            button = QToolButton(text=text)
            button.setToolTip(tip)
            button.setCheckable(True)
            button.setAutoRaise(True)
            self._tools.addButton(button)
            button.toggled.connect(lambda on, name=name: on and self.tool_chosen.emit(name))
            self.tool_buttons[name] = button
            row.addWidget(button)
        self.tool_buttons[TOOLS[0]].setChecked(True)
        self.fit_button = QToolButton(text="Fit")
        self.fit_button.setToolTip("Show the whole map")
        self.fit_button.setAutoRaise(True)
        self.fit_button.clicked.connect(self.fit_clicked)
        row.addWidget(self.fit_button)
        row.addStretch(1)
        self.color_combo = QComboBox()
        for key, title in COLOR_MODES:
            self.color_combo.addItem(title, key)
        self.color_combo.currentIndexChanged.connect(lambda _i: self.color_mode_chosen.emit(self.color_combo.currentData()))
        row.addWidget(self.color_combo)
        self.recompute_button = QPushButton("Recompute map")
        self.recompute_button.clicked.connect(self.recompute_clicked)
        row.addWidget(self.recompute_button)

    def show_tool(self, tool: str) -> None:
        self.tool_buttons[tool].setChecked(True)

    def show_color_mode(self, mode: str) -> None:
        """Show a mode the map switched to (without announcing it back)."""
        self.color_combo.blockSignals(True)
        self.color_combo.setCurrentIndex(self.color_combo.findData(mode))
        self.color_combo.blockSignals(False)
