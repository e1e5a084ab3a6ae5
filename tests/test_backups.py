"""Backups: made while labeling goes on, listed with their counts, pruned, restored exactly."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import create_engine

from engine.runtime.backups import backup_project
from engine.runtime.jobs import JobContext, JobStatus, run_job
from storage import backups, catalog, images
from storage.errors import NotAProjectError, ProjectError
from storage.project import Project, open_project
from tests.helpers.cli import cli, cli_json


def _fill(project, n=300, blob=2000):
    ant = catalog.add_class(project, "ant").id
    bee = catalog.add_class(project, "bee").id
    rows = [images.NewImage(f"h{i}", f"{i}.jpg", f"/x/{i}.jpg", "cam", 4, 3, "JPEG", bytes([i % 251]) * blob, b"t")
            for i in range(n)]
    return images.add_images(project, rows), ant, bee


def _labels(project_or_path) -> dict[int, int | None]:
    if isinstance(project_or_path, Project):
        project = project_or_path
        return {s.image_id: s.class_id for s in catalog.label_states(project, images_ids(project))}
    with open_project(project_or_path) as project:
        return _labels(project)


def images_ids(project):
    with project.session() as session:
        from storage.models import Image
        return list(session.scalars(Image.__table__.select().with_only_columns(Image.id)))


def test_labeling_goes_on_while_a_backup_is_being_made_and_the_copy_is_consistent(project):
    ids, ant, bee = _fill(project, n=400)
    catalog.set_labels(project, ids[:100], ant)
    at_start = _labels(project)
    steps = []
    turn, done = threading.Event(), threading.Event()
    writes = []

    def labeler():  # a label key pressed between two steps of the copy, five times
        for k in range(5):
            if not turn.wait(30):
                return
            turn.clear()
            catalog.set_labels(project, [ids[200 + k]], bee)
            writes.append(k)
            done.set()

    def pace(fraction):  # the backup's progress callback: let one label write happen, wait for it
        steps.append(fraction)
        if len(steps) <= 5:
            turn.set()
            assert done.wait(30), "a label write waited on the backup"
            done.clear()

    thread = threading.Thread(target=labeler)
    thread.start()
    info = backups.make_backup(project, backups.MANUAL, progress=pace, pages=8, pause=0)
    thread.join(30)
    assert writes == [0, 1, 2, 3, 4]
    # The copy is the project as it was when the backup began (one read snapshot), not a mix.
    assert len(steps) > 5 and _labels(info.path) == at_start != _labels(project)
    assert (info.kind, info.images, info.labels) == (backups.MANUAL, 400, 100)
    assert not list(backups.backups_dir(project).glob("*.partial"))


def test_a_copy_restarted_by_writes_finishes_in_one_step_and_is_consistent(project, tmp_path):
    """Without the read snapshot (make_backup holds one), each write between two steps restarts the
    copy; after a few restarts the rest is copied in one step: the copy is the project after the writes."""
    import sqlite3

    ids, ant, bee = _fill(project, n=300)
    steps = []

    def write_between_steps(_fraction):
        steps.append(_fraction)
        if len(steps) <= 6:
            catalog.set_labels(project, [ids[len(steps)]], bee)

    source = sqlite3.connect(str(project.path))
    try:
        backups._copy(source, tmp_path / "copy.sortlab", write_between_steps, None, pages=8, pause=0)
    finally:
        source.close()
    full = 300 * 2000 // 4096 // 8  # the steps a paced copy of the whole file takes
    assert len(steps) <= backups.MAX_RESTARTS < full  # restarted, then copied in one step
    assert _labels(tmp_path / "copy.sortlab") == _labels(project)


def test_restoring_gives_exactly_the_labels_of_that_time(tmp_path):
    path = tmp_path / "p.sortlab"
    with open_project(path, create=True) as project:
        ids, ant, bee = _fill(project, n=50)
        catalog.set_labels(project, ids[:20], ant)
        then = _labels(project)
        made = backups.make_backup(project, now=dt.datetime(2026, 12, 1, 14, 0))
        catalog.set_labels(project, ids[10:40], bee)
        catalog.remove_class(project, ant)
        later = _labels(project)
    assert later != then
    kept = backups.restore_backup(path, made.path)
    assert _labels(path) == then
    assert _labels(kept.path) == later and kept.kind == backups.BEFORE_RESTORE
    listed = backups.list_backups(path)
    assert [b.kind for b in listed] == [backups.BEFORE_RESTORE, backups.DAILY]
    assert (listed[1].images, listed[1].labels) == (50, 20)
    # Side by side: a copy that opens as its own project, the original untouched.
    copy = backups.copy_backup(kept.path, tmp_path / "side.sortlab")
    assert _labels(copy) == later and _labels(path) == then
    with pytest.raises(ProjectError, match="already exists"):
        backups.copy_backup(kept.path, copy)


def test_pruning_keeps_the_newest_daily_backups_by_count_and_age(project):
    _fill(project, n=5)
    start = dt.datetime(2026, 11, 1, 12, 0)
    for day in range(10):
        backups.make_backup(project, now=start + dt.timedelta(days=day))
    manual = backups.make_backup(project, backups.MANUAL, now=start)
    deleted = backups.prune_backups(project, keep=4, max_age_days=30, now=start + dt.timedelta(days=10))
    daily = [b.made_at for b in backups.list_backups(project) if b.kind == backups.DAILY]
    assert daily == [start + dt.timedelta(days=d) for d in (9, 8, 7, 6)] and len(deleted) == 6
    assert manual.path.exists()  # only daily backups are pruned
    backups.prune_backups(project, keep=4, max_age_days=2, now=start + dt.timedelta(days=10))
    assert [b.made_at for b in backups.list_backups(project) if b.kind == backups.DAILY] == [
        start + dt.timedelta(days=d) for d in (9, 8)]
    backups.prune_backups(project, keep=4, max_age_days=1, now=start + dt.timedelta(days=60))
    assert len([b for b in backups.list_backups(project) if b.kind == backups.DAILY]) == 1  # the newest stays


def test_the_daily_job_makes_one_backup_a_day_prunes_and_obeys_the_setting(project):
    _fill(project, n=5)
    day = dt.datetime(2026, 12, 1, 12, 0)
    outcome = run_job(backup_project, JobContext(), project, now=day)
    assert outcome.status is JobStatus.DONE and outcome.result.made.kind == backups.DAILY
    assert run_job(backup_project, JobContext(), project, now=day + dt.timedelta(minutes=5)).result.made is None
    backups.set_backup_settings(project, backups.BackupSettings(daily=True, keep=2, max_age_days=30))
    for n in range(1, 4):
        run_job(backup_project, JobContext(), project, now=day + dt.timedelta(days=n))
    assert len(backups.list_backups(project)) == 2
    backups.set_backup_settings(project, backups.BackupSettings(daily=False))
    off = run_job(backup_project, JobContext(), project, now=day + dt.timedelta(days=9)).result
    assert off.made is None and "off" in off.reason
    context = JobContext()
    context.cancel()
    cancelled = run_job(backup_project, context, project, daily=False)
    assert cancelled.status is JobStatus.CANCELLED
    assert not list(backups.backups_dir(project).glob("*manual*"))


def test_bad_backups_and_team_projects_get_clear_messages(project, tmp_path):
    _fill(project, n=3)
    not_a_project = tmp_path / "notes.sortlab"
    not_a_project.write_bytes(b"hello")
    with pytest.raises(NotAProjectError, match="cannot be read"):
        backups.check_backup(not_a_project)
    good = backups.make_backup(project)
    damaged = tmp_path / "damaged.sortlab"
    data = bytearray(good.path.read_bytes())
    for offset in range(4096 + 16, len(data), 4096):  # scribble over each page after the first
        data[offset:offset + 64] = b"\xff" * 64
    damaged.write_bytes(bytes(data))
    with pytest.raises(NotAProjectError):
        backups.check_backup(damaged)
    with pytest.raises(ProjectError, match="itself"):
        backups.restore_backup(project.path, project.path)
    team = Project(None, create_engine("sqlite://"), location="postgresql://db/x", database_name="x")
    with pytest.raises(backups.BackupsNotHere, match="server's own backups"):
        backups.list_backups(team)


def test_cli_backups_restore_and_labels_as_of(tmp_path, capsys):
    path = tmp_path / "c.sortlab"
    with open_project(path, create=True) as project:
        ids, ant, bee = _fill(project, n=10)
        catalog.set_labels(project, ids[:4], ant)
    made = cli_json(capsys, "backups", path, "--now", "--keep", "3")
    assert made["settings"] == {"daily": True, "keep": 3, "max_age_days": 30}
    assert [(b["number"], b["kind"], b["images"], b["labels"]) for b in made["backups"]] == [(1, "manual", 10, 4)]
    when = dt.datetime.now(dt.timezone.utc)
    with open_project(path) as project:
        catalog.set_labels(project, ids[:6], bee)
    shown = cli_json(capsys, "labels-as-of", path, when.isoformat())
    assert shown["changes"] == {str(i): ant for i in ids[:4]} | {str(ids[4]): None, str(ids[5]): None}
    assert not shown["applied"]
    cli_json(capsys, "labels-as-of", path, when.isoformat(), "--images", ids[0], ids[5], "--apply")
    assert [c for i, c in sorted(_labels(path).items())][:6] == [ant, bee, bee, bee, bee, None]
    restored = cli_json(capsys, "restore", path, "1")
    assert restored["labels"] == 4 and _labels(path)[ids[1]] == ant
    code, _, err = cli(capsys, "restore", path, "9")
    assert code == 2 and "no backup number 9" in err
    code, _, err = cli(capsys, "labels-as-of", path, "Tuesday")
    assert code == 2 and "Cannot read the time" in err
