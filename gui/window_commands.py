"""Every command of the main window as a QAction with its shortcut, placed in the menu bar and the
toolbar, and enabled only when it can do something (a project is open, images are selected).

Actions are added to the window itself too, so their shortcuts work while the menu bar is hidden."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence, QUndoStack
from PySide6.QtWidgets import QMessageBox

from gui import project_files
from gui.team_overlap_dialog import ask_overlap_share
from storage import browse
from storage.catalog import SHORTCUT_KEYS

if TYPE_CHECKING:
    from gui.main_window import MainWindow

EXPORT_MODEL_TAB, EXPORT_DATASET_TAB = 0, 1  # the tabs of gui/export_dialog.ExportDialog

SHORTCUTS = (
    ("1 … 9, 0", "label the selected images with the class of that key (0 is the tenth class)"),
    ("Backspace or Delete", "remove their labels"),
    ("Enter or A", "accept the suggestions for the unlabeled ones (in Review labels: take the suggestion)"),
    ("K in Review labels", "keep the label: it is right, stop asking"),
    ("Double-click a class", "label the selected images with it"),
    ("Right-click an image", "label, open, show in map, find its file"),
    ("Space or double-click", "open the image large"),
    ("← / → in the large view", "previous / next image"),
    ("Ctrl+A", "select all images shown"),
    ("Ctrl+Z / Ctrl+Shift+Z", "undo / redo"),
    ("Ctrl+U / Ctrl+L", "show the unlabeled images / all images"),
    ("F5", "run the filter again"),
    ("Ctrl+I", "import images"),
    ("Ctrl+K", "add a class"),
)


def shortcuts_html() -> str:
    """The shortcuts as a two-column table (tab stops misalign in a message box)."""
    rows = "".join(f"<tr><td style='padding-right:16px'><b>{keys}</b></td><td>{what}</td></tr>"
                   for keys, what in SHORTCUTS)
    return f"<table cellspacing='3'>{rows}</table>"


def toolbar_undo_action(window, stack: QUndoStack, redo: bool) -> QAction:
    """An Undo (Redo) button of fixed width for the toolbar: the step it undoes goes in its tooltip,
    not in its text, so the buttons beside it never jump (the menu's action keeps the shortcut)."""
    name = "Redo" if redo else "Undo"
    action = QAction(name, window)
    action.triggered.connect(stack.redo if redo else stack.undo)
    can_change, text_changed = ((stack.canRedoChanged, stack.redoTextChanged) if redo
                                else (stack.canUndoChanged, stack.undoTextChanged))
    can_change.connect(action.setEnabled)
    text_changed.connect(lambda text: action.setToolTip(f"{name}: {text}" if text else name))
    action.setEnabled(False)
    action.setToolTip(name)
    return action


class WindowCommands:
    """The window's actions, menus and toolbar (built once, in the window's constructor)."""

    def __init__(self, window: MainWindow):
        self.window = window
        self._build_actions()
        self._build_menus()
        self._build_toolbar()

    def _action(self, text: str, slot, shortcuts=(), tip: str = "") -> QAction:
        action = QAction(text, self.window)
        if shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        self.window.addAction(action)  # shortcuts work even while the menu bar is hidden
        return action

    def _build_actions(self) -> None:
        window, projects, labeling = self.window, self.window.projects, self.window.labeling
        standard = QKeySequence.StandardKey
        self.new_action = self._action("&New Project…", projects.new_project, [standard.New])
        self.open_action = self._action("&Open Project…", projects.open_dialog, [standard.Open])
        self.open_team_action = self._action("Open &Team Project…", lambda: window.team.open_dialog(),
                                             tip="Open a project shared in a PostgreSQL database")
        self.demo_action = self._action("Open the &Demo Project", projects.open_demo)
        self.import_action = self._action("&Import Images…", projects.show_import_dialog, ["Ctrl+I"],
                                          "Bring image files or folders into this project")
        self.export_model_action = self._action(
            "Export &Model…", lambda: projects.show_export_dialog(EXPORT_MODEL_TAB),
            tip="Save a trained model as a bundle that runs without Sortlab")
        self.export_dataset_action = self._action(
            "Export &Dataset…", lambda: projects.show_export_dialog(EXPORT_DATASET_TAB),
            tip="Copy the labeled images into a folder per class, with dataset.csv")
        self.backups_action = self._action(
            "Restore a &Backup…", lambda: window.backups.show_restore_dialog(),
            tip="The daily backups of this project: open one side by side, or go back to it")
        self.as_of_action = self._action(
            "Labels As They &Were At…", lambda: window.backups.show_as_of_dialog(),
            tip="Give the selected images (or all) the labels they had at a time you pick")
        self.close_action = self._action("&Close Project", window.close_project, [standard.Close])
        self.quit_action = self._action("&Quit", window.close, [standard.Quit])
        self.undo_action = window.undo_stack.createUndoAction(window, "&Undo")
        self.undo_action.setShortcuts([standard.Undo])
        self.redo_action = window.undo_stack.createRedoAction(window, "&Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.toolbar_undo = toolbar_undo_action(window, window.undo_stack, redo=False)
        self.toolbar_redo = toolbar_undo_action(window, window.undo_stack, redo=True)
        self.select_all_action = self._action("Select &All Shown", window.grid.selectAll, [standard.SelectAll])
        self.accept_action = self._action(
            "&Accept Suggestion", lambda: window.curation.take_suggestion() or labeling.accept_suggestions(),
            ["Return", "Enter", "A"], "Label the unlabeled selected images with the model's suggestion (Enter or A)")
        self.keep_action = self._action(
            "&Keep Label", lambda: window.curation.keep_label(), ["K"],
            "In Review labels: the label is right, stop asking about it (K)")
        self.clear_action = self._action("&Remove Label", lambda: labeling.label_selection(None),
                                         ["Backspace", "Delete"],
                                         "Remove the label of the selected images (Backspace or Delete)")
        self.label_actions = [
            self._action(f"Label as class {key}", lambda key=key: labeling.label_selection_by_key(key), [key])
            for key in SHORTCUT_KEYS
        ]
        self.view_action = self._action("&Open Image", window.open_current_in_viewer, ["Space"],
                                        "Show the image large (Space or double-click)")
        self.refresh_action = self._action("Re&fresh Filter", window.rerun_query, [standard.Refresh, "F5"])
        self.unlabeled_action = self._action("Show &Unlabeled", lambda: window.set_filter(browse.UNLABELED), ["Ctrl+U"])
        self.all_action = self._action("Show A&ll", lambda: window.set_filter(browse.ALL), ["Ctrl+L"])
        self.add_class_action = self._action("Add &Class…", window.classes_panel.add_class_interactively, ["Ctrl+K"],
                                             "Add a class (Ctrl+K)")
        self.rename_source_action = self._action(
            "Rename a &Source…", lambda: projects.rename_source(),
            tip="Name where images came from (a camera, a day, a batch)")
        self.shortcuts_action = self._action("&Keyboard Shortcuts", self._show_shortcuts)
        self.overlap_action = self._action(
            "Team &Overlap Share…", lambda: ask_overlap_share(window, window.project),
            tip="Show a share of the images to everyone who labels, to measure how far labelers agree")

    def _build_menus(self) -> None:
        bar = self.window.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addAction(self.new_action)
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.open_team_action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        self._add(file_menu, self.demo_action, None, self.import_action, self.export_model_action,
                  self.export_dataset_action, None, self.backups_action, None, self.close_action, self.quit_action)

        edit_menu = bar.addMenu("&Edit")
        self._add(edit_menu, self.undo_action, self.redo_action, None, self.select_all_action, None,
                  self.accept_action, self.keep_action, self.clear_action)
        self.label_menu = edit_menu.addMenu("&Label Selection As")
        self.label_menu.aboutToShow.connect(self._fill_label_menu)
        self._add(edit_menu, None, self.as_of_action, None, self.add_class_action, self.rename_source_action,
                  self.overlap_action)

        self.view_menu = bar.addMenu("&View")
        self._add(self.view_menu, self.view_action, self.refresh_action, self.all_action, self.unlabeled_action, None)

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self.shortcuts_action)

    def _build_toolbar(self) -> None:
        toolbar = self.window.addToolBar("Main")
        toolbar.setObjectName("toolbar-main")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self._add(toolbar, self.import_action, None, self.toolbar_undo, self.toolbar_redo, None,
                  self.accept_action, self.clear_action, self.view_action, None, self.add_class_action)

    @staticmethod
    def _add(container, *actions: QAction | None) -> None:
        """Add actions to a menu or toolbar in order; None is a separator."""
        for action in actions:
            container.addSeparator() if action is None else container.addAction(action)

    def update(self, has_project: bool, has_selection: bool, has_model: bool) -> None:
        """Enable what can act now: project commands with a project, labeling with a selection."""
        for action in (self.import_action, self.close_action, self.select_all_action, self.refresh_action,
                       self.unlabeled_action, self.all_action, self.add_class_action, self.export_dataset_action,
                       self.rename_source_action, self.backups_action, self.as_of_action, self.overlap_action):
            action.setEnabled(has_project)
        self.export_model_action.setEnabled(has_project and has_model)
        for action in (self.accept_action, self.keep_action, self.clear_action, self.view_action, *self.label_actions):
            action.setEnabled(has_project and has_selection)

    def _fill_label_menu(self) -> None:
        classes = self.window.classes_panel.classes
        self.label_menu.clear()
        for info in classes:
            action = self.label_menu.addAction(f"{info.name}\t{info.shortcut or ''}")
            action.triggered.connect(lambda _c=False, cid=info.id: self.window.labeling.label_selection(cid))
        if not classes:
            self.label_menu.addAction("(no classes yet)").setEnabled(False)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        paths = project_files.recent_projects(self.window.settings)
        for path in paths:
            action = self.recent_menu.addAction(f"{Path(path).stem}  ({path})")
            action.triggered.connect(lambda _c=False, p=path: self.window.open_project_file(p))
        if not paths:
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    def _show_shortcuts(self) -> None:
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard and mouse", shortcuts_html(),
                          QMessageBox.StandardButton.Close, self.window)
        box.setTextFormat(Qt.TextFormat.RichText)
        self.shortcuts_box = box
        box.show()
