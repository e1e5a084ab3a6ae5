"""Folder watching: new files are predicted once complete, appended to the CSV, and never twice."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from engine.runtime.jobs import JobCancelled, JobContext, JobStatus, run_job
from engine.ship.csv_rows import PREDICTIONS_CSV_HEADER
from engine.ship.watch import (
    FailedPrediction,
    FolderWatcher,
    PredictBatchResult,
    PredictedRow,
    WatchBatch,
    is_candidate,
    watch_folder,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _png(path: Path, color=(255, 0, 0)) -> Path:
    Image.new("RGB", (8, 8), color).save(path)
    return path


class RecordingPredictor:
    """Predicts 'red' for every file, 'broken' files fail; records each batch it was given."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def __call__(self, paths):
        self.batches.append(list(paths))
        result = PredictBatchResult()
        for path in paths:
            if "broken" in Path(path).name:
                result.failed.append(FailedPrediction(path, "cannot decode image"))
            else:
                result.rows.append(PredictedRow(path, "red", 0.75))
        return result

    @property
    def seen(self) -> list[str]:
        return [p for batch in self.batches for p in batch]


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_candidates_skip_hidden_temporary_and_non_images():
    assert is_candidate("IMG_001.JPG")
    assert is_candidate("scan.png")
    assert not is_candidate(".IMG_001.jpg")
    assert not is_candidate("IMG_001.jpg.part")
    assert not is_candidate("notes.txt")
    assert not is_candidate("Thumbs.db")


def test_growing_file_is_not_ready_until_its_size_is_stable(tmp_path):
    watcher = FolderWatcher(tmp_path, stable_polls=2)
    target = tmp_path / "drop.jpg"
    target.write_bytes(b"\xff\xd8" + b"x" * 10)
    assert watcher.poll() == []
    with open(target, "ab") as handle:  # the camera is still writing
        handle.write(b"y" * 10)
    assert watcher.poll() == []
    assert watcher.poll() == []  # unchanged once
    assert watcher.poll() == [os.path.abspath(target)]  # unchanged twice


def test_empty_file_is_never_ready(tmp_path):
    watcher = FolderWatcher(tmp_path, stable_polls=1)
    (tmp_path / "empty.jpg").write_bytes(b"")
    for _ in range(4):
        assert watcher.poll() == []


def test_watch_appends_rows_and_skips_failures(tmp_path):
    folder = tmp_path / "drops"
    (folder / "sub").mkdir(parents=True)
    _png(folder / "a.png")
    _png(folder / "sub" / "b.png")
    (folder / "broken.png").write_bytes(b"not really a png")
    (folder / "readme.txt").write_text("ignored")
    out = tmp_path / "out.csv"
    predictor = RecordingPredictor()
    report = watch_folder(JobContext(), folder, out, predictor, poll_seconds=0, stable_polls=1, max_polls=4)
    rows = _read_csv(out)
    assert tuple(rows[0]) == PREDICTIONS_CSV_HEADER
    assert sorted(Path(r[0]).name for r in rows[1:]) == ["a.png", "b.png"]
    assert all(r[1] == "red" and float(r[2]) == 0.75 for r in rows[1:])
    assert report.predicted == 2
    assert [Path(f.path).name for f in report.failed] == ["broken.png"]
    # The broken file is tried once, not again on every poll while it stays unchanged.
    assert [Path(p).name for p in predictor.seen].count("broken.png") == 1


def test_restarted_watch_does_not_predict_files_already_in_the_csv(tmp_path):
    folder = tmp_path / "drops"
    folder.mkdir()
    _png(folder / "a.png")
    out = tmp_path / "out.csv"
    watch_folder(JobContext(), folder, out, RecordingPredictor(), poll_seconds=0, stable_polls=1, max_polls=3)
    _png(folder / "c.png", (0, 0, 255))
    second = RecordingPredictor()
    watch_folder(JobContext(), folder, out, second, poll_seconds=0, stable_polls=1, max_polls=3)
    assert [Path(p).name for p in second.seen] == ["c.png"]
    rows = _read_csv(out)
    assert [r[0] for r in rows].count("path") == 1  # header written once
    assert sorted(Path(r[0]).name for r in rows[1:]) == ["a.png", "c.png"]


def test_only_new_ignores_files_present_at_start(tmp_path):
    folder = tmp_path / "drops"
    folder.mkdir()
    _png(folder / "old.png")
    predictor = RecordingPredictor()

    def drop_later():
        time.sleep(0.15)
        _png(folder / "new.png")

    dropper = threading.Thread(target=drop_later)
    dropper.start()
    report = watch_folder(JobContext(), folder, tmp_path / "out.csv", predictor, poll_seconds=0.05, stable_polls=1,
                          only_new=True, max_polls=20)
    dropper.join()
    assert [Path(p).name for p in predictor.seen] == ["new.png"]
    assert report.predicted == 1


def test_watch_is_a_job_streaming_batches_until_cancelled(tmp_path):
    """Each predicted batch arrives as a WatchBatch partial; a cancel ends the job CANCELLED with the
    CSV complete up to the last batch."""
    _png(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not really a png")
    batches = []

    def on_batch(batch):
        batches.append(batch)
        context.cancel()

    context = JobContext(on_partial=on_batch)
    outcome = run_job(watch_folder, context, tmp_path, tmp_path / "out.csv", RecordingPredictor(),
                      poll_seconds=0, stable_polls=1)
    assert outcome.status is JobStatus.CANCELLED
    [batch] = batches
    assert isinstance(batch, WatchBatch)
    assert [Path(r.path).name for r in batch.rows] == ["a.png"]
    assert [Path(f.path).name for f in batch.failed] == ["broken.png"]
    assert [Path(r[0]).name for r in _read_csv(tmp_path / "out.csv")[1:]] == ["a.png"]


def test_cancel_wakes_the_watch_between_polls(tmp_path):
    context = JobContext()
    timer = threading.Timer(0.2, context.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        watch_folder(context, tmp_path, tmp_path / "out.csv", RecordingPredictor(), poll_seconds=60)
    assert time.monotonic() - started < 30  # woken by the cancel, not by the 60 s poll interval
    assert (tmp_path / "out.csv").read_text() == "path,class,probability\n"


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(NotADirectoryError):
        watch_folder(JobContext(), tmp_path / "nope", tmp_path / "out.csv", RecordingPredictor(), max_polls=1)


_CHILD = """
import signal, sys, time
# Ctrl+C raises KeyboardInterrupt even where the test run itself was started in the background, whose
# children inherit SIGINT ignored (Python then installs no handler and the child never stops).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[3])
from engine.runtime.jobs import JobContext
from engine.ship.watch import PredictBatchResult, PredictedRow, watch_folder

def predict(paths):
    return PredictBatchResult(rows=[PredictedRow(p, "red", 0.5) for p in paths])

def on_batch(batch):
    print("predicted", len(batch.rows), flush=True)

try:
    watch_folder(JobContext(on_partial=on_batch), sys.argv[1], sys.argv[2], predict, poll_seconds=0.05,
                 stable_polls=1)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_stops_cleanly_with_the_csv_flushed(tmp_path):
    folder = tmp_path / "drops"
    folder.mkdir()
    _png(folder / "a.png")
    out = tmp_path / "out.csv"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(folder), str(out), str(REPO_ROOT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "predicted 1"
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, stderr
    assert "interrupted" in stdout
    rows = _read_csv(out)
    assert [Path(r[0]).name for r in rows[1:]] == ["a.png"]


def test_csv_paths_follow_the_folder_as_given_and_resume_from_relative_rows(tmp_path, monkeypatch):
    """Like `predict --csv`: a relative folder gives relative rows, and a restart skips them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "drops" / "cam1").mkdir(parents=True)
    _png(tmp_path / "drops" / "cam1" / "a.png")
    predictor = RecordingPredictor()
    watch_folder(JobContext(), "drops", "out.csv", predictor, poll_seconds=0, stable_polls=1, max_polls=3)
    assert all(os.path.isabs(p) for p in predictor.seen)  # the predict function gets absolute paths
    assert [r[0] for r in _read_csv(tmp_path / "out.csv")[1:]] == [os.path.join("drops", "cam1", "a.png")]
    again = RecordingPredictor()
    watch_folder(JobContext(), "drops", "out.csv", again, poll_seconds=0, stable_polls=1, max_polls=3)
    assert again.seen == []


def test_without_a_csv_file_rows_go_to_the_stream(tmp_path):
    import io

    _png(tmp_path / "a.png")
    stream = io.StringIO()
    report = watch_folder(JobContext(), tmp_path, None, RecordingPredictor(), poll_seconds=0, stable_polls=1,
                          max_polls=3, stream=stream)
    assert report.predicted == 1
    rows = list(csv.reader(io.StringIO(stream.getvalue())))
    assert tuple(rows[0]) == PREDICTIONS_CSV_HEADER and rows[1] == [str(tmp_path / "a.png"), "red", "0.750000"]


def test_dotted_folder_is_shown_like_predict_csv_shows_it(tmp_path, monkeypatch):
    """`./drops` prints as `drops/...`, exactly as `predict --csv ./drops` does (pathlib's spelling)."""
    from engine.images.importing import collect_items

    monkeypatch.chdir(tmp_path)
    (tmp_path / "drops").mkdir()
    _png(tmp_path / "drops" / "a.png")
    watch_folder(JobContext(), "./drops", "out.csv", RecordingPredictor(), poll_seconds=0, stable_polls=1, max_polls=3)
    items, _skipped, _failed = collect_items(["./drops"])
    assert [r[0] for r in _read_csv(tmp_path / "out.csv")[1:]] == [item.path for item in items]


def test_predict_watch_argument_errors_are_one_line(tmp_path, capsys):
    from main import run_cli

    project = tmp_path / "p.sortlab"  # the arguments are refused before the project is opened
    for args, message in ((["--watch", str(tmp_path), str(tmp_path)], "exactly one folder"),
                          (["--watch", str(tmp_path), "--json"], "no --json"),
                          (["--watch", str(tmp_path / "absent")], "is not a folder")):
        capsys.readouterr()
        assert run_cli(["predict", str(project), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sortlab: error: ") and message in err and err.count("\n") == 1, err
