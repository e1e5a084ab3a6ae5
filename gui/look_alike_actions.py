"""The "Look-alikes" list's two decisions, as buttons in the status bar while the list is shown:

* "Keep only this one": the selected image stays, the other images of its group are removed from
  the project (after a confirmation: removing images cannot be undone);
* "Keep all of them": the group's images are different pictures; the group leaves the list
  (an undoable step: undo lists it again).

The groups come from gui.curation_controller (engine.curation.duplicates), the decisions from
engine.curation.look_alike_review.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QObject
from PySide6.QtGui import QUndoCommand
from PySide6.QtWidgets import QMessageBox, QPushButton

from engine.curation import look_alike_review
from engine.curation.duplicates import DuplicateGroup
from storage.look_alikes import forget_group


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'s' if count != 1 else ''}"


class KeepGroupCommand(QUndoCommand):
    """Keep a look-alike group whole (undo lists it again)."""

    def __init__(self, project, image_ids: Sequence[int], on_kept: Callable[[list[int]], None],
                 on_forgotten: Callable[[], None]):
        super().__init__(f"Keep {plural(len(image_ids), 'look-alike image')}")
        self.project = project
        self.image_ids = [int(i) for i in image_ids]
        self.on_kept = on_kept
        self.on_forgotten = on_forgotten

    def redo(self) -> None:
        look_alike_review.keep_all(self.project, self.image_ids)
        self.on_kept(self.image_ids)

    def undo(self) -> None:
        forget_group(self.project, self.image_ids)
        self.on_forgotten()


class LookAlikeActions(QObject):
    """The two buttons and what they do; ``set_groups`` shows them with the list's groups."""

    def __init__(self, window, show_groups: Callable[[list[DuplicateGroup]], None], rerun: Callable[[], None]):
        super().__init__(window)
        self.window = window
        self._show_groups = show_groups
        self._rerun = rerun
        self.groups: list[DuplicateGroup] = []
        self.keep_one_button = QPushButton("Keep only this one")
        self.keep_one_button.setToolTip("Keep the selected image and remove the other images of its group "
                                        "from the project")
        self.keep_all_button = QPushButton("Keep all of them")
        self.keep_all_button.setToolTip("They are different pictures: keep every image of the selected "
                                        "image's group, and stop listing the group")
        self.keep_one_button.clicked.connect(self.keep_selected)
        self.keep_all_button.clicked.connect(self.keep_group_of_selected)
        for button in (self.keep_one_button, self.keep_all_button):
            button.setVisible(False)
            window.statusBar().addPermanentWidget(button)

    @property
    def project(self):
        return self.window.project

    def set_groups(self, groups: list[DuplicateGroup]) -> None:
        """The groups on screen (none: the buttons go)."""
        self.groups = list(groups)
        for button in (self.keep_one_button, self.keep_all_button):
            button.setVisible(bool(self.groups))

    def group_of(self, image_id: int) -> DuplicateGroup | None:
        return next((g for g in self.groups if image_id in g.image_ids), None)

    def _selected_group(self) -> tuple[int, DuplicateGroup] | None:
        ids = self.window.selected_image_ids()
        group = self.group_of(ids[0]) if len(ids) == 1 else None
        if group is None:
            self.window.show_message("Select one image of a look-alike group first.", 4000)
            return None
        return ids[0], group

    def keep_selected(self) -> bool:
        """Keep the selected image, remove the rest of its group (asks first); True if removed."""
        chosen = self._selected_group()
        if chosen is None or self.project is None:
            return False
        keep_id, group = chosen
        others = len(group.image_ids) - 1
        answer = QMessageBox.question(
            self.window, "Remove look-alikes",
            f"Remove the other {plural(others, 'image')} of this group from the project? Their labels go "
            "with them, and this cannot be undone (the original files on disk are not touched).",
        )
        if answer != QMessageBox.StandardButton.Yes:
            return False
        removed = look_alike_review.keep_only(self.project, group.image_ids, keep_id)
        self.window.undo_stack.clear()  # earlier steps may name the removed images
        self.window.refresh_after_import()  # counts, classes and panels follow the smaller project
        remaining = [g for g in self.groups if g is not group]
        self._show_groups(remaining)
        self.window.show_message(f"Removed {plural(len(removed), 'look-alike image')}; kept the one you chose.", 6000)
        return True

    def keep_group_of_selected(self) -> bool:
        """The selected image's group are different pictures: keep them all (undoable)."""
        chosen = self._selected_group()
        if chosen is None or self.project is None:
            return False
        _, group = chosen
        self.window.undo_stack.push(KeepGroupCommand(self.project, group.image_ids, self._kept, self._rerun))
        return True

    def _kept(self, image_ids: list[int]) -> None:
        """The group leaves the list at once (undo computes the list again)."""
        self._show_groups([g for g in self.groups if sorted(g.image_ids) != sorted(image_ids)])
        self.window.show_message(f"Kept all {plural(len(image_ids), 'image')} of the group.", 4000)
