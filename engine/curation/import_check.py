"""The import summary's second look: which new images look like ones the project already had, and
which look like nothing else (a "could not be found" placeholder, a screenshot among insects).

``check_new_images`` is a background job run once an import has finished. It extracts the features the
images still lack (training and suggestions need them anyway), then compares only the new images:

* look-alikes: each new image's most similar earlier image (cosine similarity of the features, exact,
  in tiles: engine.curation.duplicates.nearest_neighbours); at ``LOOK_ALIKE`` or more it "looks like one
  you already have";
* outliers: a new image's mean distance to its ``K_NEIGHBOURS`` nearest images, against the same distance
  of up to ``REFERENCE_SAMPLE`` images of the project (robust z-score, as engine.curation.outliers does for
  the whole project): far above the usual, it looks like no other image of the project, or of the class
  its folder gave it. Comparing a sample keeps the check to seconds at 100k images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.curation.duplicates import LOOK_ALIKE, LookAlike, nearest_neighbours
from engine.curation.outliers import K_NEIGHBOURS, MAD_TO_SIGMA, MIN_CLASS_IMAGES, Z_THRESHOLD, Outlier
from engine.curation.project_features import load_project_features
from engine.runtime.jobs import JobContext
from storage.catalog import list_classes
from storage.project import Project
from storage.splits import labeled_images

REFERENCE_SAMPLE = 2000  # project images whose neighbour distance says what "usual" is


@dataclass(frozen=True)
class ImportCheck:
    """What the import summary adds: look-alikes (most similar first) and outliers (most unusual first)
    among the ``checked`` new images that have features."""

    look_alikes: list[LookAlike]
    outliers: list[Outlier]
    checked: int

    @property
    def look_alike_ids(self) -> list[int]:
        return [m.image_id for m in self.look_alikes]

    @property
    def outlier_ids(self) -> list[int]:
        return [o.image_id for o in self.outliers]


def _look_alikes(X: np.ndarray, new_rows: np.ndarray, old_rows: np.ndarray, image_ids: np.ndarray,
                 threshold: float, context: JobContext) -> list[LookAlike]:
    if not len(new_rows) or not len(old_rows):
        return []
    rows, sims = nearest_neighbours(X[new_rows], X[old_rows], k=1, context=context)
    found = [LookAlike(int(image_ids[new_rows[r]]), int(image_ids[old_rows[rows[r, 0]]]), float(sims[r, 0]))
             for r in np.flatnonzero(sims[:, 0] >= threshold)]
    return sorted(found, key=lambda m: (-m.similarity, m.image_id))


def _neighbour_distance(X: np.ndarray, rows: np.ndarray, pool_rows: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each of ``rows`` (all in the pool) to its k nearest other pool images."""
    _, sims = nearest_neighbours(X[rows], X[pool_rows], k=k + 1)
    return 1.0 - sims[:, 1:].mean(axis=1, dtype=np.float64)  # the first neighbour is the image itself


def _unusual(X: np.ndarray, new_rows: np.ndarray, pool_rows: np.ndarray, k: int, rng) -> np.ndarray:
    """Robust z-score of each new image's neighbour distance against a sample of the pool's."""
    reference = pool_rows if len(pool_rows) <= REFERENCE_SAMPLE else rng.choice(pool_rows, REFERENCE_SAMPLE,
                                                                               replace=False)
    usual = _neighbour_distance(X, reference, pool_rows, k)
    median = np.median(usual)
    spread = MAD_TO_SIGMA * np.median(np.abs(usual - median))
    if spread <= 0:
        return np.zeros(len(new_rows))
    return (_neighbour_distance(X, new_rows, pool_rows, k) - median) / spread


def new_image_outliers(
    image_ids: Sequence[int], X: np.ndarray, new_ids: Sequence[int], labels: dict[int, int] | None = None,
    class_names: dict[int, str] | None = None, *, k: int = K_NEIGHBOURS, z_threshold: float = Z_THRESHOLD,
    seed: int = 0,
) -> list[Outlier]:
    """The new images far from every neighbour in the project, or (labeled ones) in their class."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    is_new = np.isin(image_ids, np.asarray(list(new_ids), dtype=np.int64))
    scores: dict[int, float] = {}
    reasons: dict[int, list[str]] = {}

    def flag(new_rows: np.ndarray, pool_rows: np.ndarray, reason: str) -> None:
        z = _unusual(X, new_rows, pool_rows, k, rng)
        for row in np.flatnonzero(z > z_threshold):
            image_id = int(image_ids[new_rows[row]])
            scores[image_id] = max(scores.get(image_id, -np.inf), float(z[row]))
            reasons.setdefault(image_id, []).append(reason)

    everything = np.arange(len(image_ids))
    if is_new.any() and len(image_ids) > k + 1:
        flag(np.flatnonzero(is_new), everything, "looks like no other image in the project")
    labels = labels or {}
    class_of = np.array([labels.get(int(i), -1) for i in image_ids], dtype=np.int64)
    for class_id in np.unique(class_of[is_new & (class_of >= 0)]):
        pool = np.flatnonzero(class_of == class_id)
        if len(pool) >= max(MIN_CLASS_IMAGES, k + 2):
            name = (class_names or {}).get(int(class_id), str(class_id))
            flag(pool[is_new[pool]], pool, f"looks like no other image labeled {name!r}")
    return sorted((Outlier(i, scores[i], tuple(reasons[i])) for i in scores), key=lambda o: (-o.score, o.image_id))


def check_new_images(
    context: JobContext, project: Project, new_ids: Sequence[int], threshold: float = LOOK_ALIKE,
    backbone: str | None = None, layer: str | None = None,
) -> ImportCheck:
    """A background job after an import: extract missing features, then find look-alikes and outliers
    among ``new_ids``."""
    features = load_project_features(context.subcontext(0.0, 0.8), project, backbone, layer)
    context.check_cancelled()
    context.progress(0.8, "Comparing the new images with the others")
    ids = features.image_ids
    is_new = np.isin(ids, np.asarray(list(new_ids), dtype=np.int64))
    look_alikes = _look_alikes(features.X, np.flatnonzero(is_new), np.flatnonzero(~is_new), ids, threshold,
                               context.subcontext(0.8, 0.9))
    context.check_cancelled()
    labels = {img.image_id: img.class_id for img in labeled_images(project)}
    names = {c.id: c.name for c in list_classes(project)}
    outliers = new_image_outliers(ids, features.X, ids[is_new].tolist(), labels, names)
    context.progress(1.0, f"{len(look_alikes)} look-alikes and {len(outliers)} unusual images among the new ones")
    return ImportCheck(look_alikes, outliers, int(is_new.sum()))
