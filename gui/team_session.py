"""A team project in the window: File > Open Team Project… (a database URL and a password that is
used for the connection and never stored), teammates' labels appearing within a couple of seconds
(polling the label history on a background thread; tiles repaint in place, the selection and the
filter stay as they are), a model another client trained arriving, and the commands the user's
database role may not use greyed out (the database refuses them anyway)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QMessageBox, QVBoxLayout

from storage.backends import is_database_url
from storage.errors import ProjectError
from storage.project import Project, open_project
from storage.team_roles import OWNER, VIEWER, access_level
from storage.team_sync import ChangeWatcher, TeamChanges

if TYPE_CHECKING:
    from gui.main_window import MainWindow

POLL_MS = 1500
URL_SETTING = "team/last_url"  # the URL (never with a password) offered next time


class TeamOpenDialog(QDialog):
    """Asks for a team project's URL and, optionally, a password (kept only in this dialog's memory)."""

    def __init__(self, url: str = "", parent=None):
        super().__init__(parent)
        self.setWindowTitle("Open Team Project")
        self.url_edit = QLineEdit(url)
        self.url_edit.setPlaceholderText("postgresql+psycopg://you@db.example/sortlab_bins")
        self.url_edit.setMinimumWidth(460)
        self.password_edit = QLineEdit()
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.password_edit.setPlaceholderText("leave empty to use ~/.pgpass or PGPASSWORD")
        form = QFormLayout()
        form.addRow("Database URL:", self.url_edit)
        form.addRow("Password:", self.password_edit)
        note = QLabel("The password is used to connect and is never saved. For a Unix socket, add "
                      "?host=/var/run/postgresql to the URL.")
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def url(self) -> str:
        return self.url_edit.text().strip()

    def password(self) -> str | None:
        return self.password_edit.text() or None


class TeamSession(QObject):
    """One window's team-project behaviour; inert for project files."""

    changes_arrived = Signal(object)  # TeamChanges, delivered on the GUI thread

    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window
        self.level = OWNER
        self.watcher: ChangeWatcher | None = None
        self._pending: Future | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="team-poll")
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.changes_arrived.connect(self._show_changes)
        window.project_changed.connect(self._project_changed)

    # -- opening ----------------------------------------------------------------------------------
    def open_dialog(self) -> bool:
        settings = self.window.settings
        dialog = TeamOpenDialog(str(settings.value(URL_SETTING, "") or ""), self.window)
        if not dialog.exec() or not dialog.url():
            return False
        return self.open_url(dialog.url(), dialog.password())

    def open_url(self, url: str, password: str | None = None) -> bool:
        if not is_database_url(url):
            QMessageBox.warning(self.window, "Open Team Project",
                                "A team project is a database URL such as postgresql+psycopg://you@host/name.")
            return False
        try:
            project = open_project(url, password=password)
        except ProjectError as exc:
            QMessageBox.warning(self.window, "Cannot open team project", str(exc))
            return False
        self.window.settings.setValue(URL_SETTING, project.location)  # shown form: no password
        self.window.set_project(project)
        return True

    # -- following the team -------------------------------------------------------------------------
    def _project_changed(self, project: Project | None) -> None:
        self.timer.stop()
        self.watcher = None
        self.level = OWNER
        self._set_editable(True)
        if project is not None and project.is_database:
            self.level = access_level(project)
            self.watcher = ChangeWatcher(project)
            self.timer.start()
            self.window.show_message(f"Team project {project.name}: you are {project.actor} ({self.level}).", 8000)
        self.apply_role()

    def poll(self) -> None:
        """Ask the database what changed, off the GUI thread (one question at a time)."""
        if self.watcher is None or (self._pending is not None and not self._pending.done()):
            return
        watcher = self.watcher

        def ask() -> None:
            try:
                changes = watcher.poll()
            except Exception:  # the server went away for a moment: the next poll tries again
                return
            self.changes_arrived.emit((watcher, changes))

        self._pending = self._pool.submit(ask)

    def _show_changes(self, delivered) -> None:
        watcher, changes = delivered
        window = self.window
        if watcher is not self.watcher or window.project is None:
            return  # a poll of a project closed since
        changes: TeamChanges
        if changes.image_ids:
            window.show_changed_labels(list(changes.image_ids))
            others = [actor for actor in changes.actors if actor != window.project.actor]
            if others:
                window.show_message(f"{len(changes.image_ids)} labels changed by {', '.join(others)}.", 4000)
        if changes.active_model != window.grid_model.model_version:
            window.refresh_predictions_view(rerun_filter=False)
            if changes.active_model is not None:
                window.show_message(f"A new model (version {changes.active_model}) is in use.", 6000)

    # -- what the role may do -------------------------------------------------------------------------
    def apply_role(self) -> None:
        """Grey out what this role may not do (called after the window enables its commands)."""
        project, commands = self.window.project, self.window.commands
        if project is None or not project.is_database:
            return
        commands.backups_action.setEnabled(False)  # file backups: the database's are its administrator's
        if self.level == OWNER:
            return
        self._set_editable(False)
        for action in (commands.import_action, commands.export_model_action, commands.export_dataset_action,
                       commands.add_class_action, commands.rename_source_action, commands.backups_action,
                       commands.overlap_action):
            action.setEnabled(False)
        if self.level == VIEWER:
            for action in (commands.accept_action, commands.keep_action, commands.clear_action,
                           commands.as_of_action, *commands.label_actions):
                action.setEnabled(False)

    def _set_editable(self, editable: bool) -> None:
        """Classes and training: owners only; the whole class list only for those who may label."""
        panel = self.window.classes_panel
        if panel.read_only != (not editable):
            panel.read_only = not editable
            panel._update_buttons()
        panel.setEnabled(editable or self.level != VIEWER)
        training = getattr(getattr(self.window, "insight", None), "training", None)
        if training is not None:
            training.setEnabled(editable)

    def close(self) -> None:
        self.timer.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
