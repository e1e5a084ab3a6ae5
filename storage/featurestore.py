"""Cached deep-feature vectors: one feature set per (backbone, layer), one float32 vector per image.

Vectors are stored as little-endian float32 bytes (never pickle). Each batch of vectors is written
in ONE transaction, so an interrupted extraction keeps every finished batch and resumes from there.
Every function opens its own session and returns plain data (dataclasses, numpy arrays).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, insert, select

from storage.chunks import in_list_chunks
from storage.models import Feature, FeatureSet, Image, utcnow
from storage.project import Project

_VECTOR_DTYPE = np.dtype("<f4")
DECODE_ROWS = 2048  # vectors joined at a time when loading (see _decode)


@dataclass(frozen=True)
class StoredFeatureSet:
    """A feature set and how many image vectors it holds."""

    id: int
    backbone: str
    layer: str
    dim: int
    vectors: int
    created_at: dt.datetime


def _info(session, feature_set: FeatureSet) -> StoredFeatureSet:
    count = session.scalar(
        select(func.count()).select_from(Feature).where(Feature.feature_set_id == feature_set.id)
    ) or 0
    return StoredFeatureSet(
        feature_set.id, feature_set.backbone, feature_set.layer, feature_set.dim, count, feature_set.created_at
    )


def find_feature_set(project: Project, backbone: str, layer: str) -> StoredFeatureSet | None:
    with project.session() as session:
        found = session.scalar(
            select(FeatureSet).where(FeatureSet.backbone == backbone, FeatureSet.layer == layer)
        )
        return _info(session, found) if found is not None else None


def list_feature_sets(project: Project) -> list[StoredFeatureSet]:
    with project.session() as session:
        return [_info(session, fs) for fs in session.scalars(select(FeatureSet).order_by(FeatureSet.id))]


def ensure_feature_set(project: Project, backbone: str, layer: str, dim: int) -> StoredFeatureSet:
    """The feature set for (backbone, layer), created if missing. A stored set whose dimension no
    longer matches (the network changed) is emptied, so stale vectors are never mixed in."""
    with project.writing() as session:
        found = session.scalar(
            select(FeatureSet).where(FeatureSet.backbone == backbone, FeatureSet.layer == layer)
        )
        if found is None:
            found = FeatureSet(backbone=backbone, layer=layer, dim=dim, created_at=utcnow())
            session.add(found)
            session.flush()
        elif found.dim != dim:
            session.execute(delete(Feature).where(Feature.feature_set_id == found.id))
            found.dim = dim
            found.created_at = utcnow()
            session.flush()
        return _info(session, found)


def delete_feature_set(project: Project, backbone: str, layer: str) -> bool:
    """Forget a feature set and its vectors; returns whether there was one."""
    with project.writing() as session:
        found = session.scalar(
            select(FeatureSet).where(FeatureSet.backbone == backbone, FeatureSet.layer == layer)
        )
        if found is None:
            return False
        session.execute(delete(Feature).where(Feature.feature_set_id == found.id))
        session.delete(found)
        return True


def missing_image_ids(project: Project, feature_set_id: int) -> list[int]:
    """Images (in import order) that have no vector in the feature set yet."""
    with project.session() as session:
        has_vector = select(Feature.image_id).where(Feature.feature_set_id == feature_set_id)
        return list(session.scalars(select(Image.id).where(Image.id.not_in(has_vector)).order_by(Image.id)))


def store_vectors(project: Project, feature_set_id: int, image_ids: Sequence[int], vectors: np.ndarray) -> int:
    """Write (or replace) one batch of vectors in ONE transaction; returns how many were stored.

    Images deleted while their vectors were computed are skipped rather than failing the batch.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(image_ids) != vectors.shape[0]:
        raise ValueError(f"expected one vector per image id, got {vectors.shape} for {len(image_ids)} ids")
    if not len(image_ids):
        return 0
    rows = vectors.astype(_VECTOR_DTYPE, copy=False)
    ids = [int(i) for i in image_ids]
    with project.writing() as session:
        dim = session.scalar(select(FeatureSet.dim).where(FeatureSet.id == feature_set_id))
        if dim is None:
            raise ValueError(f"feature set {feature_set_id} does not exist")
        if dim != rows.shape[1]:
            raise ValueError(f"feature set {feature_set_id} holds {dim}-d vectors, not {rows.shape[1]}-d")
        present: set[int] = set()
        for chunk in in_list_chunks(ids):
            present.update(session.scalars(select(Image.id).where(Image.id.in_(chunk))))
        values = [
            {"feature_set_id": feature_set_id, "image_id": image_id, "vector": rows[index].tobytes()}
            for index, image_id in enumerate(ids)
            if image_id in present
        ]
        if values:
            session.execute(insert(Feature).prefix_with("OR REPLACE"), values)
        return len(values)


def vector_image_ids(project: Project, backbone: str, layer: str) -> np.ndarray:
    """Ids (int64, ascending) of the images that have a vector in (backbone, layer); empty without the set."""
    with project.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT f.image_id FROM features f JOIN feature_sets s ON s.id = f.feature_set_id "
            "WHERE s.backbone = ? AND s.layer = ? ORDER BY f.image_id", (backbone, layer)).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


def _decode(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    # Decoded in slices of DECODE_ROWS: one join of 100k vectors (500 MB) holds the GIL ~0.5 s, a pause
    # of the GUI thread while a training job loads its features; a slice holds it a few ms.
    out = np.empty((len(blobs), dim), dtype=np.float32)
    for start in range(0, len(blobs), DECODE_ROWS):
        part = blobs[start:start + DECODE_ROWS]
        out[start:start + len(part)] = np.frombuffer(b"".join(part), dtype=_VECTOR_DTYPE).reshape(len(part), dim)
    return out


def load_vectors(
    project: Project, backbone: str, layer: str, image_ids: Iterable[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(image ids int64, vectors float32 (N, D)) in image-id order; all images or only ``image_ids``.

    Images without a vector are left out; with no feature set at all, both arrays are empty.
    """
    with project.session() as session:
        found = session.execute(
            select(FeatureSet.id, FeatureSet.dim).where(FeatureSet.backbone == backbone, FeatureSet.layer == layer)
        ).first()
        if found is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        set_id, dim = found
        query = select(Feature.image_id, Feature.vector).where(Feature.feature_set_id == set_id)
        connection = session.connection()  # Core rows: the ORM's row handling cost ~1 s at 100k vectors
        if image_ids is None:
            rows = connection.execute(query.order_by(Feature.image_id)).all()
        else:
            wanted = sorted({int(i) for i in image_ids})
            rows = []
            for chunk in in_list_chunks(wanted):
                rows.extend(connection.execute(query.where(Feature.image_id.in_(chunk))).all())
            rows.sort(key=lambda row: row[0])
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    return ids, _decode([row[1] for row in rows], dim)
