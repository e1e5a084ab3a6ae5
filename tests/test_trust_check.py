"""``sortlab check``: the report on a project file from someone else, and the backup-first repair."""

from __future__ import annotations

import json
import sqlite3

from helpers.cli import cli
from test_trust import (
    HOSTILE_TRIGGER, _counts, _flip_cell_pointer, _jpeg_claiming, _labeled_project, _linear_weights, _tamper,
)

from storage.project import open_project


def _check(capsys, *args) -> tuple[int, dict]:
    code, out, err = cli(capsys, "check", *args, "--json")
    assert not err.strip() or code != 2, err
    return code, json.loads(out)


def test_check_of_the_users_own_project_is_clean(tmp_path, capsys):
    path, _ = _labeled_project(tmp_path / "own.sortlab", mailed=False)
    code, report = _check(capsys, path, "--integrity")
    assert code == 0 and report["clean"], report
    assert report["integrity_check"] == "integrity_check" and report["integrity"] == []
    code, out, _ = cli(capsys, "check", path)
    assert code == 0 and "integrity (quick_check): ok" in out and out.strip().endswith("clean")


def test_check_names_foreign_objects_and_orphans_and_what_it_would_fix(tmp_path, capsys):
    path, _ = _labeled_project(tmp_path / "mailed.sortlab")
    _tamper(path, "PRAGMA foreign_keys=OFF", "INSERT INTO labels (image_id, class_id, labeled_at, origin, "
            "twins_checked) VALUES (999, 1, '2024-01-01', 'manual', 0)",
            HOSTILE_TRIGGER, "CREATE VIEW everything AS SELECT * FROM images")
    before = _counts(path)
    code, report = _check(capsys, path)
    assert code == 1 and not report["clean"]
    assert {(item["kind"], item["name"]) for item in report["schema"]} == {("trigger", "wipe"), ("view", "everything")}
    assert report["orphans"] == {"labels": 1}
    assert "drop trigger 'wipe' on labels" in report["would_fix"]
    assert any("1 row(s) of labels" in line for line in report["would_fix"])
    assert _counts(path) == before and not list(tmp_path.glob("*.bak")), "check alone changes nothing"


def test_strip_foreign_backs_up_first_then_the_project_opens(tmp_path, capsys):
    path, _ = _labeled_project(tmp_path / "mailed.sortlab")
    _tamper(path, HOSTILE_TRIGGER, "CREATE TABLE stash (x)", "CREATE INDEX stash_x ON stash(x)")
    code, out, err = cli(capsys, "check", path, "--strip-foreign")
    assert code == 0, out + err
    assert "dropped trigger 'wipe' on labels" in out and "dropped table 'stash'" in out
    (backup,) = tmp_path.glob("mailed.sortlab.before-strip-*.bak")
    connection = sqlite3.connect(str(backup))
    assert connection.execute("SELECT count(*) FROM sqlite_master WHERE name = 'wipe'").fetchone()[0] == 1
    connection.close()
    project = open_project(path)  # refused before the repair
    try:
        from storage import catalog

        catalog.set_labels(project, [1, 2], catalog.list_classes(project)[0].id)
    finally:
        project.close()
    assert _counts(path) == (4, 2), "the trigger is gone, so labeling deleted nothing"


def test_check_reports_damage_and_strip_refuses_to_touch_a_damaged_file(tmp_path, capsys):
    path, _ = _labeled_project(tmp_path / "flipped.sortlab")
    _flip_cell_pointer(path, "classes")
    code, report = _check(capsys, path)
    assert code == 1 and report["integrity"], report
    assert report["cannot_fix"][0].startswith("damaged pages")
    data = path.read_bytes()
    code, _out, err = cli(capsys, "check", path, "--strip-foreign")
    assert code == 2 and "is damaged, so nothing was changed" in err
    assert path.read_bytes() == data and not list(tmp_path.glob("*.bak"))


def test_check_lists_stored_items_sortlab_will_not_load(tmp_path, capsys):
    path, (ant, bee) = _labeled_project(tmp_path / "items.sortlab")
    connection = sqlite3.connect(str(path))
    connection.execute("UPDATE images SET thumbnail = ? WHERE id = 3", (_jpeg_claiming(4000, 4000),))
    connection.execute(
        "INSERT INTO model_versions (id, created_at, method, backbone, layer, params, class_names, class_ids, "
        "metrics, weights, is_active, n_labeled) VALUES (7, '2024-01-01', 'logreg', 'efficientnet_lite0', "
        "'pooled', '{}', '[\"ant\", \"bee\"]', ?, '{}', ?, 0, 0)", (json.dumps([ant, bee]), _linear_weights(3)))
    connection.commit()
    connection.close()
    code, report = _check(capsys, path)
    assert code == 1 and any(line.startswith("model 7:") and "3 classes" in line for line in report["refused"])
    assert not any(line.startswith("thumbnail 3") for line in report["refused"]), "headers are read with --integrity"
    code, report = _check(capsys, path, "--integrity")
    assert any(line.startswith("thumbnail 3 ") and "4000x4000" in line for line in report["refused"])


def test_check_of_a_team_database_url_says_it_checks_files(capsys):
    code, _out, err = cli(capsys, "check", "postgresql://someone@db.example/team")
    assert code == 2 and "project files" in err


def _answer(monkeypatch, button_text: str) -> list:
    """Answer the GUI's question as a user would, by clicking one of its buttons (no modal loop)."""
    import gui.untrusted_project as untrusted

    shown = []

    def ask(parent, path, refusal):
        box = real_ask(parent, path, refusal)
        shown.append(box)
        box.exec = lambda: next(b for b in box.buttons() if b.text().replace("&", "") == button_text).click()
        return box

    real_ask = untrusted.ask_to_strip
    monkeypatch.setattr(untrusted, "ask_to_strip", ask)
    return shown


def test_the_app_offers_to_remove_foreign_objects_then_opens_the_project(tmp_path, qtbot, monkeypatch):
    from PySide6.QtWidgets import QWidget

    from gui.untrusted_project import REMOVE_AND_OPEN, strip_and_open
    from storage.trust import UntrustedProjectError

    path, _ = _labeled_project(tmp_path / "mailed.sortlab")
    _tamper(path, HOSTILE_TRIGGER)
    parent = QWidget()
    qtbot.addWidget(parent)
    try:
        open_project(path)
    except UntrustedProjectError as exc:
        refusal = exc
    shown = _answer(monkeypatch, "Cancel")
    assert strip_and_open(parent, path, refusal) is None
    assert "trigger 'wipe' on labels" in shown[0].text() and "sortlab check" not in shown[0].text()
    assert not list(tmp_path.glob("*.bak")), "declining changes nothing"
    _answer(monkeypatch, REMOVE_AND_OPEN)
    project = strip_and_open(parent, path, refusal)
    assert project is not None
    project.close()
    assert len(list(tmp_path.glob("mailed.sortlab.before-strip-*.bak"))) == 1


def test_strip_refuses_a_file_whose_own_tables_were_replaced_and_changes_nothing(tmp_path, capsys):
    path, _ = _labeled_project(tmp_path / "shadow.sortlab")
    _tamper(path, "ALTER TABLE labels RENAME TO labels_real", "CREATE VIEW labels AS SELECT * FROM labels_real")
    code, report = _check(capsys, path)
    assert code == 1 and "missing table 'labels': restore a backup or ask for a fresh copy" in report["cannot_fix"]
    data = path.read_bytes()
    code, _out, err = cli(capsys, "check", path, "--strip-foreign")
    assert code == 2 and "cannot be repaired (" in err and "missing table 'labels'" in err and "nothing was changed" in err
    assert path.read_bytes() == data and not list(tmp_path.glob("*.bak"))
