"""Saving a model version in short transactions: its predictions stay invisible until one short last
transaction activates it, and a label written meanwhile does not wait for the whole save."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading

import numpy as np
import pytest
from helpers.feature_projects import add_placeholder_images
from sqlalchemy import func, select

from storage import catalog, modelstore
from storage.models import ModelVersion, Prediction, ProjectMeta


def new_model(class_ids: list[int], n_labeled: int = 10) -> modelstore.NewModel:
    return modelstore.NewModel("logreg", "lite0", "pool", [f"c{i}" for i in range(len(class_ids))], class_ids,
                               b"weights", {"C": 1.0}, {}, n_labeled)


def batch(ids: list[int], first: float) -> modelstore.PredictionBatch:
    proba = np.tile(np.array([[first, 1.0 - first]], dtype=np.float32), (len(ids), 1))
    return modelstore.PredictionBatch(np.asarray(ids), proba)


@pytest.fixture
def saved(project):
    """A project with 50 images, two classes and an active version 1 that predicts class 0 everywhere."""
    ids = add_placeholder_images(project, 50)
    class_ids = list(catalog.ensure_classes(project, ["c0", "c1"]).values())
    first = modelstore.save_model_version(project, new_model(class_ids), batch(ids, 0.9))
    return ids, class_ids, first


def pause_between_chunks(monkeypatch, project, on_chunk):
    """Call ``on_chunk(n)`` in the saving thread before each of its write transactions after the first."""
    real_writing = type(project).writing
    saver = threading.current_thread()
    entered = []

    @contextlib.contextmanager
    def writing(self):
        if threading.current_thread() is saver:
            entered.append(1)
            if len(entered) > 1:
                on_chunk(len(entered) - 1)
        with real_writing(self) as session:
            yield session

    monkeypatch.setattr(type(project), "writing", writing)


def test_a_versions_predictions_stay_invisible_until_it_is_activated(project, saved, monkeypatch):
    ids, class_ids, first = saved
    monkeypatch.setattr(modelstore, "PREDICTION_CHUNK", 7)  # 50 rows: 8 chunks, then the activation
    seen = []

    def look(n):  # a reader between two of the save's transactions
        seen.append((n, modelstore.active_version(project), [m.version for m in modelstore.list_models(project)],
                     {p.class_name for p in modelstore.predictions(project).values()}))

    pause_between_chunks(monkeypatch, project, look)
    second = modelstore.save_model_version(project, new_model(class_ids, 20), batch(ids, 0.2))
    assert len(seen) == 9  # 8 chunks of predictions after the version's own write, then the activation
    for _n, active, listed, classes in seen:
        assert active == first and listed == [first] and classes == {"c0"}
    assert modelstore.active_version(project) == second
    assert [m.version for m in modelstore.list_models(project)] == [first, second]
    after = modelstore.predictions(project)
    assert len(after) == len(ids) and {p.class_name for p in after.values()} == {"c1"}
    assert not any(key.startswith(modelstore.PENDING_KEY) for key in modelstore_meta(project))


def modelstore_meta(project) -> list[str]:
    from storage.project import project_meta

    return list(project_meta(project))


def test_a_label_write_succeeds_while_a_large_save_is_in_progress(project, monkeypatch):
    ids = add_placeholder_images(project, 5000)
    class_ids = list(catalog.ensure_classes(project, ["c0", "c1"]).values())
    monkeypatch.setattr(modelstore, "PREDICTION_CHUNK", 1000)
    chunk_written, label_written = threading.Event(), threading.Event()
    outcome = {}

    def hold(n):  # the save stops between two chunks until the label is written
        if n == 2:
            chunk_written.set()
            label_written.wait(30)

    def save():
        pause_between_chunks(monkeypatch, project, hold)
        try:
            outcome["version"] = modelstore.save_model_version(project, new_model(class_ids), batch(ids, 0.3))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=save)
    thread.start()
    try:
        assert chunk_written.wait(30), "the save never wrote its predictions in more than one transaction"
        assert modelstore.active_version(project) is None  # not active while its predictions are stored
        catalog.set_labels(project, [ids[0]], class_ids[1])
    finally:
        label_written.set()
        thread.join(60)
    assert "error" not in outcome and modelstore.active_version(project) == outcome["version"]
    assert len(modelstore.predictions(project)) == 5000
    assert catalog.label_states(project, [ids[0]])[0].class_id == class_ids[1]


def test_a_save_that_fails_halfway_leaves_the_previous_version_active_and_nothing_else(project, saved, monkeypatch):
    ids, class_ids, first = saved
    monkeypatch.setattr(modelstore, "PREDICTION_CHUNK", 10)
    real_insert = modelstore._insert_rows
    calls = []

    def failing_insert(session, wanted, rows):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk trouble")
        return real_insert(session, wanted, rows)

    monkeypatch.setattr(modelstore, "_insert_rows", failing_insert)
    with pytest.raises(OSError, match="disk trouble"):
        modelstore.save_model_version(project, new_model(class_ids), batch(ids, 0.2))
    assert modelstore.active_version(project) == first
    assert [m.version for m in modelstore.list_models(project)] == [first]
    with project.session() as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
        assert session.scalar(select(func.count()).select_from(Prediction)) == len(ids)


def test_a_version_left_pending_by_a_crash_is_hidden_then_removed(project, saved):
    ids, class_ids, first = saved
    long_ago = (modelstore.utcnow() - dt.timedelta(days=2)).isoformat()
    with project.writing() as session:  # what a process killed halfway through a save leaves behind
        row = ModelVersion(method="logreg", backbone="lite0", layer="pool", params={}, class_names=["c0", "c1"],
                           class_ids=class_ids, metrics={}, weights=b"w", is_active=False, n_labeled=3)
        session.add(row)
        session.flush()
        crashed = row.id
        session.add(ProjectMeta(key=f"{modelstore.PENDING_KEY}{crashed}", value=long_ago))
    modelstore.store_predictions(project, crashed, batch(ids[:5], 0.1))
    assert [m.version for m in modelstore.list_models(project)] == [first]
    with pytest.raises(modelstore.NoModelError):
        modelstore.set_active_model(project, crashed)
    modelstore.delete_model(project, first)  # the newest remaining version must not be the half-saved one
    assert modelstore.active_version(project) is None
    newest = modelstore.save_model_version(project, new_model(class_ids), batch(ids, 0.6))
    assert [m.version for m in modelstore.list_models(project)] == [newest]
    with project.session() as session:
        assert session.get(ModelVersion, crashed) is None
        leftover = session.scalar(select(func.count()).select_from(Prediction)
                                  .where(Prediction.model_version_id == crashed))
    assert leftover == 0 and not any(k.startswith(modelstore.PENDING_KEY) for k in modelstore_meta(project))
