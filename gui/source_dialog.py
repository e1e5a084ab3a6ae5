"""Renaming a source: imports name them after the folder and the time ("import 2026-12-01 21:40
(folder 'train')"); the user names them what they are (a camera, a day, a batch)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QVBoxLayout,
)

from storage import browse
from storage.errors import ProjectError
from storage.images import rename_source


class RenameSourceDialog(QDialog):
    """Choose a source, type its new name, OK. ``renamed`` holds (old, new) once it was renamed."""

    def __init__(self, project, current: str | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Rename a source")
        self.setMinimumWidth(460)
        self.project = project
        self.renamed: tuple[str, str] | None = None
        self.source_combo = QComboBox()
        for name, count in browse.source_counts(project):
            self.source_combo.addItem(f"{name or '(no source)'}  ({count:,} images)", name)
        if current is not None and self.source_combo.findData(current) >= 0:
            self.source_combo.setCurrentIndex(self.source_combo.findData(current))
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("e.g. kitchen camera, May field trip, batch 3")
        self.source_combo.currentIndexChanged.connect(lambda _i: self._prefill())
        self._prefill()
        intro = QLabel("A source tells where images came from: a camera, a day, a batch. Naming two sources "
                       "alike makes them one.")
        intro.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Source:", self.source_combo)
        form.addRow("New name:", self.name_edit)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Rename")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _prefill(self) -> None:
        self.name_edit.setText(self.source_combo.currentData() or "")
        self.name_edit.selectAll()

    def accept(self) -> None:
        """Rename, then close; a refused name (empty, too long) keeps the dialog open and says why."""
        old = self.source_combo.currentData()
        new = self.name_edit.text()
        if old is None or new.strip() == old:
            super().reject()
            return
        try:
            rename_source(self.project, old, new)
        except ProjectError as exc:
            QMessageBox.warning(self, "Rename a source", str(exc))
            return
        self.renamed = (old, " ".join(new.split()))
        super().accept()
