"""The backup GUI driven through the real window (offscreen): the daily backup in the background,
File > Restore a Backup… (replace, side by side) and Edit > Labels As They Were At… with undo."""

from __future__ import annotations

import datetime as dt

import pytest
from PySide6.QtCore import QDateTime, QSettings
from PySide6.QtWidgets import QMessageBox

from gui.app import create_main_window
from gui.backup_as_of import LabelsAsOfDialog
from gui.backup_dialog import BackupDialog
from gui.runner import QtJobRunner
from storage import backups, catalog, images
from storage.project import open_project

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    main = create_main_window(insight=False, settings=settings, data_dir=tmp_path / "data",
                              projects_dir=tmp_path / "projects")
    main.backups.first_delay_ms = 3_600_000  # tests start the daily backup themselves

    def idle_then_close() -> None:
        runners = main.findChildren(QtJobRunner)
        qtbot.waitUntil(lambda: not any(r.busy for r in runners), timeout=60_000)
        main._confirm_quit_while_busy = lambda: True  # a job started after the wait: no box nobody answers
        for dialog in main.findChildren(BackupDialog):
            for other in dialog.side_windows:
                other.close()

    qtbot.addWidget(main, before_close_func=lambda _widget: idle_then_close())
    return main


def _project_file(tmp_path, n=8):
    path = tmp_path / "bins.sortlab"
    with open_project(path, create=True) as project:
        ant, bee = catalog.add_class(project, "ant").id, catalog.add_class(project, "bee").id
        ids = images.add_images(project, [images.NewImage(f"h{i}", f"{i}.jpg", f"/x/{i}.jpg", "cam", 4, 3, "JPEG",
                                                          b"x", b"t") for i in range(n)])
    return path, ids, ant, bee


def _labels(project) -> list[int | None]:
    with project.session() as session:
        from storage.models import Image
        ids = sorted(session.scalars(Image.__table__.select().with_only_columns(Image.id)))
    return [s.class_id for s in catalog.label_states(project, ids)]


def test_the_daily_backup_runs_in_the_background_once_a_day(window, qtbot, tmp_path):
    path, ids, ant, _ = _project_file(tmp_path)
    assert window.open_project_file(path)
    window.backups.check_now()
    qtbot.waitUntil(lambda: window.backups.last_run is not None, timeout=30_000)
    made = window.backups.last_run.made
    assert made is not None and made.kind == backups.DAILY and made.images == len(ids)
    window.backups.last_run = None
    window.backups.check_now()  # the same day: nothing to do
    qtbot.waitUntil(lambda: window.backups.last_run is not None, timeout=30_000)
    assert window.backups.last_run.made is None
    assert len(backups.list_backups(path)) == 1


def test_replace_the_project_with_a_backup_and_open_one_side_by_side(window, qtbot, tmp_path, monkeypatch):
    path, ids, ant, bee = _project_file(tmp_path)
    assert window.open_project_file(path)
    catalog.set_labels(window.project, ids[:3], ant)
    then = _labels(window.project)
    backups.make_backup(window.project)
    window.label_images(ids[:5], bee)
    later = _labels(window.project)

    window.commands.backups_action.trigger()
    dialog = window.backups.dialog
    qtbot.waitUntil(lambda: dialog.table.rowCount() == 1 and dialog.replace_button.isEnabled(), timeout=30_000)
    assert [dialog.table.item(0, c).text() for c in (1, 2, 3)] == ["daily", "8", "3"]
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    dialog.replace_button.click()
    qtbot.waitUntil(lambda: window.project is not None and dialog.table.rowCount() == 2, timeout=30_000)
    assert _labels(window.project) == then
    assert window.undo_stack.count() == 0  # the undo steps were about the content before
    assert dialog.infos[0].kind == backups.BEFORE_RESTORE and dialog.infos[0].labels == 5

    # Side by side: the content before the restore, in a window of its own; this one stays as it is.
    target = tmp_path / "before.sortlab"
    monkeypatch.setattr("gui.backup_dialog.QFileDialog.getSaveFileName", lambda *a, **k: (str(target), ""))
    monkeypatch.setattr("gui.app.create_main_window", lambda **k: create_main_window(insight=False, **k))
    dialog.table.selectRow(0)
    dialog.side_button.click()
    qtbot.waitUntil(lambda: bool(dialog.side_windows) and dialog.side_windows[0].project is not None,
                    timeout=30_000)
    other = dialog.side_windows[0]
    assert other.project.path == target and _labels(other.project) == later
    assert _labels(window.project) == then
    other.backups.first_delay_ms = 3_600_000
    dialog.close()


def test_labels_as_they_were_for_the_selection_as_one_undoable_step(window, qtbot, tmp_path, monkeypatch):
    path, ids, ant, bee = _project_file(tmp_path)
    assert window.open_project_file(path)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    clock = [now - dt.timedelta(hours=3)]
    monkeypatch.setattr(catalog, "utcnow", lambda: clock[0])  # labels of three hours ago, then of one hour ago
    catalog.set_labels(window.project, ids[:4], ant)
    clock[0] = now - dt.timedelta(hours=1)
    catalog.set_labels(window.project, ids[:6], bee)
    monkeypatch.undo()
    window.select_images(ids[:2] + ids[4:5])

    window.commands.as_of_action.trigger()
    dialog = window.backups.dialog
    assert isinstance(dialog, LabelsAsOfDialog) and dialog.selected_radio.isChecked()
    two_hours_ago = QDateTime.currentDateTime().addSecs(-2 * 3600)
    dialog.when_edit.setDateTime(two_hours_ago)
    qtbot.waitUntil(lambda: dialog.apply_button.isEnabled(), timeout=30_000)
    assert "3 labels will change" in dialog.preview.text()
    dialog.apply_button.click()
    expected = [ant, ant, bee, bee, None, bee, None, None]
    assert _labels(window.project) == expected
    assert window.undo_stack.undoText().startswith("Labels of 3 images as they were at")
    window.undo_stack.undo()
    assert _labels(window.project) == [bee] * 6 + [None, None]
    window.undo_stack.redo()
    assert _labels(window.project) == expected

    window.select_images([])
    window.commands.as_of_action.trigger()
    everything = window.backups.dialog
    assert everything.all_radio.isChecked() and not everything.selected_radio.isEnabled()
    everything.when_edit.setDateTime(two_hours_ago)
    qtbot.waitUntil(lambda: everything.apply_button.isEnabled(), timeout=30_000)
    everything.apply_button.click()
    assert _labels(window.project) == [ant] * 4 + [None] * 4
