"""Crash safety: SIGKILL a child process that imports, labels and trains, then prove nothing is lost.

The child (tests/helpers/crash_worker.py) prints ``saved <image_id> <class>`` only after the label
commit returned, flushed, to a file (a write() lands in the kernel, so it survives SIGKILL). After
each kill, the project file must pass ``PRAGMA integrity_check``, hold every reported label (or the
one write that was in flight when the kill came), hold every reported imported image whole, and
open and accept a new label.

The fast variant (8 kills, import + labeling) runs in ``make test``; the slow one (36 kills, a third
of them while a training thread fits models and extracts features) in ``make test-slow``. Each kill
comes a random moment after the round's first committed work (its first import batch, else its first
saved label), never after a fixed time from the start: a child still importing modules on a busy
machine would be killed before doing anything and prove nothing. The child marks ``training-started``
/ ``features-started``; a training round's kill comes 0-12 s after its first ``training-started``,
and kills are counted by what the training thread was doing (fit or feature extraction).
A kill during a fit leaves that run's row at status 'running' (checked: never more rows than such kills).
"""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.proof import REPO_ROOT, incomplete_image_rows, max_image_id, report_counts

WORKER = REPO_ROOT / "tests" / "helpers" / "crash_worker.py"
CLASSES = ["ant", "bee", "wasp"]
WORK_STARTED_TIMEOUT_S = 180  # a training child imports torch first, slow on a busy machine


def _write_images(folder: Path, count: int, rng: random.Random) -> None:
    """Small, distinct images in class folders (PNG and JPEG), for a folder-per-class import."""
    np_rng = np.random.default_rng(rng.randrange(2**32))
    for index in range(count):
        class_dir = folder / CLASSES[index % len(CLASSES)]
        class_dir.mkdir(parents=True, exist_ok=True)
        side = int(np_rng.integers(24, 64))
        pixels = np_rng.integers(0, 256, size=(side, side + 7, 3), dtype=np.uint8)
        fmt = "PNG" if index % 2 else "JPEG"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        (class_dir / f"img{index:05d}.{fmt.lower()}").write_bytes(buffer.getvalue())


def _labels(db_path: Path) -> dict[int, int]:
    connection = sqlite3.connect(str(db_path))
    try:
        return dict(connection.execute("SELECT image_id, class_id FROM labels").fetchall())
    finally:
        connection.close()


def _parse_class(text: str) -> int | None:
    return None if text == "none" else int(text)


@dataclass
class CrashLedger:
    """What the children reported, and what the file must therefore hold."""

    expected: dict[int, int | None] = field(default_factory=dict)  # image id -> label (None = unlabeled)
    reported_images: set[int] = field(default_factory=set)
    checked_up_to_image: int = 0
    counts: Counter = field(default_factory=Counter)
    # What the last child's training thread was doing when it was killed: None, 'fit' or 'features'.
    training_phase_at_kill: str | None = None

    def absorb(self, lines: list[str]) -> dict[int, int | None]:
        """Apply a child's lines; return the label writes that were in flight at the kill."""
        in_flight: dict[int, int | None] = {}
        self.training_phase_at_kill = None
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "begin":
                in_flight[int(parts[1])] = _parse_class(parts[2])
            elif parts[0] == "saved":
                image_id = int(parts[1])
                self.expected[image_id] = _parse_class(parts[2])
                in_flight.pop(image_id, None)
                self.counts["labels_reported_saved"] += 1
            elif parts[0] == "images":
                self.reported_images.update(int(p) for p in parts[1:])
            elif parts[0] == "training-started":
                self.training_phase_at_kill = "fit"
            elif parts[0] == "features-started":
                self.training_phase_at_kill = "features"
            elif parts[0] == "model":
                self.counts["models_reported"] += 1
                self.training_phase_at_kill = None
            elif parts[0] == "features":
                self.training_phase_at_kill = None
            elif parts[0] == "error":
                pytest.fail(f"the child reported an error before the kill: {line}")
        return in_flight


def _check_after_kill(path: Path, ledger: CrashLedger, in_flight: dict[int, int | None], rng: random.Random) -> None:
    from storage import catalog
    from storage.project import open_project

    # 1. The file is a sound database (plain sqlite3, so this does not trust Sortlab's code).
    connection = sqlite3.connect(str(path))
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        connection.close()
    ledger.counts["integrity_checks_ok"] += 1

    # 2. Every label the child reported saved is there (or the write in flight at the kill won).
    actual = _labels(path)
    lost = {
        image_id: (want, actual.get(image_id))
        for image_id, want in ledger.expected.items()
        if actual.get(image_id) != want and not (image_id in in_flight and actual.get(image_id) == in_flight[image_id])
    }
    assert not lost, f"labels lost or changed after a kill (image: (reported, in file)): {dict(list(lost.items())[:10])}"
    ledger.counts["label_checks_ok"] += len(ledger.expected)
    for image_id in in_flight:
        ledger.expected[image_id] = actual.get(image_id)

    # 3. Every reported image is there, and every image row (new since the last check) is whole.
    connection = sqlite3.connect(str(path))
    try:
        present = {row[0] for row in connection.execute("SELECT id FROM images")}
    finally:
        connection.close()
    missing = ledger.reported_images - present
    assert not missing, f"imported images reported committed are gone: {sorted(missing)[:10]}"
    problems = incomplete_image_rows(path, after_id=ledger.checked_up_to_image)
    assert not problems, problems[:10]
    ledger.counts["image_rows_checked_whole"] += max_image_id(path) - ledger.checked_up_to_image
    ledger.checked_up_to_image = max_image_id(path)

    # 4. Engine rows are whole: feature vectors of the right length, model weights that load.
    _check_engine_rows(path, ledger)

    # 5. The project opens (with Sortlab's checks and migrations) and takes a new label.
    project = open_project(path)
    try:
        ids = sorted(present)
        classes = catalog.list_classes(project)
        image_id = rng.choice(ids)
        class_id = rng.choice(classes).id
        catalog.set_labels(project, [image_id], class_id)
        assert catalog.label_states(project, [image_id])[0].class_id == class_id
        ledger.expected[image_id] = class_id
    finally:
        project.close()
    ledger.counts["reopened_and_labeled"] += 1


def _check_engine_rows(path: Path, ledger: CrashLedger) -> None:
    connection = sqlite3.connect(str(path))
    try:
        bad_vectors = connection.execute(
            "SELECT count(*) FROM features JOIN feature_sets ON feature_sets.id = features.feature_set_id"
            " WHERE length(features.vector) != 4 * feature_sets.dim"
        ).fetchone()[0]
        models = connection.execute("SELECT id, weights, is_active FROM model_versions").fetchall()
        vectors = connection.execute("SELECT count(*) FROM features").fetchone()[0]
        stale_runs = connection.execute("SELECT count(*) FROM training_runs WHERE status = 'running'").fetchone()[0]
    finally:
        connection.close()
    assert bad_vectors == 0, f"{bad_vectors} feature vectors have the wrong length"
    if models:
        from engine.models.classifiers import LinearPredictor

        for model_id, weights, _active in models:
            assert weights, f"model version {model_id} has no weights"
            LinearPredictor.from_bytes(weights)
        assert sum(bool(active) for *_, active in models) == 1, "exactly one model must be active"
    ledger.counts["models_in_file"] = len(models)
    ledger.counts["feature_vectors_in_file"] = vectors
    ledger.counts["training_runs_left_running"] = stale_runs
    # A run row says 'running' until its training returns, so only a kill during a fit can leave one
    # behind (at most one per such kill); nothing else may. No code treats these rows as live.
    assert stale_runs <= ledger.counts["kills_while_fitting"], (
        f"{stale_runs} training runs left 'running' but only {ledger.counts['kills_while_fitting']} kills "
        "came during a training")


def _run_child_and_kill(path: Path, folder: Path, seed: int, tasks: str, delay: float, log_dir: Path,
                        start_marker: bytes) -> list[str]:
    """Start the child, wait for ``start_marker`` in its output, wait ``delay`` more, SIGKILL it."""
    out_path = log_dir / f"child-{seed}.out"
    err_path = log_dir / f"child-{seed}.err"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = subprocess.Popen(
            [sys.executable, str(WORKER), str(path), str(folder), str(seed), tasks],
            stdout=out, stderr=err, env=env, cwd=str(REPO_ROOT),
        )
    try:
        deadline = time.monotonic() + WORK_STARTED_TIMEOUT_S
        while start_marker not in out_path.read_bytes():
            if child.poll() is not None:
                pytest.fail(f"the child exited before {start_marker!r}: {err_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the child did not print {start_marker!r} in time")
            time.sleep(0.01)
        time.sleep(delay)
        alive = child.poll() is None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
    assert alive, f"the child stopped by itself before the kill: {err_path.read_text()[-2000:]}"
    assert child.returncode == -signal.SIGKILL
    return out_path.read_text().splitlines()


def _crash_campaign(tmp_path: Path, request, *, kills: int, seed: int, images_per_round: int,
                    max_delay: float, with_training: bool) -> Counter:
    from engine.images.importing import import_paths
    from engine.runtime.jobs import JobContext
    from storage import catalog
    from storage.project import create_project

    rng = random.Random(seed)
    path = tmp_path / "crash.sortlab"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    seed_folder = tmp_path / "seed-images"
    _write_images(seed_folder, 30, rng)
    project = create_project(path)
    try:
        for name in CLASSES:
            catalog.add_class(project, name)
        report = import_paths(JobContext(), project, [seed_folder], labels_from_folders=True)
        assert report.imported == 30 and not report.failed
        if with_training:  # so the child's first training has features to train on
            from engine.features.extraction import ensure_features

            ensure_features(JobContext(), project)
    finally:
        project.close()

    ledger = CrashLedger()
    task_menu = ["import,label", "import,label", "label", "import"]
    if with_training:
        task_menu += ["label,train", "import,label,train"]
    for round_index in range(kills):
        folder = tmp_path / f"round-{round_index}"
        _write_images(folder, images_per_round, rng)
        tasks = task_menu[round_index % len(task_menu)]
        # The random delay starts once the round's work is under way (see the module docstring).
        if "train" in tasks:
            delay, marker = rng.uniform(0.0, 12.0), b"training-started\n"
        else:
            delay, marker = rng.uniform(0.02, max_delay), b"\nimages " if "import" in tasks else b"\nsaved "
        lines = _run_child_and_kill(path, folder, seed * 1000 + round_index, tasks, delay, log_dir, marker)
        in_flight = ledger.absorb(lines)
        ledger.counts["kills"] += 1
        ledger.counts[f"kills_during_{tasks.replace(',', '+')}"] += 1
        ledger.counts["kills_with_write_in_flight"] += bool(in_flight)
        if ledger.training_phase_at_kill == "fit":
            ledger.counts["kills_while_fitting"] += 1
        elif ledger.training_phase_at_kill == "features":
            ledger.counts["kills_while_extracting_features"] += 1
        _check_after_kill(path, ledger, in_flight, rng)
    ledger.counts["images_reported_committed"] = len(ledger.reported_images)
    ledger.counts["labels_tracked_at_end"] = len(ledger.expected)
    report_counts(request, f"crash safety seed={seed}", dict(ledger.counts))
    return ledger.counts


def test_sigkill_during_import_and_labeling_loses_nothing(tmp_path, request):
    counts = _crash_campaign(tmp_path, request, kills=8, seed=7, images_per_round=80, max_delay=0.8,
                             with_training=False)
    assert counts["kills"] == 8
    assert counts["labels_reported_saved"] > 0, "the children never got to label: the test proved nothing"
    assert counts["images_reported_committed"] > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_30_times_during_import_labeling_and_training(tmp_path, request):
    import engine.features.extraction  # noqa: F401  (a broken engine must fail this test, not drop the training rounds)
    import engine.models.training  # noqa: F401

    counts = _crash_campaign(tmp_path, request, kills=36, seed=2024, images_per_round=150, max_delay=1.5,
                             with_training=True)
    assert counts["kills"] >= 30
    assert counts["labels_reported_saved"] > 100
    assert counts["kills_with_write_in_flight"] > 0
    assert counts["models_reported"] > 0, "the children never finished a training: it proved nothing"
    assert counts["kills_while_fitting"] + counts["kills_while_extracting_features"] > 0, (
        "no kill landed while the engine was writing: the training rounds proved nothing")
