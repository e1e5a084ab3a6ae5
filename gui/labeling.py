"""Undoable label changes. Each command writes to the project the moment it is pushed (redo) and
on undo puts back exactly the labels the images had, so nothing is lost if the app is killed.

The words of the undo history live here too (``label_text``, ``accept_text``), so the grid, the
viewer and the map, which push the same commands, read alike in Edit > Undo."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtGui import QUndoCommand

from storage.catalog import LabelState, label_states, restore_labels, set_labels, set_labels_by_class

ChangedCallback = Callable[[list[int]], None]


def count_text(count: int, noun: str) -> str:
    """Counts as the status bar and the undo history say them: 1 image, 3 images."""
    return f"{count:,} {noun}{'s' if count != 1 else ''}"


def label_text(count: int, class_name: str | None) -> str:
    """The undo history's words for labeling ``count`` images (class_name None: removing labels)."""
    if class_name is None:
        return f"Remove the label of {count_text(count, 'image')}"
    return f"Label {count_text(count, 'image')} as “{class_name}”"


def accept_text(count: int) -> str:
    return f"Accept {count_text(count, 'suggestion')}"


class SetLabelCommand(QUndoCommand):
    """Give images one class (or, with class_id None, remove their labels)."""

    def __init__(self, project, image_ids: Sequence[int], class_id: int | None, text: str,
                 on_changed: ChangedCallback | None = None, origin: str = "manual"):
        super().__init__(text)
        self.project = project
        self.image_ids = [int(i) for i in image_ids]
        self.class_id = class_id
        self.origin = origin
        self.on_changed = on_changed
        self.before: list[LabelState] | None = None
        self.after: list[LabelState] | None = None

    def redo(self) -> None:
        if self.after is None:
            self.before = set_labels(self.project, self.image_ids, self.class_id, self.origin)
        else:  # redo restores the very labels (times included) the first run wrote
            restore_labels(self.project, self.after)
        self._notify()

    def undo(self) -> None:
        self.after = label_states(self.project, self.image_ids)
        restore_labels(self.project, self.before or [])
        self._notify()

    def _notify(self) -> None:
        if self.on_changed is not None:
            self.on_changed(self.image_ids)


class AcceptSuggestionsCommand(QUndoCommand):
    """Label each image with the class the model suggests for it (origin 'suggestion')."""

    def __init__(self, project, assignments: dict[int, int], text: str, on_changed: ChangedCallback | None = None):
        super().__init__(text)
        self.project = project
        self.assignments = {int(k): int(v) for k, v in assignments.items()}
        self.on_changed = on_changed
        self.before: list[LabelState] | None = None
        self.after: list[LabelState] | None = None

    def redo(self) -> None:
        if self.after is None:
            self.before = set_labels_by_class(self.project, self.assignments, origin="suggestion")
        else:
            restore_labels(self.project, self.after)
        self._notify()

    def undo(self) -> None:
        self.after = label_states(self.project, list(self.assignments))
        restore_labels(self.project, self.before or [])
        self._notify()

    def _notify(self) -> None:
        if self.on_changed is not None:
            self.on_changed(list(self.assignments))
