"""Sortlab's main window: the labeling workspace (filter bar + thumbnail grid, or what to do when
the grid has nothing to show + classes panel), the welcome screen when no project is open, and the
status bar; its commands (gui/window_commands.py), project files and dialogs
(gui/project_controller.py), labeling keys (gui/labeling_controller.py), the tiles' right-click
menu (gui/tile_menu.py), the status line (gui/status_line.py) and docks (gui/dock_layout.py) live
in their own modules.

Interface for panels docked from other modules (the insight panels use it):
- ``project`` (the open storage Project or None), ``runner`` (QtJobRunner), ``undo_stack``;
- ``add_dock(widget, title, area) -> QDockWidget``;
- signals ``labels_changed(list[int])``, ``project_changed(Project | None)`` (every panel resets to
  the new project, or to nothing), ``classes_changed()``, ``sources_changed()`` (a source was renamed);
- ``filter_grid(image_ids, description)`` / ``show_images``: show exactly those images;
- ``select_images(ids)`` / ``select_image(id)``: select them in the grid (revealing them if needed);
- ``make_label_command(ids, class_id, text)``: a QUndoCommand for the shared undo stack (worded by
  the workspace, so every view's steps read alike; a caller's ``text`` is not used);
- ``notify_labels_changed(ids)``: labels were written elsewhere; refresh views;
- ``refresh_predictions_view()``: the active model version changed; reload the grid's predictions,
  model-dependent filters and the viewer.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QDockWidget, QMainWindow, QMessageBox, QStackedWidget, QVBoxLayout, QWidget

from gui import project_files
from gui.classes_panel import ClassesPanel
from gui.curation_controller import CurationController
from gui.dock_layout import DockLayout
from gui.empty_state import EmptyGridMessage, empty_filter_reason
from gui.filter_bar import FilterBar
from gui.grid_model import ThumbnailGridModel
from gui.grid_view import ThumbnailGrid
from gui.labeling import SetLabelCommand
from gui.labeling_controller import LabelingController
from gui.one_per_turn import in_turn
from gui.project_controller import PREDICT_JOB, ProjectController
from gui.backup_scheduler import BackupScheduler
from gui.runner import QtJobRunner
from gui.status_line import StatusLine
from gui.team_session import TeamSession
from gui.tile_menu import TileMenu
from gui.viewer import ImageViewer
from gui.welcome import WelcomePage
from gui.window_commands import WindowCommands
from storage import browse, modelstore
from storage.project import Project

TRAIN_JOB = "train"  # gui/training_panel.py's job
MODEL_JOBS = (TRAIN_JOB, PREDICT_JOB)  # jobs that store new predictions: the grid repaints after them


class MainWindow(QMainWindow):
    labels_changed = Signal(object)  # list of image ids whose labels changed
    project_changed = Signal(object)  # the new Project, or None when closed
    classes_changed = Signal()
    sources_changed = Signal()

    def __init__(self, project: Project | None = None, *, settings: QSettings | None = None,
                 data_dir: Path | None = None, projects_dir: Path | None = None):
        super().__init__()
        self.settings = settings or QSettings(project_files.ORG_NAME, project_files.APP_NAME)
        self.project: Project | None = None
        self.runner = QtJobRunner(self)
        self.undo_stack = QUndoStack(self)
        self.viewer: ImageViewer | None = None
        self._has_model = False  # whether the open project has an active model (set by _refresh_choices)
        self._query = browse.GridQuery()

        self.setWindowTitle("Sortlab")
        self.setAcceptDrops(True)
        self.resize(1320, 820)
        self.docks = DockLayout(self, self.settings)
        self.projects = ProjectController(self, Path(data_dir) if data_dir else project_files.demo_dir(),
                                          Path(projects_dir) if projects_dir else project_files.default_projects_dir())
        self._build_workspace()
        self.labeling = LabelingController(self.grid, self.classes_panel, self.undo_stack, self.notify_labels_changed,
                                           self.show_message, self)
        self.classes_panel.class_deleted.connect(self.labeling.class_deleted)
        self.classes_panel.class_activated.connect(lambda class_id: self.labeling.label_selection(class_id))
        self.commands = WindowCommands(self)
        self.docks.list_in(self.commands.view_menu)
        self.tile_menu = TileMenu(self)
        self.grid.customContextMenuRequested.connect(self.tile_menu.show_at)
        self.status_line = StatusLine(self.statusBar(), self.runner)
        self.curation = CurationController(self)  # the "Label next", "Review labels", "Look-alikes" modes
        self.backups = BackupScheduler(self)  # the daily backup, File > Restore a Backup…, labels as of a time
        self.team = TeamSession(self)  # team projects: File > Open Team Project…, teammates' labels, roles
        self.runner.succeeded.connect(self._job_succeeded)
        self.projects.remember(None)
        self.classes_dock.setVisible(False)
        self._update_actions()
        if project is not None:
            self.set_project(project)

    # -- construction ---------------------------------------------------------------------------
    def _build_workspace(self) -> None:
        self.welcome = WelcomePage()
        self.welcome.demo_requested.connect(self.projects.open_demo)
        self.welcome.import_folder_requested.connect(lambda: self.projects.import_folder_as_project())
        self.welcome.new_requested.connect(self.projects.new_project)
        self.welcome.open_requested.connect(self.projects.open_dialog)
        self.welcome.recent_chosen.connect(self.open_project_file)

        self.filter_bar = FilterBar()
        self.filter_bar.query_changed.connect(self.apply_query)
        self.grid_model = ThumbnailGridModel(self)
        self.grid = ThumbnailGrid(self.grid_model)
        self.grid.setAcceptDrops(False)
        self.grid.viewport().setAcceptDrops(False)
        self.grid.open_requested.connect(self.open_viewer)
        self.grid.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.grid.selectionModel().selectionChanged.connect(lambda *_: self._selection_changed())
        self.empty_message = EmptyGridMessage()
        self.empty_message.import_requested.connect(lambda: self.projects.show_import_dialog())
        self.empty_message.show_all_requested.connect(lambda: self.set_filter(browse.ALL))
        self.grid_area = QStackedWidget()  # the grid, or what to do when it has nothing to show
        self.grid_area.addWidget(self.grid)
        self.grid_area.addWidget(self.empty_message)
        workspace = QWidget()
        layout = QVBoxLayout(workspace)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.filter_bar)
        layout.addWidget(self.grid_area, 1)
        self.workspace = workspace

        self.stack = QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(workspace)
        self.setCentralWidget(self.stack)

        self.label_summary: browse.LabelSummary | None = None  # kept by refresh_counts
        self.classes_panel = ClassesPanel()
        self.classes_panel.classes_changed.connect(self._classes_edited)
        self.classes_dock = self.add_dock(self.classes_panel, "Classes", Qt.DockWidgetArea.LeftDockWidgetArea)

    def add_dock(self, widget: QWidget, title: str, area=Qt.DockWidgetArea.RightDockWidgetArea) -> QDockWidget:
        """Dock a panel; panels added to the same side share it as tabs. Returns the QDockWidget."""
        return self.docks.add(widget, title, area)

    def show_message(self, text: str, milliseconds: int = 0) -> None:
        self.statusBar().showMessage(text, milliseconds)

    # -- the open project -----------------------------------------------------------------------
    def set_project(self, project: Project) -> None:
        """Show this (already open) project in the workspace, with every filter and panel reset."""
        if self.project is not None and self.project is not project:
            self.close_project()
        self.project = project
        self.filter_bar.reset()  # the last project's filter (a class, chosen images) means nothing here
        self.labeling.set_project(project)
        self.grid_model.set_project(project)
        self.classes_panel.set_project(project)
        self._refresh_choices()
        self.stack.setCurrentWidget(self.workspace)
        self.classes_dock.setVisible(True)
        self.apply_query(self.filter_bar.query())
        self.refresh_counts()
        self.projects.remember(project)
        self._update_actions()
        self.grid.setFocus()
        self.project_changed.emit(project)

    def open_project_file(self, path: str | os.PathLike) -> bool:
        """Open a project file and show it; False (after telling the user why) if it cannot be opened."""
        return self.projects.open_file(path)

    def close_project(self) -> None:
        """Stop what works on the project (viewer, dialogs, jobs), close it and show the welcome page."""
        if self.project is None:
            return
        if self.viewer is not None:
            self.viewer.close()
        self.projects.close_dialogs()
        self.runner.cancel_all()
        project = self.project
        self.project = None
        self.labeling.set_project(None)
        self.grid_model.set_project(None)
        self.classes_panel.set_project(None)
        self._has_model = False
        self.filter_bar.reset()
        project.close()
        self.stack.setCurrentWidget(self.welcome)
        self.classes_dock.setVisible(False)
        self.statusBar().clearMessage()
        self.projects.remember(None)
        self.refresh_counts()
        self._update_actions()
        self.project_changed.emit(None)

    def refresh_after_import(self) -> None:
        """New images (and maybe classes from folder names): every view re-reads the project."""
        self.classes_panel.refresh()
        self._refresh_choices()
        self.rerun_query()
        self.refresh_counts()
        self.classes_changed.emit()

    # -- drag and drop --------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.projects.show_import_dialog(paths)

    # -- filtering ------------------------------------------------------------------------------
    def apply_query(self, query: browse.GridQuery) -> None:
        """Run a filter as one SQL query and show its ids in the grid."""
        self._query = query
        if self.project is None:
            self.grid_model.set_ids([])
            return
        self.grid_model.model_version = modelstore.active_version(self.project)
        ids = browse.filtered_image_ids(self.project, query, self.grid_model.model_version)
        self.grid_model.set_ids(ids)
        total, _labeled = browse.image_and_label_counts(self.project)
        self.filter_bar.set_counts(len(ids), total)
        self._show_grid_or_why_empty(len(ids), total, query)
        self._selection_changed()

    def _show_grid_or_why_empty(self, shown: int, total: int, query: browse.GridQuery) -> None:
        if shown:
            self.grid_area.setCurrentWidget(self.grid)
            return
        if total == 0:
            self.empty_message.show_empty_project()
        else:
            reason = empty_filter_reason(query, self.classes_panel.classes)
            self.empty_message.show_empty_filter(self.filter_bar.filter_combo.currentText(), reason)
        self.grid_area.setCurrentWidget(self.empty_message)

    def rerun_query(self) -> None:
        self.apply_query(self.filter_bar.query())

    def set_filter(self, kind: str, class_id: int | None = None, source: str | None = None) -> None:
        self.filter_bar.set_query(browse.GridQuery(kind=kind, class_id=class_id, source=source,
                                                   sort=self.filter_bar.query().sort))

    def filter_grid(self, image_ids, description: str = "") -> None:
        """Show exactly these images (e.g. a confusion-matrix cell), as a "chosen images" filter."""
        self.filter_bar.show_chosen(list(image_ids), description or f"{len(image_ids)} chosen images")

    show_images = filter_grid

    def append_to_grid(self, image_ids) -> None:
        """Add images below those shown (the filter bar already holds them): no shown tile moves."""
        self.grid_model.append_ids(image_ids)
        self._query, total = self.filter_bar.query(), browse.image_and_label_counts(self.project)[0]
        self.filter_bar.set_counts(self.grid_model.rowCount(), total)
        self._show_grid_or_why_empty(self.grid_model.rowCount(), total, self._query)

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
        self._has_model = modelstore.active_version(self.project) is not None
        self.filter_bar.set_choices(self.classes_panel.classes, browse.source_counts(self.project), self._has_model)
        self.grid.tile_delegate.set_classes(self.classes_panel.classes)
        self._update_actions()

    # -- labeling -------------------------------------------------------------------------------
    def selected_image_ids(self) -> list[int]:
        return self.grid.selected_image_ids()

    def make_label_command(self, image_ids, class_id: int | None, _text: str | None = None) -> SetLabelCommand:
        """The workspace's label command (one undo history, one wording and one notification for
        every view; the map passes its own wording, which the shared one replaces)."""
        return self.labeling.make_label_command(image_ids, class_id)

    @property
    def has_model(self) -> bool:
        """Whether the open project has a model in use (its suggestions can be accepted)."""
        return self._has_model

    def label_images(self, image_ids, class_id: int | None) -> None:
        """Label these images (None: remove their labels) as one undoable step."""
        self.labeling.label_images(image_ids, class_id)

    def notify_labels_changed(self, image_ids) -> None:
        ids = [int(i) for i in image_ids]
        self.show_changed_labels(ids)
        self.labels_changed.emit(ids)

    def show_changed_labels(self, image_ids: list[int]) -> None:
        """Repaint what labels changed: these tiles, the counts, the open viewer. This runs on every
        label keypress, so it reads the database once (``label_summary``)."""
        self.grid_model.refresh_tiles(image_ids)
        self.refresh_counts()
        if self.viewer is not None and self.viewer.isVisible():
            self.viewer.refresh_facts()

    def _classes_edited(self) -> None:
        self._refresh_choices()
        self.grid_model.refresh_tiles()
        self.refresh_counts()
        self.classes_changed.emit()

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
                             lambda ids, key: self.labeling.apply_key(ids, key), self.undo_stack, self.runner,
                             self)
        viewer.row_changed.connect(lambda r: self.grid.select_rows([r]))
        viewer.finished.connect(lambda _result: self.grid.setFocus())
        self.viewer = viewer
        self.grid.select_rows([row])
        viewer.show()
        return viewer

    # -- status ---------------------------------------------------------------------------------
    def refresh_counts(self) -> None:
        if self.project is None:
            self.label_summary = None
            self.setWindowTitle("Sortlab")
            self.status_line.show_counts(None)
            return
        self.label_summary = summary = browse.label_summary(self.project)
        self.classes_panel.show_counts(summary.per_class)
        images, labeled = summary.images, summary.labeled
        self.setWindowTitle(f"{self.project.name} — {images:,} images, {labeled:,} labeled — Sortlab")
        self.status_line.show_counts(self.project.name, images, labeled)

    def _selection_changed(self) -> None:
        count = len(self.grid.selected_rows()) if self.project is not None else 0
        if count:
            self.statusBar().showMessage(f"{count:,} selected")
        else:
            self.statusBar().clearMessage()
        self._update_actions()

    def _update_actions(self) -> None:
        self.commands.update(self.project is not None, bool(self.grid.selectionModel().hasSelection()), self._has_model)
        if getattr(self, "team", None) is not None:
            self.team.apply_role()  # grey out what a team project's role may not do

    # -- jobs -----------------------------------------------------------------------------------
    def _job_succeeded(self, name: str, _result) -> None:
        if self.project is None or name not in MODEL_JOBS:
            return
        # New predictions while the user labels: repaint in place, never reshuffle the grid under them
        # (in a turn of its own: the other panels react to the same training; gui.one_per_turn).
        project = self.project
        in_turn(lambda: self.refresh_predictions_view(rerun_filter=False) if self.project is project else None, self)

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
        self.docks.restore()
        self.classes_dock.setVisible(self.project is not None)

    def save_layout(self) -> None:
        self.docks.save()

    def closeEvent(self, event) -> None:
        if self.runner.busy and not self._confirm_quit_while_busy():
            event.ignore()
            return
        self.save_layout()
        self.runner.cancel_all()
        self.close_project()
        self.grid_model.shutdown()
        self.runner.shutdown()
        super().closeEvent(event)

    def _confirm_quit_while_busy(self) -> bool:
        answer = QMessageBox.question(
            self, "Quit Sortlab", "A job is still running. Stop it and quit? Everything finished so far is saved.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes
