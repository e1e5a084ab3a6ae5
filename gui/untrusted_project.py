"""What the GUI does with a project file Sortlab refused because it holds database objects Sortlab did
not make (``storage.trust``): say so, and offer to remove them (a backup of the file is made first,
``storage.trust_check.strip_foreign``) and open the cleaned project."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtWidgets import QMessageBox, QWidget

from storage.errors import ProjectError
from storage.project import Project, open_project
from storage.trust_check import strip_foreign

REMOVE_AND_OPEN = "Remove them and open"


def ask_to_strip(parent: QWidget, path: str | os.PathLike, refusal: ProjectError) -> QMessageBox:
    """The question (not yet shown): the refusal, and what removing does."""
    box = QMessageBox(QMessageBox.Icon.Warning, "Project not opened", str(refusal).split(" Run '")[0], parent=parent)
    box.setInformativeText(
        "Sortlab can remove what it did not make and then open the project. A copy of the file as it is "
        f"now is kept beside it ({Path(path).name}.before-strip-….bak).")
    box.addButton(REMOVE_AND_OPEN, QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    return box


def strip_and_open(parent: QWidget, path: str | os.PathLike, refusal: ProjectError) -> Project | None:
    """Ask; on yes, back up, remove the foreign objects and open. None when the user declines or it fails."""
    box = ask_to_strip(parent, path, refusal)
    box.exec()
    if box.clickedButton() is None or box.clickedButton().text() != REMOVE_AND_OPEN:
        return None
    try:
        report = strip_foreign(path)
        if report.schema:
            raise ProjectError(f"{Path(path).name} still differs from what Sortlab makes "
                               f"({report.schema[0]['description']}); ask for a fresh copy.")
        return open_project(path)
    except ProjectError as exc:
        QMessageBox.warning(parent, "Cannot open project", str(exc))
        return None
