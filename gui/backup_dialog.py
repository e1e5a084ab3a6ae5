"""File > Restore a Backup…: the project's backups with their date, images and labels; open one side
by side (a copy, in a window of its own) or replace the project with it (after asking; the current
content is kept as a backup first); make one now; the daily backup setting."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from engine.runtime.backups import backup_project
from engine.runtime.jobs import JobContext, JobOutcome, JobStatus
from gui.runner import QtJobRunner
from storage import backups

if TYPE_CHECKING:
    from gui.main_window import MainWindow

KIND_TEXT = {backups.DAILY: "daily", backups.MANUAL: "made by hand", backups.BEFORE_RESTORE: "before a restore",
             backups.BEFORE_UPGRADE: "before an upgrade"}
COLUMNS = ("Made", "Kind", "Images", "Labels", "Size")


def local_text(utc: dt.datetime) -> str:
    return utc.replace(tzinfo=dt.timezone.utc).astimezone().strftime("%a %Y-%m-%d %H:%M")


def size_text(size: int) -> str:
    return f"{size / 2**20:,.1f} MB" if size >= 2**20 else f"{size / 1024:,.0f} KB"


def list_backups_job(_context: JobContext, project_path: Path) -> list[backups.BackupInfo]:
    return backups.list_backups(project_path)


def restore_job(context: JobContext, project_path: Path, backup: Path) -> backups.BackupInfo:
    context.progress(0.0, "Keeping the current content as a backup, then restoring…")
    return backups.restore_backup(project_path, backup)


def copy_job(context: JobContext, backup: Path, target: Path) -> Path:
    context.progress(0.0, f"Copying the backup to {target.name}…")
    return backups.copy_backup(backup, target)


class BackupDialog(QDialog):
    def __init__(self, window: MainWindow, runner: QtJobRunner):
        super().__init__(window)
        self.window = window
        self.runner = runner
        self.project_path = Path(window.project.path)
        self.infos: list[backups.BackupInfo] = []
        self.side_windows: list = []
        self.setWindowTitle(f"Backups of {window.project.name}")
        self.resize(760, 440)

        folder = backups.backups_dir(self.project_path)
        intro = QLabel(f"Sortlab copies this project once a day while it is open, into <i>{folder}</i>. Open a "
                       "backup beside this project to look at it, or replace the project with it: the current "
                       "content is kept as a backup first, so a restore can be undone too.")
        intro.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(lambda _index: self.open_side_by_side())
        self.status = QLabel("Reading the backups…")

        self.backup_now_button = QPushButton("Back Up Now")
        self.backup_now_button.clicked.connect(self.backup_now)
        self.side_button = QPushButton("Open Side by Side…")
        self.side_button.setToolTip("Open a copy of this backup in a window of its own; this project stays as it is")
        self.side_button.clicked.connect(self.open_side_by_side)
        self.replace_button = QPushButton("Replace Project…")
        self.replace_button.setToolTip("Give this project the backup's content (the current content is kept)")
        self.replace_button.clicked.connect(self.replace_project)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        for button in (self.backup_now_button, self.side_button, self.replace_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(close)

        settings = backups.backup_settings(window.project)
        self.daily_box = QCheckBox("Back up this project every day, keeping the last")
        self.daily_box.setChecked(settings.daily)
        self.keep_spin = QSpinBox()
        self.keep_spin.setRange(1, 365)
        self.keep_spin.setValue(settings.keep)
        self.max_age = settings.max_age_days
        self.daily_box.toggled.connect(self._save_settings)
        self.keep_spin.valueChanged.connect(self._save_settings)
        setting_row = QHBoxLayout()
        setting_row.addWidget(self.daily_box)
        setting_row.addWidget(self.keep_spin)
        setting_row.addWidget(QLabel(f"daily backups (for up to {self.max_age} days)"))
        setting_row.addStretch(1)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)
        layout.addLayout(setting_row)
        layout.addLayout(buttons)
        self._busy = False
        self.refresh()

    # -- the list -------------------------------------------------------------------------------
    def refresh(self) -> None:
        self._set_busy(True, "Reading the backups…")
        self.runner.submit("list backups", list_backups_job, self.project_path, on_done=self._listed)

    def _listed(self, outcome: JobOutcome) -> None:
        self._set_busy(False)
        if outcome.status is not JobStatus.DONE:
            self.status.setText(f"Cannot list the backups: {outcome.error}")
            return
        self.infos = outcome.result
        self.table.setRowCount(len(self.infos))
        for row, info in enumerate(self.infos):
            cells = (local_text(info.made_at), KIND_TEXT.get(info.kind, info.kind),
                     "" if info.images is None else f"{info.images:,}",
                     info.problem or ("" if info.labels is None else f"{info.labels:,}"), size_text(info.size))
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column in (2, 3, 4) and not info.problem:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(str(info.path))
                self.table.setItem(row, column, item)
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        if self.infos:
            self.table.selectRow(0)
        self.status.setText(f"{len(self.infos)} backup{'s' if len(self.infos) != 1 else ''}." if self.infos
                            else "No backups yet: the first daily one is made a minute after the project opens.")
        self._update_buttons()

    def selected(self) -> backups.BackupInfo | None:
        rows = self.table.selectionModel().selectedRows()
        return self.infos[rows[0].row()] if rows and rows[0].row() < len(self.infos) else None

    def _update_buttons(self) -> None:
        chosen = self.selected()
        usable = chosen is not None and not chosen.problem and not self._busy
        self.side_button.setEnabled(usable)
        self.replace_button.setEnabled(usable)
        self.backup_now_button.setEnabled(not self._busy)

    def _set_busy(self, busy: bool, message: str = "") -> None:
        self._busy = busy
        if message:
            self.status.setText(message)
        self._update_buttons()

    def _save_settings(self) -> None:
        if self.window.project is None:
            return
        backups.set_backup_settings(self.window.project, backups.BackupSettings(
            self.daily_box.isChecked(), self.keep_spin.value(), self.max_age))
        self.keep_spin.setEnabled(self.daily_box.isChecked())

    # -- actions --------------------------------------------------------------------------------
    def backup_now(self) -> None:
        if self.window.project is None:
            return
        self._set_busy(True, "Backing up…")
        self.runner.submit("backup now", backup_project, self.window.project, daily=False,
                           on_done=lambda outcome: self._after("Backed up.", outcome))

    def _after(self, done_text: str, outcome: JobOutcome) -> None:
        if outcome.status is not JobStatus.DONE:
            self._set_busy(False)
            QMessageBox.warning(self, "Backups", outcome.error or "Stopped.")
        self.refresh()
        if outcome.status is JobStatus.DONE:
            self.status.setText(done_text)

    def open_side_by_side(self) -> None:
        chosen = self.selected()
        if chosen is None or self._busy:
            return
        made = chosen.made_at.replace(tzinfo=dt.timezone.utc).astimezone()
        suggestion = self.project_path.with_name(f"{self.project_path.stem} as of {made:%Y-%m-%d %H%M}.sortlab")
        target, _ = QFileDialog.getSaveFileName(self, "Open the backup as a project of its own", str(suggestion),
                                                "Sortlab projects (*.sortlab)")
        if not target:
            return
        target = Path(target if target.endswith(".sortlab") else target + ".sortlab")
        self._set_busy(True, f"Copying to {target.name}…")
        self.runner.submit("copy backup", copy_job, chosen.path, target, on_done=self._copied)

    def _copied(self, outcome: JobOutcome) -> None:
        self._set_busy(False)
        if outcome.status is not JobStatus.DONE:
            QMessageBox.warning(self, "Cannot open the backup", outcome.error or "Stopped.")
            return
        from gui.app import create_main_window

        other = create_main_window(settings=self.window.settings)
        other.show()
        other.open_project_file(outcome.result)
        self.side_windows.append(other)
        self.status.setText(f"Opened {outcome.result.name} in a window of its own.")

    def replace_project(self) -> None:
        chosen = self.selected()
        if chosen is None or self._busy:
            return
        counts = f"{chosen.images:,} images and {chosen.labels:,} labels"
        answer = QMessageBox.question(
            self, "Replace the project",
            f"Give {self.project_path.name} the content of the backup of {local_text(chosen.made_at)} "
            f"({counts})?\n\nWhat the project holds now is kept as a backup first (listed here as "
            "“before a restore”), so you can come back to it.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel)
        if answer != QMessageBox.StandardButton.Yes:
            return
        self.window.close_project()  # stops its jobs and closes the file
        self._set_busy(True, "Restoring…")
        self.runner.submit("restore backup", restore_job, self.project_path, chosen.path, on_done=self._restored)

    def _restored(self, outcome: JobOutcome) -> None:
        self._set_busy(False)
        reopened = self.window.open_project_file(self.project_path)
        if outcome.status is not JobStatus.DONE:
            QMessageBox.warning(self, "Cannot restore the backup",
                                f"{outcome.error}\n\nThe project was not changed.")
            return
        self.status.setText(f"Restored{'' if reopened else ' (but the project did not open again)'}. The content "
                            f"before is kept in {outcome.result.path.name}.")
        self.refresh()
