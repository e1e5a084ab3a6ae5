"""Edit > Team Overlap Share…: the share of images shown to everyone who labels (storage.team_overlap),
so that the model report can say how far labelers agree. Owners set it; in a team project the
database refuses anyone else, and the user reads why."""

from __future__ import annotations

from PySide6.QtWidgets import QInputDialog, QMessageBox, QWidget

from storage.errors import ProjectError
from storage.team_overlap import describe_share, overlap_share, set_overlap_share

TITLE = "Team Overlap Share"
PROMPT = ("Share of the images shown to everyone who labels, even when a teammate labeled them already,\n"
          "so that the report can compare your labels (percent; 0 turns it off):")


def ask_overlap_share(parent: QWidget, project) -> float | None:
    """Ask for the share and store it; returns the new share, or None when cancelled or refused."""
    if project is None:
        return None
    percent, ok = QInputDialog.getDouble(parent, TITLE, PROMPT, overlap_share(project) * 100, 0.0, 100.0, 1)
    if not ok:
        return None
    try:
        share = set_overlap_share(project, percent / 100)
    except (ProjectError, ValueError) as exc:
        QMessageBox.warning(parent, TITLE, str(exc))
        return None
    show_message = getattr(parent, "show_message", None)
    if show_message is not None:
        show_message(describe_share(share), 8000)
    return share
