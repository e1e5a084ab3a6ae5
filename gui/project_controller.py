"""How a project reaches the workspace and what works on it: opening, creating and remembering
project files, building the demo, a folder dropped on the welcome screen becoming a new project
(named and placed by the user), and the project's import, export and rename-a-source dialogs (with
suggestions for newly imported images).

The window shows the project (``MainWindow.set_project``) and closes it (``close_project``); this
controller finds or makes the file and owns the dialogs that must close with the project."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QDialog, QFileDialog, QMessageBox

from engine.runtime.jobs import JobOutcome, JobStatus
from gui import project_files
from gui.import_dialog import ImportDialog
from gui.source_dialog import RenameSourceDialog
from gui.untrusted_project import strip_and_open
from storage import browse, modelstore
from storage.errors import ProjectError
from storage.project import Project, create_project, open_project
from storage.trust import UntrustedProjectError

if TYPE_CHECKING:  # engine modules are imported when first used: the window opens without them
    from engine.images.importing import ImportReport
    from engine.models.predicting import RefreshOutcome
    from gui.main_window import MainWindow

DEMO_JOB = "demo"
PREDICT_JOB = "predict"
PROJECT_FILTER = "Sortlab projects (*.sortlab)"


class ProjectController(QObject):
    """Project files and dialogs of one main window."""

    def __init__(self, window: MainWindow, data_dir: Path, projects_dir: Path):
        super().__init__(window)
        self.window = window
        self.data_dir = data_dir
        self.projects_dir = projects_dir
        self.import_dialog: ImportDialog | None = None
        self.export_dialog: QDialog | None = None

    # -- project files --------------------------------------------------------------------------
    def open_file(self, path: str | os.PathLike) -> bool:
        try:
            project = open_project(path)
        except UntrustedProjectError as exc:  # offer to remove what Sortlab did not make (backup first)
            project = strip_and_open(self.window, path, exc)
            if project is None:
                return False
        except ProjectError as exc:
            QMessageBox.warning(self.window, "Cannot open project", str(exc))
            return False
        self.window.set_project(project)
        return True

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.window, "Open a Sortlab project", str(self._start_dir()),
                                              PROJECT_FILTER)
        if path:
            self.open_file(path)

    def new_project(self) -> Project | None:
        path, _ = QFileDialog.getSaveFileName(self.window, "New Sortlab project",
                                              str(self._start_dir() / "My images.sortlab"), PROJECT_FILTER)
        if not path:
            return None
        if not path.endswith(".sortlab"):
            path += ".sortlab"
        return self.create_file(Path(path))

    def create_file(self, path: Path) -> Project | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            project = create_project(path)
        except (ProjectError, OSError) as exc:
            QMessageBox.warning(self.window, "Cannot create project", str(exc))
            return None
        self.window.set_project(project)
        return project

    def remember(self, project: Project | None) -> None:
        """Put this project first among the recent ones (None: only refresh the list)."""
        settings = self.window.settings
        recent = (project_files.remember_project(settings, project.path) if project is not None and project.path
                  else project_files.recent_projects(settings))
        self.window.welcome.set_recent(recent)

    def _start_dir(self) -> Path:
        return self.projects_dir if self.projects_dir.exists() else Path.home()

    # -- demo and first import ------------------------------------------------------------------
    def demo_path(self) -> Path:
        return self.data_dir / project_files.DEMO_FILE

    def open_demo(self) -> None:
        """Open the demo project, building it in the background the first time."""
        path = self.demo_path()
        if path.exists():
            self.open_file(path)
            return
        from engine.images.demo import build_demo_project

        self.data_dir.mkdir(parents=True, exist_ok=True)
        building = path.with_name("Demo-building.sortlab")
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)
        welcome, demo_action = self.window.welcome, self.window.commands.demo_action
        welcome.set_busy("Building the demo project (a few seconds, only the first time)…")
        demo_action.setEnabled(False)

        def done(outcome: JobOutcome) -> None:
            welcome.set_busy("")
            demo_action.setEnabled(True)
            if outcome.status is JobStatus.DONE:
                os.replace(building, path)
                self.open_file(path)
            elif outcome.status is JobStatus.FAILED:
                QMessageBox.warning(self.window, "Demo project", f"The demo could not be built: {outcome.error}")

        self.window.runner.submit(DEMO_JOB, build_demo_project, str(building), on_done=done)

    def import_folder_as_project(self, folder: str | None = None) -> None:
        """Welcome-screen path: a new project for a folder (the user names and places it; the
        folder's name is offered), then the import dialog for it."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self.window, "Choose a folder of images", str(Path.home()))
        if not folder:
            return
        offered = project_files.free_project_path(self._start_dir(), Path(folder).name or "Images")
        path, _ = QFileDialog.getSaveFileName(self.window, "Save the new project as", str(offered), PROJECT_FILTER)
        if not path:
            return
        if not path.endswith(".sortlab"):
            path += ".sortlab"
        if self.create_file(Path(path)) is not None:
            self.show_import_dialog([folder])

    # -- the project's dialogs ------------------------------------------------------------------
    def show_import_dialog(self, paths: list[str] | None = None) -> ImportDialog | None:
        window = self.window
        if window.project is None:  # dropped on the welcome screen: a new project named after the folder
            if paths and Path(paths[0]).is_dir():
                self.import_folder_as_project(paths[0])
            return self.import_dialog
        current = self.import_dialog
        if current is not None and current.isVisible():
            if current.running:  # one import at a time: the new files wait until this one ends
                if paths:
                    window.show_message("An import is running. Drop those files again once it has finished.", 6000)
                current.raise_()
                return current
            if current.accepts_paths:  # not started yet: the new files join the list
                current.add_paths(paths or [])
                current.raise_()
                return current
            current.close()  # finished (its Import button is off): the new files get a fresh dialog
        dialog = ImportDialog(window.project, window.runner, paths, window)
        dialog.finished_import.connect(self._import_finished)
        dialog.check.show_images.connect(window.show_images)
        self.import_dialog = dialog
        dialog.show()
        return dialog

    def _import_finished(self, report: ImportReport | None) -> None:
        self.window.refresh_after_import()
        if report is not None and report.imported:
            self.predict_new_images()

    def predict_new_images(self) -> bool:
        """When a model exists, give the images it has no prediction for one, in the background
        (after an import: new images get suggestions). The grid repaints when the job ends."""
        project = self.window.project
        if project is None or modelstore.active_version(project) is None:
            return False
        from engine.models.predicting import refresh_if_model

        self.window.show_message("Adding suggestions for the new images…", 4000)
        self.window.runner.submit(PREDICT_JOB, refresh_if_model, project, on_done=self._new_images_predicted)
        return True

    def _new_images_predicted(self, outcome: JobOutcome) -> None:
        if outcome.status is JobStatus.FAILED:
            self.window.show_message(f"The new images got no suggestions: {outcome.error}", 10_000)
            return
        refreshed: RefreshOutcome | None = outcome.result  # None: the model was deleted meanwhile
        if outcome.status is JobStatus.DONE and refreshed is not None and refreshed.predicted:
            self.window.show_message(f"Suggestions added for {refreshed.predicted:,} new images.", 5000)

    def rename_source(self, source: str | None = None) -> RenameSourceDialog | None:
        """Ask which source to rename and how; the filter, the viewer and the panels follow."""
        window = self.window
        if window.project is None:
            return None
        query = window.filter_bar.query()
        dialog = RenameSourceDialog(window.project, source or query.source, window)
        if dialog.exec() and dialog.renamed is not None:
            old, new = dialog.renamed
            window.refresh_after_import()  # the filter bar's sources and counts are read again
            if query.kind == browse.FROM_SOURCE and query.source == old:
                window.set_filter(browse.FROM_SOURCE, source=new)
            if window.viewer is not None and window.viewer.isVisible():
                window.viewer.refresh_facts()
            window.show_message(f"Source “{old}” is now called “{new}”.", 6000)
            window.sources_changed.emit()
        return dialog

    def show_export_dialog(self, tab: int):
        """The export dialog on its model (or dataset) tab; returns it (None without a project)."""
        if self.window.project is None:
            return None
        from gui.export_dialog import ExportDialog

        if self.export_dialog is not None:
            self.export_dialog.close()
        dialog = ExportDialog(self.window.project, self.window.runner, self.window)
        if dialog.tabs.isTabEnabled(tab):
            dialog.tabs.setCurrentIndex(tab)
        self.export_dialog = dialog
        dialog.show()
        return dialog

    def close_dialogs(self) -> None:
        """The dialogs work on the open project: they close before it does."""
        for dialog in (self.import_dialog, self.export_dialog):
            if dialog is not None:
                dialog.close()
