"""A full disk and a read-only project give clear messages and lose nothing already saved.

Three ways to fill the disk:
- a real, tiny tmpfs mount (needs root and mount permission; skipped otherwise);
- SQLite's own ``max_page_count`` limit, which makes SQLite raise its real SQLITE_FULL
  ("database or disk is full") on any machine;
- an injected ``sqlite3.OperationalError('database or disk is full')`` at the cursor, in the middle
  of an import batch (after the image rows, before their folder labels), to prove the batch is one
  transaction.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import event

from engine.images.importing import import_paths
from engine.runtime.jobs import JobContext, JobStatus, run_job, user_message
from helpers.cli import cli
from helpers.proof import incomplete_image_rows
from storage import catalog
from storage.errors import DiskFullError, ProjectError, ReadOnlyProjectError
from storage.project import open_project

CLASSES = ("ant", "bee")


def _write_images(folder: Path, count: int, seed: int, side: int = 64) -> None:
    rng = np.random.default_rng(seed)
    for index in range(count):
        target = folder / CLASSES[index % 2]
        target.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(target / f"s{seed}-{index}.png")


def _assert_clear(message: str) -> None:
    """One readable sentence or two: no SQL, no parameters, no traceback, no SQLAlchemy link."""
    assert message.strip()
    assert "\n" not in message, message
    for noise in ("[SQL", "parameters", "sqlalche.me", "Traceback", "OperationalError", "INSERT", "BEGIN"):
        assert noise not in message, message
    assert len(message) < 300, message


def _snapshot(db_path: Path) -> tuple[dict[int, int], dict[int, str]]:
    """(labels, sha256 of each image's data) read with plain sqlite3 (WAL included)."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        labels = dict(connection.execute("SELECT image_id, class_id FROM labels"))
        data = {i: hashlib.sha256(d).hexdigest() for i, d in connection.execute("SELECT id, data FROM images")}
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        connection.close()
    return labels, data


def _seeded_project(path: Path, folder: Path, count: int = 12):
    project = open_project(path, create=True)
    _write_images(folder, count, seed=1)
    report = import_paths(JobContext(), project, [folder], labels_from_folders=True)
    assert report.imported == count
    ids = report.image_ids
    bee = catalog.find_class(project, "bee").id
    catalog.set_labels(project, ids[:3], bee)  # manual labels over the folder labels
    catalog.set_labels(project, ids[3:4], None)
    return project


def _keep_writing_labels(project, ids: list[int]) -> tuple[dict[int, int | None], int]:
    """Label images one by one until the disk refuses; returns (labels saved, refusals)."""
    classes = [c.id for c in catalog.list_classes(project)]
    saved: dict[int, int | None] = {}
    refusals = 0
    for step, image_id in enumerate(ids):
        class_id = classes[step % len(classes)]
        try:
            catalog.set_labels(project, [image_id], class_id)
        except DiskFullError as exc:
            _assert_clear(str(exc))
            refusals += 1
            continue
        saved[image_id] = class_id
    return saved, refusals


def _limit_pages(project, extra_pages: int) -> None:
    """Make SQLite itself refuse to grow the file past its current size plus ``extra_pages``."""
    with project.session() as session:
        pages = session.connection().exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(project.engine, "connect")
    def _limit(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA max_page_count={pages + extra_pages}")

    project.engine.dispose()  # pooled connections reconnect with the limit


def test_full_database_gives_clear_message_and_keeps_saved_work(tmp_path):
    project = _seeded_project(tmp_path / "p.sortlab", tmp_path / "first")
    labels_before, data_before = _snapshot(project.path)
    _limit_pages(project, extra_pages=6)

    _write_images(tmp_path / "more", 120, seed=2)
    outcome = run_job(import_paths, JobContext(), project, [tmp_path / "more"], labels_from_folders=True)
    assert outcome.status is JobStatus.FAILED
    _assert_clear(outcome.error)
    assert "full" in outcome.error.lower()

    saved, _ = _keep_writing_labels(project, sorted(data_before))
    project.close()

    labels_after, data_after = _snapshot(tmp_path / "p.sortlab")
    assert {i: h for i, h in data_after.items() if i in data_before} == data_before, "stored images changed"
    expected = dict(labels_before)
    for image_id, class_id in saved.items():
        expected[image_id] = class_id
    assert labels_after == expected
    assert not incomplete_image_rows(tmp_path / "p.sortlab")

    # Once there is room again, the project works as before.
    reopened = open_project(tmp_path / "p.sortlab")
    try:
        report = import_paths(JobContext(), reopened, [tmp_path / "more"], labels_from_folders=True)
        assert report.imported + report.duplicates == 120 and not report.failed
    finally:
        reopened.close()


def test_disk_full_in_the_middle_of_an_import_batch_leaves_no_half_batch(tmp_path):
    """The disk fills after a batch's image rows were written but before their labels: the whole
    batch must roll back (no image without its folder label), with a clear message."""
    project = _seeded_project(tmp_path / "p.sortlab", tmp_path / "first")
    labels_before, data_before = _snapshot(project.path)

    @event.listens_for(project.engine, "before_cursor_execute")
    def _fill_disk(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("INSERT INTO LABELS"):
            raise sqlite3.OperationalError("database or disk is full")

    _write_images(tmp_path / "more", 20, seed=3)
    outcome = run_job(import_paths, JobContext(), project, [tmp_path / "more"], labels_from_folders=True)
    assert outcome.status is JobStatus.FAILED, outcome
    _assert_clear(outcome.error)
    assert "full" in outcome.error.lower()
    event.remove(project.engine, "before_cursor_execute", _fill_disk)
    project.close()
    assert _snapshot(tmp_path / "p.sortlab") == (labels_before, data_before), "a half batch was committed"


def test_os_level_enospc_gets_the_disk_full_message():
    message = user_message(OSError(errno.ENOSPC, "No space left on device"))
    _assert_clear(message)
    assert "full" in message.lower()


@contextlib.contextmanager
def mounted_tmpfs(name: str, options: str):
    """A real small tmpfs mounted with ``options``, or a skip where this user cannot mount one."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = Path("/tmp") / f"sortlab-{name}-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


@pytest.fixture
def tiny_tmpfs():
    """A real 1.5 MB file system."""
    with mounted_tmpfs("full", "size=1536k") as mount_point:
        yield mount_point


def test_real_full_file_system_gives_clear_message_and_keeps_saved_work(tiny_tmpfs, tmp_path):
    path = tiny_tmpfs / "p.sortlab"
    project = _seeded_project(path, tmp_path / "first")
    labels_before, data_before = _snapshot(path)

    _write_images(tmp_path / "more", 200, seed=4)  # ~2.5 MB of PNG: more than the disk holds
    outcome = run_job(import_paths, JobContext(), project, [tmp_path / "more"], labels_from_folders=True)
    assert outcome.status is JobStatus.FAILED, "the import should have filled the 1.5 MB disk"
    _assert_clear(outcome.error)
    assert "full" in outcome.error.lower()

    saved, _ = _keep_writing_labels(project, sorted(data_before))
    project.close()

    # Copy what is on the full disk (file + WAL) elsewhere and check it there.
    rescued = tmp_path / "rescued"
    rescued.mkdir()
    for name in os.listdir(tiny_tmpfs):
        shutil.copy2(tiny_tmpfs / name, rescued / name)
    labels_after, data_after = _snapshot(rescued / "p.sortlab")
    assert {i: h for i, h in data_after.items() if i in data_before} == data_before
    expected = dict(labels_before)
    expected.update(saved)
    assert {i: c for i, c in labels_after.items() if i in data_before} == expected
    # Batches that committed before the disk filled are whole: each new image has its folder label.
    assert set(data_after) - set(data_before) <= set(labels_after)
    assert not incomplete_image_rows(rescued / "p.sortlab")
    reopened = open_project(rescued / "p.sortlab")
    try:
        catalog.set_labels(reopened, [min(data_before)], catalog.find_class(reopened, "ant").id)
    finally:
        reopened.close()


def test_read_only_project_file_is_refused_clearly_and_left_untouched(tmp_path):
    project = _seeded_project(tmp_path / "p.sortlab", tmp_path / "first")
    project.close()
    path = tmp_path / "p.sortlab"
    snapshot = _snapshot(path)
    raw = path.read_bytes()
    path.chmod(0o444)
    try:
        with pytest.raises(ReadOnlyProjectError) as caught:
            open_project(path)
        _assert_clear(str(caught.value))
        assert "read-only" in str(caught.value)
        outcome = run_job(lambda _context: open_project(path), JobContext())
        assert outcome.status is JobStatus.FAILED and outcome.error == str(caught.value)
        assert path.read_bytes() == raw, "refusing to open must not write to the file"
    finally:
        path.chmod(0o644)
    assert _snapshot(path) == snapshot


def test_project_that_becomes_read_only_while_open_refuses_writes_clearly(tmp_path):
    """The file system went read-only under an open project (simulated with PRAGMA query_only):
    labeling and importing fail with a clear message; everything saved stays."""
    project = _seeded_project(tmp_path / "p.sortlab", tmp_path / "first")
    snapshot = _snapshot(project.path)

    @event.listens_for(project.engine, "connect")
    def _read_only(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA query_only=ON")

    project.engine.dispose()
    ids = sorted(snapshot[1])
    with pytest.raises(ReadOnlyProjectError) as caught:
        catalog.set_labels(project, ids[:2], catalog.find_class(project, "ant").id)
    _assert_clear(str(caught.value))
    with pytest.raises(ProjectError):
        catalog.add_class(project, "wasp")
    _write_images(tmp_path / "more", 5, seed=5)
    outcome = run_job(import_paths, JobContext(), project, [tmp_path / "more"])
    assert outcome.status is JobStatus.FAILED
    _assert_clear(outcome.error)
    project.close()
    assert _snapshot(tmp_path / "p.sortlab") == snapshot


# ------------------------------------------------------------------------------------ labeling


def test_labeling_on_a_full_disk_is_refused_clearly_and_keeps_earlier_labels(tmp_path):
    """Many new labels on a database that may not grow: some are refused (DiskFullError with a clear
    message), every label reported saved is still there afterwards."""
    project = open_project(tmp_path / "p.sortlab", create=True)
    _write_images(tmp_path / "unlabeled", 240, seed=6, side=8)
    report = import_paths(JobContext(), project, [tmp_path / "unlabeled"])
    assert report.imported == 240
    catalog.add_class(project, "ant")
    catalog.add_class(project, "bee")
    _limit_pages(project, extra_pages=0)
    saved, refusals = _keep_writing_labels(project, sorted(report.image_ids))
    assert refusals > 0, "the full database should have refused some labels"
    project.close()
    labels_after, _data = _snapshot(tmp_path / "p.sortlab")
    assert {i: labels_after.get(i) for i in saved} == saved


# ------------------------------------------------------------------------------------ the CLI


def _assert_one_error_line(code: int, err: str, *words: str) -> None:
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("sortlab: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in err.lower(), err


@pytest.fixture
def small_project(tmp_path):
    path = tmp_path / "p.sortlab"
    _seeded_project(path, tmp_path / "first").close()
    return path


def test_cli_dataset_export_on_a_full_disk_prints_one_line(small_project, tmp_path, capsys, monkeypatch):
    from pathlib import Path as RealPath

    real_write_bytes = RealPath.write_bytes
    written = []

    def fill_after_three(self, data):
        if len(written) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        written.append(self)
        return real_write_bytes(self, data)

    monkeypatch.setattr(RealPath, "write_bytes", fill_after_three)
    code, out, err = cli(capsys, "dataset-export", small_project, tmp_path / "out")
    monkeypatch.undo()
    _assert_one_error_line(code, err, "disk is full")
    assert out == "" and len(written) == 3
    assert _snapshot(small_project)[0], "the project still opens with its labels"


def test_cli_into_a_read_only_folder_prints_one_line(small_project, tmp_path, capsys):
    """A real read-only file system (a tmpfs mounted ro; skipped where mounting is not allowed)."""
    with mounted_tmpfs("ro", "size=256k,ro") as mount_point:
        code, out, err = cli(capsys, "dataset-export", small_project, mount_point / "out")
        _assert_one_error_line(code, err, "read-only", str(mount_point / "out"))
        _write_images(tmp_path / "new", 2, seed=7)
        code, out, err = cli(capsys, "import", mount_point / "new.sortlab", tmp_path / "new")
        _assert_one_error_line(code, err)
        code, out, err = cli(capsys, "predict", small_project, "--watch", tmp_path / "new", "--csv",
                              mount_point / "watch.csv")
        _assert_one_error_line(code, err)  # no model yet: refused before touching the read-only folder


def test_cli_permission_error_prints_one_line(small_project, tmp_path, capsys, monkeypatch):
    """Runs everywhere (root ignores chmod): a PermissionError injected where the folder is made."""
    import engine.ship.dataset_export as dataset_export

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(dataset_export.Path, "mkdir", refuse)
    code, out, err = cli(capsys, "dataset-export", small_project, tmp_path / "out")
    _assert_one_error_line(code, err, "Permission denied", str(tmp_path / "out"))


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as caught:
        cli(capsys, "predict")
    assert caught.value.code == 2
    err = capsys.readouterr().err
    _assert_one_error_line(2, err, "predict", "required")
