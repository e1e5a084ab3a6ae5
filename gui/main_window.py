"""Sortlab's main window: the labeling workspace (filter bar + thumbnail grid + classes panel), the
welcome screen when no project is open, menus, toolbar, status bar and docks for other panels.

Interface for panels docked from other modules (the insight panels use it):
- ``project`` (the open storage Project or None), ``runner`` (QtJobRunner), ``undo_stack``;
- ``add_dock(widget, title, area) -> QDockWidget``;
- signals ``labels_changed(list[int])``, ``project_changed(Project | None)``, ``classes_changed()``;
- ``filter_grid(image_ids, description)`` / ``show_images``: show exactly those images;
- ``select_images(ids)`` / ``select_image(id)``: select them in the grid (revealing them if needed);
- ``make_label_command(ids, class_id, text)``: a QUndoCommand for the shared undo stack;
- ``notify_labels_changed(ids)``: labels were written elsewhere; refresh views;
- ``refresh_predictions_view()``: the active model version changed; reload the grid's predictions,
  model-dependent filters and the viewer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.jobs import JobOutcome
from gui import project_files
from gui.classes_panel import ClassesPanel
from gui.filter_bar import FilterBar
from gui.grid_model import ThumbnailGridModel
from gui.grid_view import ThumbnailGrid
from gui.import_dialog import ImportDialog
from gui.labeling import AcceptSuggestionsCommand, SetLabelCommand
from gui.runner import QtJobRunner
from gui.suggestions import SuggestionRefresher
from gui.viewer import ImageViewer
from gui.welcome import WelcomePage
from storage import browse
from storage.errors import ProjectError
from storage.project import Project, create_project, open_project

PREDICT_JOB = "predict"
MODEL_JOBS = ("train", "suggestions", PREDICT_JOB)
EXPORT_MODEL_TAB, EXPORT_DATASET_TAB = 0, 1  # the tabs of gui/export_dialog.ExportDialog


class MainWindow(QMainWindow):
    labels_changed = Signal(object)  # list of image ids whose labels changed
    project_changed = Signal(object)  # the new Project, or None when closed
    classes_changed = Signal()

    def __init__(self, project: Project | None = None, *, settings: QSettings | None = None,
                 data_dir: Path | None = None, projects_dir: Path | None = None):
        super().__init__()
        self.settings = settings or QSettings(project_files.ORG_NAME, project_files.APP_NAME)
        self.data_dir = Path(data_dir) if data_dir else project_files.demo_dir()
        self.projects_dir = Path(projects_dir) if projects_dir else project_files.default_projects_dir()
        self.project: Project | None = None
        self.runner = QtJobRunner(self)
        self.undo_stack = QUndoStack(self)
        self.viewer: ImageViewer | None = None
        self.import_dialog: ImportDialog | None = None
        self.export_dialog = None
        self._has_model = False  # whether the open project has an active model (set by _refresh_choices)
        self._docks: list[QDockWidget] = []
        self._query = browse.GridQuery()

        self.setWindowTitle("Sortlab")
        self.setAcceptDrops(True)
        self.resize(1320, 860)
        self._build_workspace()
        self._build_actions()
        self._build_menus_and_toolbar()
        self._build_status_bar()
        self.suggestions = SuggestionRefresher(self.runner, self)
        self.suggestions.message.connect(lambda text: self.statusBar().showMessage(text, 5000))
        self.runner.finished.connect(self._job_finished)
        self.runner.progress.connect(self._job_progress)
        self.runner.busy_changed.connect(self._busy_changed)
        self.welcome.set_recent(project_files.recent_projects(self.settings))
        self.classes_dock.setVisible(False)
        self._update_actions()
        if project is not None:
            self.set_project(project)

    # -- construction ---------------------------------------------------------------------------
    def _build_workspace(self) -> None:
        self.welcome = WelcomePage()
        self.welcome.demo_requested.connect(self.open_demo)
        self.welcome.import_folder_requested.connect(self.import_folder_as_project)
        self.welcome.new_requested.connect(self.new_project)
        self.welcome.open_requested.connect(self.open_project_dialog)
        self.welcome.recent_chosen.connect(self.open_project_file)

        self.filter_bar = FilterBar()
        self.filter_bar.query_changed.connect(self.apply_query)
        self.grid_model = ThumbnailGridModel(self)
        self.grid = ThumbnailGrid(self.grid_model)
        self.grid.setAcceptDrops(False)
        self.grid.viewport().setAcceptDrops(False)
        self.grid.open_requested.connect(self.open_viewer)
        self.grid.selectionModel().selectionChanged.connect(lambda *_: self._selection_changed())
        workspace = QWidget()
        layout = QVBoxLayout(workspace)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.filter_bar)
        layout.addWidget(self.grid, 1)
        self.workspace = workspace

        self.stack = QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(workspace)
        self.setCentralWidget(self.stack)

        self.classes_panel = ClassesPanel()
        self.classes_panel.classes_changed.connect(self._classes_edited)
        self.classes_panel.class_deleted.connect(self._class_deleted)
        self.classes_panel.class_activated.connect(lambda class_id: self.label_selection(class_id))
        self.classes_dock = self.add_dock(self.classes_panel, "Classes", Qt.DockWidgetArea.LeftDockWidgetArea)
        self.classes_dock.setMinimumWidth(190)

    def _action(self, text: str, slot, shortcuts=(), tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)  # shortcuts work even while the menu bar is hidden
        return action

    def _build_actions(self) -> None:
        self.new_action = self._action("&New Project…", self.new_project, [QKeySequence.StandardKey.New])
        self.open_action = self._action("&Open Project…", self.open_project_dialog, [QKeySequence.StandardKey.Open])
        self.demo_action = self._action("Open the &Demo Project", self.open_demo)
        self.import_action = self._action("&Import Images…", self.show_import_dialog, ["Ctrl+I"],
                                          "Bring image files or folders into this project")
        self.export_model_action = self._action("Export &Model…", lambda: self.show_export_dialog(EXPORT_MODEL_TAB),
                                                tip="Save a trained model as a bundle that runs without Sortlab")
        self.export_dataset_action = self._action(
            "Export &Dataset…", lambda: self.show_export_dialog(EXPORT_DATASET_TAB),
            tip="Copy the labeled images into a folder per class, with dataset.csv")
        self.close_action = self._action("&Close Project", self.close_project, [QKeySequence.StandardKey.Close])
        self.quit_action = self._action("&Quit", self.close, [QKeySequence.StandardKey.Quit])
        self.undo_action = self.undo_stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcuts([QKeySequence.StandardKey.Undo])
        self.redo_action = self.undo_stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.select_all_action = self._action("Select &All Shown", self.grid.selectAll, [QKeySequence.StandardKey.SelectAll])
        self.accept_action = self._action("&Accept Suggestion", self.accept_suggestions, ["Return", "Enter", "A"],
                                          "Label the selected images with the model's suggestion (Enter or A)")
        self.clear_action = self._action("&Remove Label", lambda: self.label_selection(None), ["0", "Backspace"],
                                         "Remove the label of the selected images (0)")
        self.label_actions = [
            self._action(f"Label as class {key}", lambda key=key: self.label_selection_by_key(key), [key])
            for key in "123456789"
        ]
        self.view_action = self._action("&Open Image", self.open_current_in_viewer, ["Space"],
                                        "Show the image large (Space or double-click)")
        self.refresh_action = self._action("Re&fresh Filter", self.rerun_query, [QKeySequence.StandardKey.Refresh, "F5"])
        self.unlabeled_action = self._action("Show &Unlabeled", lambda: self.set_filter(browse.UNLABELED), ["Ctrl+U"])
        self.all_action = self._action("Show A&ll", lambda: self.set_filter(browse.ALL), ["Ctrl+L"])
        self.add_class_action = self._action("Add &Class…", self.classes_panel.add_class_interactively, ["Ctrl+K"])

    def _build_menus_and_toolbar(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        for action in (self.new_action, self.open_action):
            file_menu.addAction(action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addAction(self.demo_action)
        file_menu.addSeparator()
        file_menu.addAction(self.import_action)
        file_menu.addAction(self.export_model_action)
        file_menu.addAction(self.export_dataset_action)
        file_menu.addSeparator()
        file_menu.addAction(self.close_action)
        file_menu.addAction(self.quit_action)

        edit_menu = bar.addMenu("&Edit")
        for action in (self.undo_action, self.redo_action, None, self.select_all_action, None,
                       self.accept_action, self.clear_action):
            edit_menu.addSeparator() if action is None else edit_menu.addAction(action)
        label_menu = edit_menu.addMenu("&Label Selection As")
        self.label_menu = label_menu
        label_menu.aboutToShow.connect(self._fill_label_menu)
        edit_menu.addSeparator()
        edit_menu.addAction(self.add_class_action)

        self.view_menu = bar.addMenu("&View")
        for action in (self.view_action, self.refresh_action, self.all_action, self.unlabeled_action):
            self.view_menu.addAction(action)
        self.view_menu.addSeparator()
        self.view_menu.addAction(self.classes_dock.toggleViewAction())

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self._action("&Keyboard Shortcuts", self._show_shortcuts))

        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("toolbar-main")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for action in (self.import_action, None, self.undo_action, self.redo_action, None,
                       self.accept_action, self.clear_action, self.view_action, None, self.add_class_action):
            toolbar.addSeparator() if action is None else toolbar.addAction(action)

    def _build_status_bar(self) -> None:
        self.counts_label = QLabel()
        self.job_label = QLabel()
        self.job_progress = QProgressBar()
        self.job_progress.setRange(0, 1000)
        self.job_progress.setMaximumWidth(180)
        self.job_progress.setVisible(False)
        status = self.statusBar()
        status.addPermanentWidget(self.job_label)
        status.addPermanentWidget(self.job_progress)
        status.addPermanentWidget(self.counts_label)

    # -- docks (for other panels) ---------------------------------------------------------------
    def add_dock(self, widget: QWidget, title: str, area=Qt.DockWidgetArea.RightDockWidgetArea) -> QDockWidget:
        """Dock a panel; panels added to the same side share it as tabs. Returns the QDockWidget."""
        dock = QDockWidget(title, self)
        dock.setObjectName("dock-" + re.sub(r"\W+", "-", title.lower()).strip("-"))
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        neighbour = next((d for d in self._docks if self.dockWidgetArea(d) == area), None)
        self.addDockWidget(area, dock)
        if neighbour is not None:
            self.tabifyDockWidget(neighbour, dock)
            neighbour.raise_()
        self._docks.append(dock)
        if hasattr(self, "view_menu"):
            self.view_menu.addAction(dock.toggleViewAction())
        return dock

    # -- projects -------------------------------------------------------------------------------
    def set_project(self, project: Project) -> None:
        """Show this (already open) project in the workspace."""
        if self.project is not None and self.project is not project:
            self.close_project()
        self.project = project
        self.undo_stack.clear()
        self.grid_model.set_project(project)
        self.classes_panel.set_project(project)
        self.suggestions.set_project(project)
        self._refresh_choices()
        self.stack.setCurrentWidget(self.workspace)
        self.classes_dock.setVisible(True)
        self.apply_query(self.filter_bar.query())
        self.refresh_counts()
        self.welcome.set_recent(project_files.remember_project(self.settings, project.path))
        self._update_actions()
        self.grid.setFocus()
        self.project_changed.emit(project)

    def open_project_file(self, path: str | os.PathLike) -> bool:
        try:
            project = open_project(path)
        except ProjectError as exc:
            QMessageBox.warning(self, "Cannot open project", str(exc))
            return False
        self.set_project(project)
        return True

    def open_project_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a Sortlab project", str(self._start_dir()),
                                              "Sortlab projects (*.sortlab)")
        if path:
            self.open_project_file(path)

    def new_project(self) -> Project | None:
        path, _ = QFileDialog.getSaveFileName(self, "New Sortlab project", str(self._start_dir() / "My images.sortlab"),
                                              "Sortlab projects (*.sortlab)")
        if not path:
            return None
        if not path.endswith(".sortlab"):
            path += ".sortlab"
        return self.create_project_file(Path(path))

    def create_project_file(self, path: Path) -> Project | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            project = create_project(path)
        except (ProjectError, OSError) as exc:
            QMessageBox.warning(self, "Cannot create project", str(exc))
            return None
        self.set_project(project)
        return project

    def close_project(self) -> None:
        if self.project is None:
            return
        for window in (self.viewer, self.import_dialog, self.export_dialog):  # they work on this project
            if window is not None:
                window.close()
        self.runner.cancel_all()
        project = self.project
        self.project = None
        self.undo_stack.clear()
        self.grid_model.set_project(None)
        self.classes_panel.set_project(None)
        self.suggestions.set_project(None)
        project.close()
        self.stack.setCurrentWidget(self.welcome)
        self.classes_dock.setVisible(False)
        self.statusBar().clearMessage()
        self.welcome.set_recent(project_files.recent_projects(self.settings))
        self.refresh_counts()
        self._update_actions()
        self.project_changed.emit(None)

    def _start_dir(self) -> Path:
        return self.projects_dir if self.projects_dir.exists() else Path.home()

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        paths = project_files.recent_projects(self.settings)
        for path in paths:
            action = self.recent_menu.addAction(f"{Path(path).stem}  ({path})")
            action.triggered.connect(lambda _c=False, p=path: self.open_project_file(p))
        if not paths:
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    # -- demo and first import ------------------------------------------------------------------
    def demo_path(self) -> Path:
        return self.data_dir / project_files.DEMO_FILE

    def open_demo(self) -> None:
        """Open the demo project, building it in the background the first time."""
        path = self.demo_path()
        if path.exists():
            self.open_project_file(path)
            return
        from engine.demo import build_demo_project

        self.data_dir.mkdir(parents=True, exist_ok=True)
        building = path.with_name("Demo-building.sortlab")
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)
        self.welcome.set_busy("Building the demo project (a few seconds, only the first time)…")
        self.demo_action.setEnabled(False)

        def done(outcome: JobOutcome) -> None:
            self.welcome.set_busy("")
            self.demo_action.setEnabled(True)
            if outcome.status != "done":
                QMessageBox.warning(self, "Demo project", f"The demo could not be built: {outcome.error or 'cancelled'}")
                return
            os.replace(building, path)
            self.open_project_file(path)

        self.runner.submit("demo", build_demo_project, str(building), on_done=done)

    def import_folder_as_project(self, folder: str | None = None) -> None:
        """Welcome-screen path: a new project named after a folder, then the import dialog for it."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Choose a folder of images", str(Path.home()))
        if not folder:
            return
        path = project_files.free_project_path(self.projects_dir, Path(folder).name or "Images")
        if self.create_project_file(path) is not None:
            self.show_import_dialog([folder])

    def show_import_dialog(self, paths: list[str] | None = None) -> ImportDialog | None:
        if self.project is None:  # dropped on the welcome screen: a new project named after the folder
            if paths and Path(paths[0]).is_dir():
                self.import_folder_as_project(paths[0])
            return self.import_dialog
        current = self.import_dialog
        if current is not None and current.isVisible():
            if current.running:  # one import at a time: the new files wait until this one ends
                if paths:
                    self.statusBar().showMessage("An import is running. Drop those files again once it has finished.",
                                                 6000)
                current.raise_()
                return current
            if current.accepts_paths:  # not started yet: the new files join the list
                current.add_paths(paths or [])
                current.raise_()
                return current
            current.close()  # finished (its Import button is off): the new files get a fresh dialog
        dialog = ImportDialog(self.project, self.runner, paths, self)
        dialog.finished_import.connect(self._import_finished)
        self.import_dialog = dialog
        dialog.show()
        return dialog

    def refresh_after_import(self) -> None:
        self.classes_panel.refresh()
        self._refresh_choices()
        self.rerun_query()
        self.refresh_counts()
        self.classes_changed.emit()

    def _import_finished(self, report) -> None:
        self.refresh_after_import()
        if report is not None and getattr(report, "imported", 0):
            self.predict_new_images()

    def predict_new_images(self) -> bool:
        """When a model exists, give the images it has no prediction for one, in the background
        (after an import: new images get suggestions). The grid repaints when the job ends."""
        if self.project is None or browse.active_model_version(self.project) is None:
            return False
        from engine.predicting import refresh_if_model

        self.statusBar().showMessage("Adding suggestions for the new images…", 4000)
        self.runner.submit(PREDICT_JOB, refresh_if_model, self.project, on_done=self._new_images_predicted)
        return True

    def _new_images_predicted(self, outcome: JobOutcome) -> None:
        if outcome.status == "failed":
            self.statusBar().showMessage(f"The new images got no suggestions: {outcome.error}", 10_000)
        elif outcome.status == "done" and getattr(outcome.result, "predicted", 0):
            self.statusBar().showMessage(f"Suggestions added for {outcome.result.predicted:,} new images.", 5000)

    def show_export_dialog(self, tab: int = EXPORT_MODEL_TAB):
        """The export dialog on its model (or dataset) tab; returns it (None without a project)."""
        if self.project is None:
            return None
        from gui.export_dialog import ExportDialog

        if self.export_dialog is not None:
            self.export_dialog.close()
        dialog = ExportDialog(self.project, self.runner, self)
        if dialog.tabs.isTabEnabled(tab):
            dialog.tabs.setCurrentIndex(tab)
        self.export_dialog = dialog
        dialog.show()
        return dialog

    # -- drag and drop --------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.show_import_dialog(paths)

    # -- filtering ------------------------------------------------------------------------------
    def apply_query(self, query: browse.GridQuery) -> None:
        """Run a filter as one SQL query and show its ids in the grid."""
        self._query = query
        if self.project is None:
            self.grid_model.set_ids([])
            return
        self.grid_model.model_version = browse.active_model_version(self.project)
        ids = browse.filtered_image_ids(self.project, query, self.grid_model.model_version)
        self.grid_model.set_ids(ids)
        total, _labeled = browse.image_and_label_counts(self.project)
        self.filter_bar.set_counts(len(ids), total)
        self._selection_changed()

    def rerun_query(self) -> None:
        self.apply_query(self.filter_bar.query())

    def set_filter(self, kind: str, class_id: int | None = None, source: str | None = None) -> None:
        self.filter_bar.set_query(browse.GridQuery(kind=kind, class_id=class_id, source=source,
                                                   sort=self.filter_bar.query().sort))

    def filter_grid(self, image_ids, description: str = "") -> None:
        """Show exactly these images (e.g. a confusion-matrix cell), as a "chosen images" filter."""
        self.filter_bar.show_chosen(list(image_ids), description or f"{len(image_ids)} chosen images")

    show_images = filter_grid

    def select_images(self, image_ids) -> None:
        """Select these images in the grid; when some are filtered out, show all images first."""
        wanted = [int(i) for i in image_ids]
        rows = [self.grid_model.row_of(i) for i in wanted]
        if any(row is None for row in rows) and self.filter_bar.query().kind != browse.ALL:
            self.set_filter(browse.ALL)
            rows = [self.grid_model.row_of(i) for i in wanted]
        self.grid.select_rows([row for row in rows if row is not None])

    def select_image(self, image_id: int) -> None:
        self.select_images([image_id])

    def _refresh_choices(self) -> None:
        if self.project is None:
            return
        has_model = browse.active_model_version(self.project) is not None
        self._has_model = has_model
        self.export_model_action.setEnabled(has_model)
        self.filter_bar.set_choices(self.classes_panel.classes, browse.source_counts(self.project), has_model)
        self.grid.tile_delegate.set_classes(self.classes_panel.classes)

    # -- labeling -------------------------------------------------------------------------------
    def selected_image_ids(self) -> list[int]:
        return self.grid.selected_image_ids()

    def make_label_command(self, image_ids, class_id: int | None, text: str | None = None) -> SetLabelCommand:
        ids = [int(i) for i in image_ids]
        if text is None:
            name = next((c.name for c in self.classes_panel.classes if c.id == class_id), None)
            count = f"{len(ids)} image{'s' if len(ids) != 1 else ''}"
            text = f"Label {count} “{name}”" if class_id is not None else f"Remove label of {count}"
        return SetLabelCommand(self.project, ids, class_id, text, on_changed=self.notify_labels_changed)

    def label_images(self, image_ids, class_id: int | None) -> None:
        if self.project is None or not image_ids:
            return
        self.undo_stack.push(self.make_label_command(image_ids, class_id))

    def label_selection(self, class_id: int | None) -> None:
        ids = self.selected_image_ids()
        self.label_images(ids, class_id)
        if len(ids) == 1:
            self._advance()

    def label_selection_by_key(self, key: str) -> None:
        self.apply_label_key(self.selected_image_ids(), key, advance=True)

    def apply_label_key(self, image_ids: list[int], key: str, advance: bool = False) -> bool:
        """A labeling key (1-9, 0, 'accept'/'a') for these images; False if the key means nothing."""
        if self.project is None or not image_ids:
            return False
        if key in ("a", "accept"):
            return self.accept_suggestions(image_ids, advance=advance)
        if key == "0":
            self.label_images(image_ids, None)
        else:
            info = self.classes_panel.class_for_key(key)
            if info is None:
                if key in "123456789" and key:
                    self.statusBar().showMessage(f"No class has key {key}. Add classes in the Classes panel.", 4000)
                return False
            self.label_images(image_ids, info.id)
        if advance and len(image_ids) == 1:
            self._advance()
        return True

    def accept_suggestions(self, image_ids=None, advance: bool = True) -> bool:
        """Label images with the model's suggestion for each (those without one are left alone)."""
        ids = self.selected_image_ids() if image_ids is None else list(image_ids)
        if self.project is None or not ids:
            return False
        version = browse.active_model_version(self.project)
        assignments = browse.predicted_classes(self.project, ids, version) if version is not None else {}
        if not assignments:
            self.statusBar().showMessage("No suggestions for these images yet: train a model first.", 4000)
            return False
        count = f"{len(assignments)} suggestion{'s' if len(assignments) != 1 else ''}"
        self.undo_stack.push(AcceptSuggestionsCommand(self.project, assignments, f"Accept {count}",
                                                      on_changed=self.notify_labels_changed))
        if advance and len(ids) == 1:
            self._advance()
        return True

    def _advance(self) -> None:
        """After labeling one image, move on to the next: labeling a run is one key per image."""
        current = self.grid.currentIndex()
        if current.isValid() and current.row() + 1 < self.grid_model.rowCount():
            self.grid.select_rows([current.row() + 1])

    def notify_labels_changed(self, image_ids) -> None:
        ids = [int(i) for i in image_ids]
        self.grid_model.refresh_tiles(ids)
        self.classes_panel.refresh()
        self.refresh_counts()
        if self.viewer is not None and self.viewer.isVisible():
            self.viewer.refresh_facts()
        self.suggestions.labels_changed()
        self.labels_changed.emit(ids)

    # -- viewer ---------------------------------------------------------------------------------
    def open_current_in_viewer(self) -> None:
        index = self.grid.currentIndex()
        rows = self.grid.selected_rows()
        row = index.row() if index.isValid() else (int(rows[0]) if len(rows) else -1)
        if row >= 0:
            self.open_viewer(row)

    def open_viewer(self, row: int) -> ImageViewer | None:
        if self.project is None or not (0 <= row < self.grid_model.rowCount()):
            return None
        if self.viewer is not None:
            self.viewer.close()
        viewer = ImageViewer(self.grid_model, row, lambda: self.classes_panel.classes,
                             lambda ids, key: self.apply_label_key(ids, key), self)
        viewer.row_changed.connect(lambda r: self.grid.select_rows([r]))
        viewer.finished.connect(lambda _result: self.grid.setFocus())
        self.viewer = viewer
        self.grid.select_rows([row])
        viewer.show()
        return viewer

    # -- status ---------------------------------------------------------------------------------
    def refresh_counts(self) -> None:
        if self.project is None:
            self.setWindowTitle("Sortlab")
            self.counts_label.setText("No project open")
            return
        images, labeled = browse.image_and_label_counts(self.project)
        self.setWindowTitle(f"{self.project.name} — {images:,} images, {labeled:,} labeled — Sortlab")
        self.counts_label.setText(
            f"<b>{self.project.name}</b>: {images:,} images · {labeled:,} labeled · {images - labeled:,} unlabeled")

    def _selection_changed(self) -> None:
        count = len(self.grid.selected_rows()) if self.project is not None else 0
        if count:
            self.statusBar().showMessage(f"{count:,} selected")
        else:
            self.statusBar().clearMessage()
        self._update_actions()

    def _update_actions(self) -> None:
        has_project = self.project is not None
        has_selection = has_project and bool(self.grid.selectionModel().hasSelection())
        for action in (self.import_action, self.close_action, self.select_all_action, self.refresh_action,
                       self.unlabeled_action, self.all_action, self.add_class_action, self.export_dataset_action):
            action.setEnabled(has_project)
        self.export_model_action.setEnabled(has_project and self._has_model)
        for action in (self.accept_action, self.clear_action, self.view_action, *self.label_actions):
            action.setEnabled(has_selection)

    def _fill_label_menu(self) -> None:
        self.label_menu.clear()
        for info in self.classes_panel.classes:
            action = self.label_menu.addAction(f"{info.name}\t{info.shortcut or ''}")
            action.triggered.connect(lambda _c=False, cid=info.id: self.label_selection(cid))
        if not self.classes_panel.classes:
            self.label_menu.addAction("(no classes yet)").setEnabled(False)

    def _class_deleted(self, _class_id: int, name: str) -> None:
        """Older label commands could put back labels of the deleted class: drop the undo history."""
        had_history = self.undo_stack.count() > 0
        self.undo_stack.clear()
        if had_history:
            self.statusBar().showMessage(
                f"Class “{name}” deleted. Its images are unlabeled now; the undo history was cleared.", 8000)

    def _classes_edited(self) -> None:
        self._refresh_choices()
        self.grid_model.refresh_tiles()
        self.refresh_counts()
        self.classes_changed.emit()

    # -- jobs -----------------------------------------------------------------------------------
    def _job_progress(self, name: str, fraction: float, message: str) -> None:
        self.job_progress.setVisible(True)
        self.job_progress.setValue(int(fraction * 1000))
        self.job_label.setText(message[:80] if message else name)

    def _busy_changed(self, busy: bool) -> None:
        if not busy:
            self.job_progress.setVisible(False)
            self.job_label.setText("")

    def _job_finished(self, name: str, outcome: JobOutcome) -> None:
        if self.project is None or name not in MODEL_JOBS or outcome.status != "done":
            return
        # New predictions while the user labels: repaint in place, never reshuffle the grid under them.
        self.refresh_predictions_view(rerun_filter=False)

    def refresh_predictions_view(self, rerun_filter: bool = True) -> None:
        """The active model changed (another version picked in the model report, one trained or
        deleted): reload the grid's model version, tiles, filter choices and the viewer. With
        ``rerun_filter``, a filter or sort that depends on the model (suggested as, disagrees,
        unsure, by confidence) runs again; other filters keep their rows, selection and scroll."""
        if self.project is None:
            return
        self._refresh_choices()  # without a model, the filter bar drops the model filters
        query = self.filter_bar.query()
        depends_on_model = query.kind in browse.NEEDS_MODEL or query.sort == browse.CONFIDENCE
        if query != self._query or (rerun_filter and depends_on_model):
            self.apply_query(query)
        self.grid_model.refresh_tiles()  # re-reads the active version and repaints every tile
        if self.viewer is not None and self.viewer.isVisible():
            self.viewer.refresh_facts()

    # -- window state ---------------------------------------------------------------------------
    def restore_layout(self) -> None:
        """Put geometry, docks and toolbar back as the user left them (call after all docks exist)."""
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)
        else:
            self.apply_default_dock_sizes()
        self.classes_dock.setVisible(self.project is not None)

    def apply_default_dock_sizes(self) -> None:
        """First run: narrow side panels so the grid gets most of the window."""
        sides = [d for d in self._docks if not d.isFloating()]
        widths = [210 if self.dockWidgetArea(d) == Qt.DockWidgetArea.LeftDockWidgetArea else 400 for d in sides]
        self.resizeDocks(sides, widths, Qt.Orientation.Horizontal)

    def save_layout(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.sync()

    def _show_shortcuts(self) -> None:
        QMessageBox.information(self, "Keyboard shortcuts", (
            "1–9\tlabel the selected images with that class\n0 or Backspace\tremove the label\n"
            "Enter or A\taccept the suggestion\nSpace\topen the image large\n←/→ in the viewer\tprevious / next\n"
            "Ctrl+A\tselect all shown\nCtrl+Z / Ctrl+Shift+Z\tundo / redo\nCtrl+U\tshow unlabeled\n"
            "F5\trun the filter again\nCtrl+I\timport images"))

    def closeEvent(self, event) -> None:
        if self.runner.busy:
            answer = QMessageBox.question(
                self, "Quit Sortlab", "A job is still running. Stop it and quit? Everything finished so far is saved.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.save_layout()
        self.runner.cancel_all()
        self.close_project()
        self.grid_model.shutdown()
        self.runner.shutdown()
        super().closeEvent(event)

