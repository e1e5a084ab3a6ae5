"""The first-run screen shown while no project is open: the two ways in (the demo, or your own
folder of images), plus New / Open and the recent projects."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QListWidget, QPushButton, QVBoxLayout, QWidget


class WelcomePage(QWidget):
    demo_requested = Signal()
    import_folder_requested = Signal()
    new_requested = Signal()
    open_requested = Signal()
    recent_chosen = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        title = QLabel("<h1>Welcome to Sortlab</h1>")
        intro = QLabel(
            "Teach the computer to sort your pictures: bring in your images, label a few of each kind "
            "with the number keys, and Sortlab trains a classifier on this machine — no internet, no code."
        )
        intro.setWordWrap(True)
        intro.setMaximumWidth(620)

        self.demo_button = QPushButton("Open the demo project")
        self.demo_button.setToolTip("800 handwritten digits from two cameras, partly labeled: try the whole loop.")
        self.import_button = QPushButton("Import a folder of images…")
        self.import_button.setToolTip("Makes a new project from a folder; sub-folders can become classes.")
        for button in (self.demo_button, self.import_button):
            button.setMinimumHeight(44)
            button.setMinimumWidth(260)
        self.import_button.setDefault(True)
        self.new_button = QPushButton("New empty project…")
        self.open_button = QPushButton("Open a project…")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: palette(placeholder-text);")

        self.recent_list = QListWidget()
        self.recent_list.setMaximumHeight(160)
        self.recent_list.itemActivated.connect(lambda item: self.recent_chosen.emit(item.data(Qt.ItemDataRole.UserRole)))
        self.recent_title = QLabel("<b>Recent projects</b>")

        self.demo_button.clicked.connect(self.demo_requested)
        self.import_button.clicked.connect(self.import_folder_requested)
        self.new_button.clicked.connect(self.new_requested)
        self.open_button.clicked.connect(self.open_requested)

        big = QHBoxLayout()
        big.addWidget(self.import_button)
        big.addWidget(self.demo_button)
        big.addStretch(1)
        small = QHBoxLayout()
        small.addWidget(self.new_button)
        small.addWidget(self.open_button)
        small.addStretch(1)

        card = QFrame()
        card.setMaximumWidth(680)
        layout = QVBoxLayout(card)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addSpacing(16)
        layout.addLayout(big)
        layout.addLayout(small)
        layout.addWidget(self.status)
        layout.addSpacing(16)
        layout.addWidget(self.recent_title)
        layout.addWidget(self.recent_list)

        outer = QVBoxLayout(self)
        outer.addStretch(1)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(card)
        row.addStretch(2)
        outer.addLayout(row)
        outer.addStretch(2)

    def set_recent(self, paths: list[str]) -> None:
        self.recent_list.clear()
        for path in paths:
            self.recent_list.addItem(f"{Path(path).stem}    —    {path}")
            self.recent_list.item(self.recent_list.count() - 1).setData(Qt.ItemDataRole.UserRole, path)
        self.recent_title.setVisible(bool(paths))
        self.recent_list.setVisible(bool(paths))

    def set_busy(self, message: str) -> None:
        """While the demo is being built: say so, and keep the buttons from starting a second job."""
        self.status.setText(message)
        for button in (self.demo_button, self.import_button, self.new_button, self.open_button):
            button.setEnabled(not message)
