"""Watch a folder (camera drops) and predict each new image once its file has stopped growing.

The loop polls with ``os.scandir`` (robust on network shares and every OS, unlike change
notifications). A file is read only after its size and modification time were the same on
``stable_polls`` consecutive polls, so a half-written camera drop is never decoded. Each
prediction is appended to a CSV (``path,class,probability``, the format of ``predict --csv``)
and flushed at once, so a cancel, a Ctrl+C or a power cut loses at most the file being predicted.
``watch_folder`` is a job (``fn(context, ...)``): it streams each predicted batch as a partial and
runs until its context is cancelled.

Paths in the CSV follow the rule of ``predict --csv``: the folder as the user named it joined with
the file's path inside it (so ``watch drops`` writes ``drops/cam1/001.jpg``, an absolute folder gives
absolute paths). Files already listed in the CSV are skipped, so a restarted watcher resumes where it
stopped; relative rows are resolved against the current directory for that, so restart it from the
same directory (or give an absolute folder). The predict function is injected, which keeps this loop
testable without a model; it receives absolute paths.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.images.imaging import has_image_extension
from engine.runtime.jobs import JobCancelled, JobContext
from engine.ship.csv_rows import PREDICTIONS_CSV_HEADER, prediction_csv_row

# Partial downloads and editor/camera temp files: never images to predict.
TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", "~")


@dataclass(frozen=True)
class PredictedRow:
    """One prediction as the CSV holds it."""

    path: str
    class_name: str
    probability: float


@dataclass(frozen=True)
class FailedPrediction:
    path: str
    reason: str


@dataclass
class PredictBatchResult:
    """What a predict function returns for a batch of paths."""

    rows: list[PredictedRow] = field(default_factory=list)
    failed: list[FailedPrediction] = field(default_factory=list)


PredictFunction = Callable[[Sequence[str]], PredictBatchResult]


@dataclass(frozen=True)
class WatchBatch:
    """A watch job's partial result: the rows one predict call appended, and the files it could not read."""

    rows: list[PredictedRow]
    failed: list[FailedPrediction]


@dataclass
class WatchReport:
    """What a watch that ran to ``max_polls`` did (a cancelled watch reports through its partials)."""

    predicted: int = 0
    failed: list[FailedPrediction] = field(default_factory=list)
    polls: int = 0


@dataclass(frozen=True)
class _FileState:
    size: int
    mtime_ns: int


def is_candidate(name: str) -> bool:
    """Whether a file name in the watched folder looks like a finished image worth predicting."""
    lowered = name.lower()
    if name.startswith(".") or lowered.endswith(TEMPORARY_SUFFIXES):
        return False
    return has_image_extension(name)


def scan_folder(folder: Path, recursive: bool = True) -> dict[str, _FileState]:
    """Every candidate image file under ``folder`` with its size and modification time."""
    found: dict[str, _FileState] = {}
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not entry.name.startswith("."):
                        pending.append(Path(entry.path))
                    continue
                if not entry.is_file() or not is_candidate(entry.name):
                    continue
                stat = entry.stat()
            except OSError:  # vanished between listing and stat: look again next poll
                continue
            found[os.path.abspath(entry.path)] = _FileState(stat.st_size, stat.st_mtime_ns)
    return found


def read_done_paths(csv_path: Path) -> set[str]:
    """Paths already predicted in an earlier run (the CSV's first column)."""
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        return {os.path.abspath(row[0]) for index, row in enumerate(reader)
                if row and not (index == 0 and tuple(row) == PREDICTIONS_CSV_HEADER)}


class CsvAppender:
    """Appends prediction rows to a CSV, writing the header for a new file, flushing every row.

    With ``csv_path`` None the rows go to ``stream`` (stdout by default), header first."""

    def __init__(self, csv_path: Path | None, stream=None):
        self.path = Path(csv_path) if csv_path is not None else None
        if self.path is None:
            self._handle = stream if stream is not None else sys.stdout
            self._owned = False
            new_file = True
        else:
            new_file = not self.path.exists() or self.path.stat().st_size == 0
            self._handle = open(self.path, "a", newline="", encoding="utf-8")
            self._owned = True
        self._writer = csv.writer(self._handle, lineterminator="\n")
        if new_file:
            self._writer.writerow(PREDICTIONS_CSV_HEADER)
            self.flush()

    def write(self, rows: Iterable[PredictedRow]) -> None:
        for row in rows:
            self._writer.writerow(prediction_csv_row(row.path, row.class_name, row.probability))
        self.flush()

    def flush(self) -> None:
        self._handle.flush()
        if self._owned:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._owned and not self._handle.closed:
            self.flush()
            self._handle.close()

    def __enter__(self) -> CsvAppender:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class FolderWatcher:
    """Tracks file sizes between polls and hands out the files that are complete and not yet done."""

    def __init__(self, folder: Path, done: set[str] | None = None, *, stable_polls: int = 2, recursive: bool = True):
        self.folder = Path(folder)
        self.done = set(done or ())
        self.stable_polls = max(1, stable_polls)
        self.recursive = recursive
        self._last: dict[str, _FileState] = {}
        self._unchanged: dict[str, int] = {}
        self._failed_state: dict[str, _FileState] = {}

    def ignore_existing(self) -> None:
        """Treat everything in the folder now as done (watch only files that arrive later)."""
        self.done.update(scan_folder(self.folder, self.recursive))

    def poll(self) -> list[str]:
        """One look at the folder: the paths whose size has been stable long enough, sorted."""
        current = scan_folder(self.folder, self.recursive)
        ready: list[str] = []
        for path, state in current.items():
            if path in self.done or self._failed_state.get(path) == state:
                continue
            if state.size > 0 and self._last.get(path) == state:
                self._unchanged[path] = self._unchanged.get(path, 0) + 1
            else:
                self._unchanged[path] = 0
            if self._unchanged[path] >= self.stable_polls:
                ready.append(path)
        self._last = current
        for path in list(self._unchanged):
            if path not in current:
                del self._unchanged[path]
        return sorted(ready)

    def mark_done(self, paths: Iterable[str]) -> None:
        for path in paths:
            self.done.add(path)
            self._unchanged.pop(path, None)
            self._failed_state.pop(path, None)

    def mark_failed(self, path: str) -> None:
        """Do not retry a failed file unless it changes (e.g. the camera rewrites it)."""
        state = self._last.get(path)
        if state is not None:
            self._failed_state[path] = state
        self._unchanged.pop(path, None)


def watch_folder(
    context: JobContext,
    folder: str | os.PathLike,
    csv_path: str | os.PathLike | None,
    predict: PredictFunction,
    *,
    poll_seconds: float = 1.0,
    stream=None,
    stable_polls: int = 2,
    only_new: bool = False,
    recursive: bool = True,
    batch_size: int = 32,
    max_polls: int | None = None,
) -> WatchReport:
    """A job: predict images as they appear in ``folder`` and append them to ``csv_path``.

    Each predicted batch is reported as a ``WatchBatch`` partial (rows written, files that failed).
    Runs until the context is cancelled, which ends it with JobCancelled after the batch in progress
    (the CSV is flushed and closed first), or until ``max_polls`` polls were made, which returns the
    report. ``csv_path`` None writes the CSV to ``stream`` (stdout) instead, without resuming.
    """
    shown_folder = os.fspath(folder)
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder.")
    absolute_folder = os.path.abspath(folder)

    def shown(path: str) -> str:
        """The path as ``predict --csv`` would print it: the folder as given, then the path inside."""
        if not os.path.isabs(path):
            return path
        inside = os.path.relpath(path, absolute_folder)
        return path if inside.startswith(os.pardir) else str(Path(shown_folder) / inside)

    csv_path = Path(csv_path) if csv_path is not None else None
    done = read_done_paths(csv_path) if csv_path is not None else set()
    watcher = FolderWatcher(folder, done, stable_polls=stable_polls, recursive=recursive)
    if only_new:
        watcher.ignore_existing()
    report = WatchReport()
    with CsvAppender(csv_path, stream) as appender:
        while True:
            ready = watcher.poll()
            report.polls += 1
            for start in range(0, len(ready), batch_size):
                context.check_cancelled()
                result = predict(ready[start : start + batch_size])
                rows = [PredictedRow(shown(row.path), row.class_name, row.probability) for row in result.rows]
                appender.write(rows)
                watcher.mark_done(os.path.abspath(row.path) for row in result.rows)
                failed = []
                for failure in result.failed:
                    watcher.mark_failed(os.path.abspath(failure.path))
                    failed.append(FailedPrediction(shown(failure.path), failure.reason))
                report.predicted += len(rows)
                report.failed.extend(failed)
                if rows or failed:
                    context.partial(WatchBatch(rows, failed))
            if max_polls is not None and report.polls >= max_polls:
                return report
            if context.wait_cancelled(poll_seconds):
                raise JobCancelled()
