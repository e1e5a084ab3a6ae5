"""Leak guard: near-duplicate labeled images stay together on one side of the train/validation split.

A validation image whose twin (the same photo resized, recompressed, re-shot) is in training is graded
on a picture the model has already learned, which flatters the accuracy. Every split assignment
(engine.models.evaluation) first brings the stored near-duplicate pairs up to date, comparing only the
labeled images not compared yet: after a label edit that is one image against all labeled ones, while
a project's first training compares every labeled image with every other (~0.3 s at 2,500 images,
minutes at 100k). Cross-validation folds keep the groups together too.

Pairs come from the cached features the linear model trains on (network training, which has none of its
own, reuses the last feature space the guard ran in when its vectors are cached), at ``LOOK_ALIKE``.
Byte-identical files cannot be in one project twice (importing skips a content hash it already has), so
the features are where every twin shows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from engine.curation.duplicates import LOOK_ALIKE, pairs_between, similar_pairs
from engine.curation.project_features import resolve_feature_space
from engine.runtime.jobs import JobContext
from storage.featurestore import load_vectors
from storage.near_duplicates import (
    add_near_duplicates,
    labeled_near_duplicates,
    near_duplicate_space,
    reset_near_duplicates,
    unchecked_labeled_ids,
)
from storage.project import Project

GUARD_THRESHOLD = LOOK_ALIKE
# A larger group is a region of look-alike pictures joined link by link (a fixed camera's frames, a
# tight cluster of low-dimensional features), not copies of one picture: moving it whole would empty a
# class's validation side, so it is left to the plain split.
MAX_GROUP = 20


@dataclass(frozen=True)
class GuardFeatures:
    """Cached vectors the guard compares (rows of ``X`` in ``image_ids`` order), and their feature space."""

    backbone: str
    layer: str
    image_ids: np.ndarray
    X: np.ndarray


def space_key(backbone: str, layer: str, threshold: float = GUARD_THRESHOLD) -> str:
    return json.dumps({"backbone": backbone, "layer": layer, "threshold": threshold}, sort_keys=True)


def cached_guard_features(project: Project, labeled_ids: Sequence[int]) -> GuardFeatures | None:
    """The labeled images' cached vectors in the space of the last check (else the active model's or the
    default backbone's); None when none are cached. Nothing is extracted."""
    stored = near_duplicate_space(project)
    if stored is not None:
        space = json.loads(stored)
        backbone, layer = space["backbone"], space["layer"]
    else:
        backbone, layer = resolve_feature_space(project)
    ids, X = load_vectors(project, backbone, layer, labeled_ids)
    return GuardFeatures(backbone, layer, ids, X) if len(ids) else None


def update_near_duplicates(
    project: Project, labeled_ids: Sequence[int], features: GuardFeatures, context: JobContext | None = None,
) -> int:
    """Compare the labeled images not compared yet with every labeled image that has a vector, and store
    the pairs found. A new feature space starts over. Returns how many images were compared."""
    space = space_key(features.backbone, features.layer)
    if near_duplicate_space(project) != space:
        reset_near_duplicates(project, space)
    base_rows, base_ids = _rows_of(features.image_ids, labeled_ids)
    unchecked = np.array(unchecked_labeled_ids(project), dtype=np.int64)
    unchecked = unchecked[np.isin(unchecked, base_ids)]
    if not len(unchecked):
        return 0
    if len(unchecked) == len(base_ids):  # everything is new: each pair once
        a, b, similarity = similar_pairs(features.X[base_rows], GUARD_THRESHOLD, context)
        first, second = base_ids[a], base_ids[b]
    else:
        # Against every cached row, keeping the labeled ones' pairs: no copy of the labeled rows (500 MB at 100k).
        queries = features.X[_rows_of(features.image_ids, unchecked)[0]]
        q, row, similarity = pairs_between(queries, features.X, GUARD_THRESHOLD, context)
        labeled = np.zeros(len(features.X), dtype=bool)
        labeled[base_rows] = True
        keep = labeled[row]
        first, second = unchecked[q[keep]], np.asarray(features.image_ids, dtype=np.int64)[row[keep]]
        similarity = similarity[keep]
    add_near_duplicates(project, first, second, similarity, checked=unchecked)
    return int(len(unchecked))


def _rows_of(image_ids: np.ndarray, wanted: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows in ``image_ids``, their ids) of the ``wanted`` ids that have a row, in ``wanted``'s order."""
    ids = np.asarray(image_ids, dtype=np.int64)
    wanted = np.asarray(wanted, dtype=np.int64).reshape(-1)
    order = np.argsort(ids, kind="stable")
    at = np.minimum(np.searchsorted(ids, wanted, sorter=order), max(len(ids) - 1, 0))
    found = ids[order[at]] == wanted if len(ids) else np.zeros(len(wanted), dtype=bool)
    return order[at[found]], wanted[found]


def near_duplicate_groups(project: Project, max_size: int = MAX_GROUP) -> list[tuple[int, ...]]:
    """Groups (two to ``max_size`` image ids, ascending) of labeled images joined by stored pairs, transitively."""
    a, b = labeled_near_duplicates(project)
    if not len(a):
        return []
    ids = np.unique(np.concatenate([a, b]))
    graph = coo_matrix((np.ones(len(a)), (np.searchsorted(ids, a), np.searchsorted(ids, b))),
                       shape=(len(ids), len(ids)))
    _, component = connected_components(graph, directed=False)
    order = np.argsort(component, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(component[order]) != 0])
    groups = [tuple(int(i) for i in ids[part]) for part in np.split(order, starts[1:])]
    return sorted(group for group in groups if len(group) <= max_size)
