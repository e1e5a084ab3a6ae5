"""The window's backups: the daily copy made in the background, and the doors to the backup dialogs.

The daily backup runs on a job runner of its own (a second worker thread), so it neither waits
behind a long training job nor delays one, and label writes never wait for it (storage.backups).
It starts a while after a project opens (``first_delay_ms``: the start-up work goes first) and is
looked at again every hour, for sessions that run past midnight."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QCoreApplication, QObject, QTimer

from engine.runtime.backups import BackupRun, backup_project
from engine.runtime.jobs import JobOutcome, JobStatus
from gui.runner import QtJobRunner

if TYPE_CHECKING:
    from gui.main_window import MainWindow

JOB_NAME = "daily backup"
HOUR_MS = 3_600_000


def is_file_project(project) -> bool:
    """Backups are of project files; a team project's database server keeps its own."""
    return project is not None and getattr(project, "path", None) is not None and not getattr(
        project, "is_database", False)


class BackupScheduler(QObject):
    first_delay_ms = 60_000

    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window
        self.runner = QtJobRunner(self)
        self.last_run: BackupRun | None = None
        self.last_error = ""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.check_now)
        self.dialog = None
        window.project_changed.connect(self._project_changed)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.runner.shutdown)

    def _project_changed(self, project) -> None:
        self.runner.cancel(JOB_NAME)
        self._timer.stop()
        if is_file_project(project):
            self._timer.start(self.first_delay_ms)

    def check_now(self) -> None:
        """Make today's backup of the open project if it is due (and backups are on), then prune."""
        project = self.window.project
        self._timer.start(HOUR_MS)
        if not is_file_project(project) or self.runner.is_running(JOB_NAME) or self.runner.closed:
            return
        self.runner.submit(JOB_NAME, backup_project, project, on_done=self._done)

    def _done(self, outcome: JobOutcome) -> None:
        if outcome.status is JobStatus.DONE:
            self.last_run, self.last_error = outcome.result, ""
            if outcome.result.made is not None:
                self.window.show_message(f"Backed up {self.window.project.name if self.window.project else ''} "
                                         "(File > Restore a Backup… lists the backups).", 8000)
        elif outcome.status is JobStatus.FAILED:
            self.last_error = outcome.error
            self.window.show_message(f"The daily backup failed: {outcome.error}", 15000)

    def show_restore_dialog(self) -> None:
        from gui.backup_dialog import BackupDialog

        if not is_file_project(self.window.project):
            from PySide6.QtWidgets import QMessageBox

            QMessageBox.information(self.window, "Backups", "This is a team project in a database server: "
                                    "the server's own backups apply. Sortlab keeps backups of project files.")
            return
        self.dialog = BackupDialog(self.window, self.runner)
        self.dialog.show()

    def show_as_of_dialog(self) -> None:
        from gui.backup_as_of import LabelsAsOfDialog

        if self.window.project is None:
            return
        self.dialog = LabelsAsOfDialog(self.window)
        self.dialog.show()
