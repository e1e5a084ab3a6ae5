"""What the grid area says when it has no tile to show: how to bring images in (a new project), or
why the filter shows nothing and how to see every image again."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from storage import browse
from storage.catalog import ClassInfo


def empty_filter_reason(query: browse.GridQuery, classes: list[ClassInfo]) -> str:
    """Why this filter shows no image, in words that say what to do next."""
    name = next((c.name for c in classes if c.id == query.class_id), "this class")
    key = next((c.shortcut for c in classes if c.id == query.class_id and c.shortcut), None)
    reasons = {
        browse.UNLABELED: "Every image is labeled. Import more images, or check the labels with "
                          "“Label disagrees with suggestion”.",
        browse.LABELED_AS: f"No image is labeled “{name}” yet: select images and press "
                           + (f"{key}." if key else "its key, or double-click the class."),
        browse.FROM_SOURCE: "No image comes from this source any more.",
        browse.PREDICTED_AS: f"The model suggests “{name}” for no image.",
        browse.DISAGREES: "Every labeled image agrees with the model's suggestion.",
        browse.LOW_CONFIDENCE: f"The model is at least {query.threshold:.0%} sure about every image.",
        browse.CHOSEN: "None of the chosen images is in the project any more.",
    }
    return reasons.get(query.kind, "No image matches this filter.")


class EmptyGridMessage(QWidget):
    """Shown instead of an empty grid; ``import_requested`` and ``show_all_requested`` come from
    its buttons. Drops land on the main window, so images can be dropped here too."""

    import_requested = Signal()
    show_all_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAutoFillBackground(True)
        self.title = QLabel()
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title.setWordWrap(True)
        self.detail = QLabel()
        self.detail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.detail.setWordWrap(True)
        self.detail.setMaximumWidth(520)
        self.detail.setStyleSheet("color: palette(placeholder-text);")
        self.import_button = QPushButton("Import Images…")
        self.import_button.clicked.connect(self.import_requested)
        self.all_button = QPushButton("Show all images")
        self.all_button.clicked.connect(self.show_all_requested)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.import_button)
        buttons.addWidget(self.all_button)
        buttons.addStretch(1)
        detail_row = QHBoxLayout()
        detail_row.addStretch(1)
        detail_row.addWidget(self.detail)
        detail_row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addWidget(self.title)
        layout.addLayout(detail_row)
        layout.addSpacing(8)
        layout.addLayout(buttons)
        layout.addStretch(2)

    def show_empty_project(self) -> None:
        self.title.setText("<h2>Drop images here or Import…</h2>")
        self.detail.setText("Drag image files or folders from your file manager onto this window, or choose "
                            "Import Images… (Ctrl+I). A folder with a sub-folder per kind of image can label "
                            "them as it imports.")
        self.import_button.setVisible(True)
        self.all_button.setVisible(False)

    def show_empty_filter(self, description: str, reason: str) -> None:
        self.title.setText(f"<h3>No images match “{description}”</h3>")
        self.detail.setText(reason)
        self.import_button.setVisible(False)
        self.all_button.setVisible(True)
