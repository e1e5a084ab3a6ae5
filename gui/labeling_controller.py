"""What a labeling key does: label the selection (1-9, then 0 for the tenth class: the keyboard's
number row), remove its label (Backspace or Delete), accept the model's suggestions (Enter or A),
each as one step of the shared undo stack, then move on to the next image when one was labeled (one
key per image labels a run of images)."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject
from PySide6.QtGui import QUndoStack

from gui.classes_panel import ClassesPanel
from gui.grid_view import ThumbnailGrid
from gui.labeling import (
    AcceptSuggestionsCommand,
    ChangedCallback,
    SetLabelCommand,
    accept_text,
    count_text,
    label_text,
)
from storage import browse, modelstore
from storage.catalog import SHORTCUT_KEYS, label_states

ACCEPT_KEYS = ("a", "accept")
CLEAR_KEY = "clear"  # what Backspace and Delete send
CLASS_KEYS = SHORTCUT_KEYS


class LabelingController(QObject):
    """Labels images of the open project through undoable commands.

    ``on_changed(ids)`` runs after every write, undo and redo (the window refreshes its views);
    ``show_message(text, ms)`` says in the status bar why a key did nothing."""

    def __init__(self, grid: ThumbnailGrid, classes: ClassesPanel, undo_stack: QUndoStack,
                 on_changed: ChangedCallback, show_message: Callable[[str, int], None], parent=None):
        super().__init__(parent)
        self.project = None
        self.grid = grid
        self.classes = classes
        self.undo_stack = undo_stack
        self.on_changed = on_changed
        self.show_message = show_message

    def set_project(self, project) -> None:
        """Another project (or none): the old project's undo history cannot apply to it."""
        self.project = project
        self.undo_stack.clear()

    def make_label_command(self, image_ids, class_id: int | None) -> SetLabelCommand:
        """The one label command of the workspace (the grid, the viewer and the map push it),
        worded by ``label_text`` so that every view's steps read alike in the undo history."""
        ids = [int(i) for i in image_ids]
        name = next((c.name for c in self.classes.classes if c.id == class_id), "?") if class_id is not None else None
        return SetLabelCommand(self.project, ids, class_id, label_text(len(ids), name), on_changed=self.on_changed)

    def label_images(self, image_ids, class_id: int | None) -> None:
        if self.project is None or not image_ids:
            return
        self.undo_stack.push(self.make_label_command(image_ids, class_id))

    def label_selection(self, class_id: int | None) -> None:
        ids = self.grid.selected_image_ids()
        self.label_images(ids, class_id)
        if len(ids) == 1:
            self.advance()

    def label_selection_by_key(self, key: str) -> None:
        self.apply_key(self.grid.selected_image_ids(), key, advance=True)

    def apply_key(self, image_ids: list[int], key: str, advance: bool = False) -> bool:
        """A labeling key (a class key 1-9 or 0, 'clear', 'accept'/'a') for these images; False if
        the key means nothing."""
        if self.project is None or not image_ids:
            return False
        if key in ACCEPT_KEYS:
            return self.accept_suggestions(image_ids, advance=advance)
        if key == CLEAR_KEY:
            self.label_images(image_ids, None)
        else:
            info = self.classes.class_for_key(key)
            if info is None:
                if key and key in CLASS_KEYS:
                    self.show_message(f"No class has key {key}. Add classes in the Classes panel.", 4000)
                return False
            self.label_images(image_ids, info.id)
        if advance and len(image_ids) == 1:
            self.advance()
        return True

    def accept_suggestions(self, image_ids=None, advance: bool = True) -> bool:
        """Label the unlabeled ones among these images with the model's suggestion for each, and say
        how many that was (images already labeled keep their label; those without a suggestion are
        left alone)."""
        ids = self.grid.selected_image_ids() if image_ids is None else list(image_ids)
        if self.project is None or not ids:
            return False
        version = modelstore.active_version(self.project)
        suggested = browse.predicted_classes(self.project, ids, version) if version is not None else {}
        if not suggested:
            self.show_message("No suggestions for these images yet: train a model first.", 4000)
            return False
        labeled = {state.image_id for state in label_states(self.project, suggested) if state.class_id is not None}
        assignments = {i: c for i, c in suggested.items() if i not in labeled}
        already = f" ({len(labeled):,} already labeled)" if labeled else ""
        if not assignments:
            self.show_message(f"Nothing to accept: {'this image is' if len(labeled) == 1 else 'these images are'} "
                              "already labeled. Press a class key to change a label.", 5000)
            return False
        self.undo_stack.push(AcceptSuggestionsCommand(self.project, assignments, accept_text(len(assignments)),
                                                      on_changed=self.on_changed))
        self.show_message(f"Accepted {count_text(len(assignments), 'suggestion')}{already}.", 6000)
        if advance and len(ids) == 1:
            self.advance()
        return True

    def advance(self) -> None:
        """After labeling one image, select the next: labeling a run is one key per image."""
        current = self.grid.currentIndex()
        if current.isValid() and current.row() + 1 < self.grid.grid_model.rowCount():
            self.grid.select_rows([current.row() + 1])

    def class_deleted(self, _class_id: int, name: str) -> None:
        """Older label commands could put back labels of the deleted class: drop the undo history."""
        had_history = self.undo_stack.count() > 0
        self.undo_stack.clear()
        if had_history:
            self.show_message(f"Class “{name}” deleted. Its images are unlabeled now; the undo history was cleared.",
                              8000)
