"""Trained model versions, their training runs (curves) and their predictions, as plain data.

A model version is saved with its predictions in short write transactions and made active in one short
last one, so the GUI never sees a new active model without its suggestions, and a label written
meanwhile never waits long for the write lock. Weights are safetensors bytes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update

from storage.errors import ProjectError
from storage.models import ImageClass, ModelVersion, Prediction, ProjectMeta, TrainingRun, utcnow
from storage.project import Project
from storage.trust_blobs import read_vetted_weights


class NoModelError(ProjectError):
    """The project has no trained model (or not the version asked for)."""


@dataclass(frozen=True)
class ModelInfo:
    """A model version without its weights."""

    version: int
    created_at: dt.datetime
    method: str
    backbone: str
    layer: str
    params: dict[str, Any]
    class_names: list[str]
    class_ids: list[int]
    metrics: dict[str, Any]
    is_active: bool
    n_labeled: int


@dataclass(frozen=True)
class PredictionInfo:
    """One image's prediction; ``out_of_fold`` marks honest (not trained-on) predictions of labeled images."""

    class_id: int | None
    class_name: str
    probability: float
    margin: float
    class_index: int
    out_of_fold: bool


@dataclass
class NewModel:
    """Everything needed to store a trained model version."""

    method: str
    backbone: str
    layer: str
    class_names: list[str]
    class_ids: list[int]
    weights: bytes = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    n_labeled: int = 0


@dataclass
class PredictionBatch:
    """Class probabilities for many images, columns in the model's class order."""

    image_ids: np.ndarray
    probabilities: np.ndarray
    out_of_fold: np.ndarray | None = None


def _info(row: ModelVersion) -> ModelInfo:
    return ModelInfo(
        row.id, row.created_at, row.method, row.backbone, row.layer, dict(row.params or {}),
        list(row.class_names or []), [int(c) for c in row.class_ids or []], dict(row.metrics or {}),
        bool(row.is_active), int(row.n_labeled or 0),
    )


def _prediction_rows(version: int, class_ids: Sequence[int], batch: PredictionBatch) -> list[tuple]:
    """Rows for a bulk insert: top class, its probability, and the margin to the runner-up."""
    proba = np.asarray(batch.probabilities, dtype=np.float32)
    n, k = proba.shape
    if k != len(class_ids):
        raise ValueError(f"{k} probability columns for {len(class_ids)} classes")
    order = np.argsort(-proba, axis=1, kind="stable")
    top = order[:, 0]
    top_p = proba[np.arange(n), top]
    second_p = proba[np.arange(n), order[:, 1]] if k > 1 else np.zeros(n, dtype=np.float32)
    margin = top_p - second_p
    oof = np.zeros(n, dtype=bool) if batch.out_of_fold is None else np.asarray(batch.out_of_fold, dtype=bool)
    ids = np.asarray(batch.image_ids, dtype=np.int64)
    top_class = np.asarray(class_ids, dtype=np.int64)[top] if n else np.zeros(0, dtype=np.int64)
    return list(zip([version] * n, ids.tolist(), top.tolist(), top_class.tolist(), top_p.tolist(), margin.tolist(),
                    [row.tobytes() for row in proba], oof.tolist()))


PREDICTION_CHUNK = 1000  # rows per write transaction when storing predictions (~15 ms each: a label key waits for one)
PENDING_KEY = "model_pending:"  # project_meta key prefix: a version whose predictions are still being stored
PENDING_STALE = dt.timedelta(hours=6)  # a mark this old was left by a save that never finished (a crash)

_INSERT_PREDICTION = (
    "INSERT OR REPLACE INTO predictions (model_version_id, image_id, class_index, class_id, probability, "
    "margin, probabilities, out_of_fold) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_rows(session, class_ids: Sequence[int], rows: list[tuple]) -> int:
    """One chunk of prebuilt rows (built outside the transaction, so the write lock is held only for the insert)."""
    if rows:
        # Class ids of classes deleted since training become NULL (the foreign key would refuse them).
        existing = set(session.scalars(select(ImageClass.id)))
        if not existing.issuperset(int(c) for c in class_ids):
            rows = [row if row[3] in existing else (*row[:3], None, *row[4:]) for row in rows]
        session.connection().exec_driver_sql(_INSERT_PREDICTION, rows)
    return len(rows)


def _pending_versions(session) -> dict[int, str]:
    """Versions still being saved (their predictions are not all stored yet): id -> when the save began."""
    keys = session.execute(select(ProjectMeta.key, ProjectMeta.value).where(ProjectMeta.key.startswith(PENDING_KEY)))
    return {int(key[len(PENDING_KEY):]): value for key, value in keys}


def _discard_version(project: Project, version: int) -> None:
    """Remove a version that never finished saving, its predictions in short transactions too."""
    while True:
        with project.writing() as session:
            ids = session.scalars(select(Prediction.image_id).where(Prediction.model_version_id == int(version))
                                  .limit(PREDICTION_CHUNK)).all()
            if ids:
                session.execute(delete(Prediction).where(Prediction.model_version_id == int(version),
                                                         Prediction.image_id.in_(ids)))
        if len(ids) < PREDICTION_CHUNK:
            break
    with project.writing() as session:
        session.execute(delete(ModelVersion).where(ModelVersion.id == int(version)))
        session.execute(delete(ProjectMeta).where(ProjectMeta.key == f"{PENDING_KEY}{int(version)}"))


def save_model_version(
    project: Project, model: NewModel, predictions: PredictionBatch | None = None, activate: bool = True
) -> int:
    """Store a model version and its predictions, then make it the active one; returns its version.

    The version is first stored marked pending (``project_meta``): neither active nor listed. Its
    predictions go in transactions of PREDICTION_CHUNK rows, so a label written from the GUI meanwhile
    waits for one chunk (a few ms) instead of every prediction (over a second at 100k images). One short
    last transaction clears the mark and activates it: readers see the old active model or the new one
    with all its predictions, never a half-written one. A save cut short is removed (by the next save
    if the process died)."""
    now = utcnow()
    with project.writing() as session:
        stale = [v for v, began in _pending_versions(session).items() if _older_than(began, now - PENDING_STALE)]
        row = ModelVersion(
            method=model.method, backbone=model.backbone, layer=model.layer, params=model.params,
            class_names=list(model.class_names), class_ids=[int(c) for c in model.class_ids],
            metrics=model.metrics, weights=model.weights, is_active=False, n_labeled=model.n_labeled,
            created_at=now,
        )
        session.add(row)
        session.flush()
        version = int(row.id)
        session.add(ProjectMeta(key=f"{PENDING_KEY}{version}", value=now.isoformat()))
    for old in stale:
        _discard_version(project, old)
    try:
        rows = [] if predictions is None else _prediction_rows(version, model.class_ids, predictions)
        for start in range(0, len(rows), PREDICTION_CHUNK):
            with project.writing() as session:  # (each chunk's write checkpoints the log when it has grown)
                _insert_rows(session, model.class_ids, rows[start:start + PREDICTION_CHUNK])
        with project.writing() as session:
            if activate:
                session.execute(update(ModelVersion).where(ModelVersion.is_active).values(is_active=False))
                session.execute(update(ModelVersion).where(ModelVersion.id == version).values(is_active=True))
            session.execute(delete(ProjectMeta).where(ProjectMeta.key == f"{PENDING_KEY}{version}"))
    except BaseException:
        with contextlib.suppress(Exception):  # if even that fails, the next save removes it
            _discard_version(project, version)
        raise
    return version


def _older_than(stamp: str, limit: dt.datetime) -> bool:
    try:
        return dt.datetime.fromisoformat(stamp) < limit
    except (TypeError, ValueError):
        return True


def store_predictions(project: Project, version: int, predictions: PredictionBatch, keep_out_of_fold: bool = True) -> int:
    """Insert or replace predictions of one version. With ``keep_out_of_fold`` the honest (cross-validated)
    predictions of labeled images are left alone, so refreshing never overwrites them with in-sample ones.

    Rows are written in transactions of PREDICTION_CHUNK rows: each upsert stands on its own (a refresh
    cut short leaves every row either as it was or refreshed), and a label written from the GUI in the
    meantime waits for one chunk (a few ms) instead of the whole refresh (over a second at 100k images)."""
    with project.session() as session:
        row = session.get(ModelVersion, version)
        if row is None:
            raise NoModelError(f"There is no model version {version}.")
        class_ids = list(row.class_ids)
        kept = set(session.scalars(
            select(Prediction.image_id).where(Prediction.model_version_id == version, Prediction.out_of_fold)
        )) if keep_out_of_fold else set()
    image_ids = np.asarray(predictions.image_ids)
    probabilities = np.asarray(predictions.probabilities)
    out_of_fold = None if predictions.out_of_fold is None else np.asarray(predictions.out_of_fold)
    if kept:
        mask = ~np.isin(image_ids.astype(np.int64), np.fromiter(kept, dtype=np.int64, count=len(kept)))
        image_ids, probabilities = image_ids[mask], probabilities[mask]
        out_of_fold = None if out_of_fold is None else out_of_fold[mask]
    rows = _prediction_rows(version, class_ids, PredictionBatch(image_ids, probabilities, out_of_fold))
    written = 0
    for start in range(0, len(rows), PREDICTION_CHUNK):
        with project.writing() as session:
            if session.get(ModelVersion, version) is None:  # deleted meanwhile: nothing left to refresh
                raise NoModelError(f"There is no model version {version}.")
            written += _insert_rows(session, class_ids, rows[start:start + PREDICTION_CHUNK])
    return written


def list_models(project: Project) -> list[ModelInfo]:
    """All model versions, oldest first (not those still being saved)."""
    with project.session() as session:
        pending = _pending_versions(session)
        return [_info(row) for row in session.scalars(select(ModelVersion).order_by(ModelVersion.id))
                if row.id not in pending]


# "Which model is active" is answered here and nowhere else (the grid, the map, the dataset export and
# prediction refreshes all ask these two): the newest row flagged is_active. save_model_version and
# set_active_model keep the flag exclusive; newest-first keeps the answer unique even if it were not.


def _newest_active(*columns):
    return select(*columns).where(ModelVersion.is_active).order_by(ModelVersion.id.desc()).limit(1)


def active_version(project: Project) -> int | None:
    """The active model version's id, None before any training: one indexed lookup, nothing else loaded."""
    with project.session() as session:
        return session.scalar(_newest_active(ModelVersion.id))


def active_model(project: Project) -> ModelInfo | None:
    """The active model version (without its weights), None before any training."""
    with project.session() as session:
        row = session.scalars(_newest_active(ModelVersion)).first()
        return None if row is None else _info(row)


def get_model(project: Project, version: int | None = None) -> ModelInfo:
    """A version's info (the active one by default); NoModelError with a clear message otherwise."""
    if version is None:
        info = active_model(project)
        if info is None:
            raise NoModelError("This project has no trained model yet: train one first.")
        return info
    with project.session() as session:
        row = session.get(ModelVersion, int(version))
        if row is None:
            raise NoModelError(f"There is no model version {version}.")
        return _info(row)


def model_weights(project: Project, version: int) -> bytes:
    with project.session() as session:
        weights = read_vetted_weights(session, int(version))  # size and shapes checked (storage.trust_blobs)
    if weights is None:
        raise NoModelError(f"There is no model version {version}.")
    return weights


def set_active_model(project: Project, version: int) -> None:
    with project.writing() as session:
        if session.get(ModelVersion, int(version)) is None or int(version) in _pending_versions(session):
            raise NoModelError(f"There is no model version {version}.")
        session.execute(update(ModelVersion).values(is_active=False))
        session.execute(update(ModelVersion).where(ModelVersion.id == int(version)).values(is_active=True))


def delete_model(project: Project, version: int) -> None:
    """Remove a version and its predictions; the newest remaining one becomes active if needed.

    One short transaction hides the version (marked pending and inactive: no reader lists it from then
    on) and activates another; its predictions then go in transactions of PREDICTION_CHUNK rows, as they
    came, so a label written meanwhile waits for one chunk, not for 100,000 deletions (automatic
    retrains prune the version they replace after every label edit). A deletion cut short stays hidden
    and a later save finishes it, as it does a save cut short."""
    with project.writing() as session:
        if session.get(ModelVersion, int(version)) is None:
            return
        session.execute(update(ModelVersion).where(ModelVersion.id == int(version)).values(is_active=False))
        session.merge(ProjectMeta(key=f"{PENDING_KEY}{int(version)}", value=utcnow().isoformat()))
        if session.scalar(_newest_active(ModelVersion.id)) is None:
            pending = list(_pending_versions(session))
            newest = session.scalar(select(ModelVersion.id).where(ModelVersion.id.not_in(pending))
                                    .order_by(ModelVersion.id.desc()))
            if newest is not None:
                session.execute(update(ModelVersion).where(ModelVersion.id == newest).values(is_active=True))
    _discard_version(project, version)


def update_model_params(project: Project, version: int, changes: dict[str, Any]) -> None:
    """Merge ``changes`` into a version's params (engine.models.evolving marks an exported version kept)."""
    with project.writing() as session:
        row = session.get(ModelVersion, int(version))
        if row is None:
            raise NoModelError(f"There is no model version {version}.")
        row.params = {**(row.params or {}), **changes}


def predictions(project: Project, version: int | None = None) -> dict[int, PredictionInfo]:
    """Predictions by image id for one version (the active one by default; empty without a model)."""
    if version is None:
        info = active_model(project)
        if info is None:
            return {}
    else:
        info = get_model(project, version)
    with project.session() as session:
        rows = session.execute(
            select(Prediction.image_id, Prediction.class_id, Prediction.class_index, Prediction.probability,
                   Prediction.margin, Prediction.out_of_fold).where(Prediction.model_version_id == info.version)
        ).all()
    names = info.class_names
    return {
        int(image_id): PredictionInfo(
            None if class_id is None else int(class_id),
            names[index] if 0 <= index < len(names) else "", float(probability), float(margin), int(index),
            bool(out_of_fold),
        )
        for image_id, class_id, index, probability, margin, out_of_fold in rows
    }


def prediction_probabilities(project: Project, version: int) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, probabilities (N, K) in the model's class order) of one version."""
    with project.session() as session:
        rows = session.execute(
            select(Prediction.image_id, Prediction.probabilities)
            .where(Prediction.model_version_id == int(version)).order_by(Prediction.image_id)
        ).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32)
    return ids, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])


def out_of_fold_probabilities(project: Project, version: int) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, probabilities (N, K) in the model's class order) of one version's out-of-fold
    predictions: labeled images scored by a model that did not train on them."""
    with project.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT image_id, probabilities FROM predictions WHERE model_version_id = ? AND out_of_fold "
            "ORDER BY image_id", (int(version),)).fetchall()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32)
    return ids, np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1).astype(np.float32)


# -- training runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRunInfo:
    id: int
    method: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    curves: list[Any]
    message: str
    model_version: int | None


def start_training_run(project: Project, method: str) -> int:
    with project.writing() as session:
        row = TrainingRun(method=method, status="running", curves=[], message="", started_at=utcnow())
        session.add(row)
        session.flush()
        return row.id


def finish_training_run(
    project: Project, run_id: int, status: str, curves: list[Any] | None = None, message: str = "",
    model_version: int | None = None,
) -> None:
    """Close a run as done, cancelled or failed, keeping whatever curves it produced."""
    with project.writing() as session:
        row = session.get(TrainingRun, run_id)
        if row is None:
            return
        row.status = status
        row.finished_at = utcnow()
        row.curves = list(curves or [])
        row.message = message
        row.model_version_id = model_version


def list_training_runs(project: Project) -> list[TrainingRunInfo]:
    with project.session() as session:
        return [
            TrainingRunInfo(r.id, r.method, r.status, r.started_at, r.finished_at, list(r.curves or []), r.message,
                            r.model_version_id)
            for r in session.scalars(select(TrainingRun).order_by(TrainingRun.id))
        ]
