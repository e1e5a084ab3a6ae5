"""Concurrency soak: the GUI thread labels while the engine's worker writes features and predictions.

Two labeling sides:

- direct: this test's thread calls ``storage.catalog.set_labels`` (undo through ``restore_labels``)
  in a tight loop, plus the reads a GUI refresh does; the engine job runs on a plain
  ``engine.runtime.jobs.JobRunner``.
- GUI: a real ``MainWindow`` under a QApplication labels through its own path, ``label_images`` ->
  ``SetLabelCommand`` pushed on the window's undo stack (and ``undo_stack.undo()``), so every write is
  followed by the window's own refresh (grid tiles, class counts, status bar) on the GUI thread; the
  engine job runs on the window's ``QtJobRunner`` worker, whose progress signals the event loop
  delivers between labels. Suggestion refreshes are switched off: the soak's models have made-up
  weights no one can predict with.

``make test`` runs each side until both sides have done a fixed amount of work at the same time (so
a slow or busy machine only takes longer); ``make test-slow`` runs the GUI side for 2 minutes and
holds it to a throughput floor.

The engine side uses the real writers: ``storage.featurestore.store_vectors``,
``storage.modelstore.store_predictions`` and ``save_model_version`` (a new active model with
predictions for every image, the biggest transaction the engine makes).

Pass: zero "database is locked" (or any other) errors on either side, and the final labels are
exactly the last label the labeling side wrote for each image.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from helpers.proof import report_counts

N_IMAGES = 400
FEATURE_DIM = 1280
CLASSES = ["ant", "bee", "wasp", "fly"]
HANG_GUARD_S = 240  # a workload run that has not finished by then is stuck, not slow


@dataclass(frozen=True)
class Workload:
    """What each side must have done while the other ran, or the soak proved nothing."""

    label_writes: int
    feature_batches: int
    models_saved: int

    def reached(self, counts: Counter) -> bool:
        return (counts["label_writes"] >= self.label_writes and counts["feature_batches"] >= self.feature_batches
                and counts["models_saved"] >= self.models_saved)


def _setup(project) -> tuple[list[int], list[int]]:
    from storage import catalog
    from storage.images import NewImage, add_images

    class_ids = [catalog.add_class(project, name).id for name in CLASSES]
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "gray").save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    ids = add_images(project, [
        NewImage(f"soak{i}", f"{i}.jpg", f"/soak/{i}.jpg", "cam", 8, 8, "JPEG", jpeg, jpeg) for i in range(N_IMAGES)
    ])
    return ids, class_ids


def _engine_job(context, project, image_ids, class_ids, stop: threading.Event, counts: Counter) -> None:
    """What the worker does while the user labels: extract features batch by batch, refresh
    predictions, and now and then store a freshly trained model with predictions for all images."""
    from storage import featurestore, modelstore

    rng = np.random.default_rng(0)
    feature_set = featurestore.ensure_feature_set(project, "soak-net", "pooled", FEATURE_DIM)
    version = modelstore.save_model_version(project, modelstore.NewModel(
        method="logreg", backbone="soak-net", layer="pooled", class_names=CLASSES, class_ids=class_ids,
        weights=b"\x00" * 64,
    ))
    batch = 64
    while not stop.is_set():
        start = int(rng.integers(0, len(image_ids)))
        chunk = [image_ids[(start + k) % len(image_ids)] for k in range(batch)]
        vectors = rng.standard_normal((batch, FEATURE_DIM)).astype(np.float32)
        counts["feature_vectors_written"] += featurestore.store_vectors(project, feature_set.id, chunk, vectors)
        counts["feature_batches"] += 1
        proba = rng.dirichlet(np.ones(len(class_ids)), size=batch).astype(np.float32)
        counts["predictions_written"] += modelstore.store_predictions(
            project, version, modelstore.PredictionBatch(np.asarray(chunk), proba)
        )
        counts["prediction_batches"] += 1
        if counts["prediction_batches"] % 15 == 0:
            proba = rng.dirichlet(np.ones(len(class_ids)), size=len(image_ids)).astype(np.float32)
            version = modelstore.save_model_version(
                project,
                modelstore.NewModel(method="logreg", backbone="soak-net", layer="pooled", class_names=CLASSES,
                                    class_ids=class_ids, weights=rng.bytes(4096)),
                modelstore.PredictionBatch(np.asarray(image_ids), proba),
            )
            counts["models_saved"] += 1
            counts["predictions_written"] += len(image_ids)
        context.check_cancelled()


class DirectLabeler:
    """Labels with the storage calls the GUI's commands make, and the reads a GUI refresh does."""

    def __init__(self, project):
        from engine.runtime.jobs import JobRunner

        self.project = project
        self.runner = JobRunner()
        self._undo: list[list] = []

    def label(self, image_ids: list[int], class_id: int | None) -> None:
        from storage import catalog

        self._undo.append(catalog.set_labels(self.project, image_ids, class_id))

    def undo(self) -> list | None:
        from storage import catalog

        if not self._undo:
            return None
        states = self._undo.pop()
        catalog.restore_labels(self.project, states)
        return states

    def refresh(self) -> None:
        from storage import catalog, modelstore
        from storage.images import list_images

        list_images(self.project)
        modelstore.predictions(self.project)
        catalog.list_classes(self.project)

    def pump(self) -> None:
        pass

    def close(self) -> None:
        self.runner.shutdown()


class WindowLabeler:
    """Labels through a real MainWindow: label_images pushes a SetLabelCommand (which writes, then
    refreshes the grid, the class counts and the status bar); undo goes through the undo stack."""

    def __init__(self, project, qtbot, tmp_path):
        from PySide6.QtCore import QSettings

        from gui.main_window import MainWindow

        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        self.window = MainWindow(settings=settings, data_dir=tmp_path / "data", projects_dir=tmp_path / "projects")
        qtbot.addWidget(self.window)
        self.window.set_project(project)
        self.window.show()
        self.runner = self.window.runner

    def label(self, image_ids: list[int], class_id: int | None) -> None:
        stack = self.window.undo_stack
        before = stack.index()
        self.window.label_images(image_ids, class_id)
        assert stack.index() == before + 1, "the label command was not pushed"

    def undo(self) -> list | None:
        stack = self.window.undo_stack
        if not stack.canUndo():
            return None
        command = stack.command(stack.index() - 1)
        stack.undo()
        return list(command.before or [])

    def refresh(self) -> None:
        self.window.refresh_counts()

    def pump(self) -> None:
        from PySide6.QtWidgets import QApplication

        QApplication.processEvents()

    def close(self) -> None:
        self.window.undo_stack.clear()


def _soak(project, request, label: str, workload: Workload, labeler=None, seconds: float | None = None) -> None:
    """Label while the engine writes until both sides did ``workload``; with ``seconds``, for that
    long instead, and then ``workload`` is the throughput floor."""
    from engine.runtime.jobs import JobStatus
    from storage import catalog

    image_ids, class_ids = _setup(project)
    labeler = labeler or DirectLabeler(project)
    counts: Counter = Counter()
    last_written: dict[int, int | None] = {}
    errors: list[str] = []
    latencies: list[float] = []
    stop = threading.Event()
    handle = labeler.runner.submit("engine soak", _engine_job, project, image_ids, class_ids, stop, counts)
    rng = random.Random(1)
    started_at = time.monotonic()
    deadline = started_at + (seconds if seconds is not None else HANG_GUARD_S)

    def finished() -> bool:
        return time.monotonic() >= deadline or (seconds is None and workload.reached(counts))

    try:
        while not finished():
            labeler.pump()
            if handle.done:
                break  # the engine died: its outcome is checked below
            try:
                started = time.perf_counter()
                states = labeler.undo() if rng.random() < 0.1 else None
                if states is not None:
                    for state in states:
                        last_written[state.image_id] = state.class_id
                    counts["undos"] += 1
                else:
                    chosen = rng.sample(image_ids, rng.choice([1, 1, 1, 3, 10]))
                    class_id = None if rng.random() < 0.05 else rng.choice(class_ids)
                    labeler.label(chosen, class_id)
                    for image_id in chosen:
                        last_written[image_id] = class_id
                    counts["label_writes"] += 1
                latencies.append(time.perf_counter() - started)
                if counts["label_writes"] % 20 == 0:  # the GUI refreshes its views now and then
                    labeler.refresh()
                    counts["gui_refreshes"] += 1
            except Exception as exc:  # counted, then the test fails with every message
                errors.append(f"labeling: {exc.__class__.__name__}: {exc}")
                if len(errors) > 20:
                    break
    finally:
        stop.set()
        outcome = handle.outcome(timeout=120)
        labeler.pump()
        labeler.close()

    if outcome.status is not JobStatus.DONE:
        errors.append(f"engine: {outcome.error}\n{outcome.details}")
    locked = sum("locked" in e.lower() or "busy" in e.lower() for e in errors)
    final = {s.image_id: s.class_id for s in catalog.label_states(project, image_ids)}
    lost = {i: (want, final[i]) for i, want in last_written.items() if final[i] != want}
    untouched_but_labeled = [i for i in image_ids if i not in last_written and final[i] is not None]
    latencies.sort()
    counts.update({
        "seconds": round(time.monotonic() - started_at), "locked_errors": locked, "other_errors": len(errors) - locked,
        "lost_labels": len(lost), "images_labeled_at_end": sum(v is not None for v in final.values()),
        "label_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "label_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        "label_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
    })
    report_counts(request, f"soak ({label})", dict(counts))
    assert not errors, errors[:5]
    assert not lost, f"labels lost (image: (last written, in file)): {dict(list(lost.items())[:10])}"
    assert not untouched_but_labeled
    assert workload.reached(counts), f"both sides must have done {workload} at the same time: {dict(counts)}"


def test_labeling_while_engine_writes(project, request):
    _soak(project, request, "direct", Workload(label_writes=200, feature_batches=30, models_saved=2))


@pytest.mark.gui
def test_gui_labeling_while_engine_writes(project, request, qtbot, tmp_path):
    _soak(project, request, "GUI", Workload(label_writes=40, feature_batches=15, models_saved=1),
          labeler=WindowLabeler(project, qtbot, tmp_path))


@pytest.mark.slow
@pytest.mark.gui
@pytest.mark.timeout(600)
def test_gui_labeling_while_engine_writes_2min(project, request, qtbot, tmp_path):
    _soak(project, request, "GUI 2 min", Workload(label_writes=300, feature_batches=100, models_saved=5),
          labeler=WindowLabeler(project, qtbot, tmp_path), seconds=120)
