"""Outliers: images that look like nothing else of their class, or of the whole project.

An image's oddness is its mean cosine distance to its ``K_NEIGHBOURS`` nearest neighbours in feature
space (exact, engine.curation.duplicates.nearest_neighbours). Distances are compared with a robust
z-score (median and MAD, so the outliers themselves do not widen the yardstick): above ``Z_THRESHOLD``
an image is flagged, with the reason in words. A "could not be found" placeholder in a folder of
photos, or a screenshot among insects, is far from every neighbour and surfaces here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.curation.duplicates import nearest_neighbours
from engine.curation.project_features import load_project_features
from engine.runtime.jobs import JobContext
from storage.catalog import list_classes
from storage.outliers import replace_outliers
from storage.project import Project
from storage.splits import labeled_images

K_NEIGHBOURS = 5
Z_THRESHOLD = 3.5  # Iglewicz and Hoaglin's cut-off for the modified z-score
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MIN_CLASS_IMAGES = 8  # fewer, and a class has no "typical" distance to compare with


@dataclass(frozen=True)
class Outlier:
    """A flagged image: ``score`` is its highest robust z-score, ``reasons`` say where it does not fit."""

    image_id: int
    score: float
    reasons: tuple[str, ...]


def neighbour_distance(X: np.ndarray, k: int = K_NEIGHBOURS, context: JobContext | None = None) -> np.ndarray:
    """Each row's mean cosine distance to its k nearest other rows."""
    _, sims = nearest_neighbours(X, k=k, context=context)
    return 1.0 - sims.mean(axis=1, dtype=np.float64)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 MAD); a spread of zero (all alike) gives zeros, not infinities."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    spread = MAD_TO_SIGMA * np.median(np.abs(values - median))
    if spread <= 0:
        return np.zeros_like(values)
    return (values - median) / spread


def find_outliers(
    image_ids: Sequence[int], X: np.ndarray, labels: Mapping[int, int] | None = None,
    class_names: Mapping[int, str] | None = None, *, k: int = K_NEIGHBOURS, z_threshold: float = Z_THRESHOLD,
    context: JobContext | None = None,
) -> list[Outlier]:
    """Flagged images, most unusual first: far from the whole set, or (labeled ones) from their class."""
    context = context or JobContext()
    image_ids = np.asarray(image_ids, dtype=np.int64)
    scores: dict[int, float] = {}
    reasons: dict[int, list[str]] = {}

    def flag(rows: np.ndarray, z: np.ndarray, reason: str) -> None:
        for row in np.flatnonzero(z > z_threshold):
            image_id = int(image_ids[rows[row]])
            scores[image_id] = max(scores.get(image_id, -np.inf), float(z[row]))
            reasons.setdefault(image_id, []).append(reason)

    if len(image_ids) > k + 1:
        everything = np.arange(len(image_ids))
        flag(everything, robust_z(neighbour_distance(X, k, context.subcontext(0.0, 0.5))),
             "looks like no other image in the project")
    labels = labels or {}
    class_of = np.array([labels.get(int(i), -1) for i in image_ids], dtype=np.int64)
    for class_id in np.unique(class_of[class_of >= 0]):
        rows = np.flatnonzero(class_of == class_id)
        if len(rows) >= max(MIN_CLASS_IMAGES, k + 2):
            context.check_cancelled()
            name = (class_names or {}).get(int(class_id), str(class_id))
            flag(rows, robust_z(neighbour_distance(X[rows], k)), f"looks like no other image labeled {name!r}")
    context.progress(1.0, f"{len(scores)} images look out of place")
    return sorted((Outlier(i, scores[i], tuple(reasons[i])) for i in scores), key=lambda o: (-o.score, o.image_id))


def project_outliers(
    context: JobContext, project: Project, backbone: str | None = None, layer: str | None = None,
) -> list[Outlier]:
    """A background job: extract missing features, then flag images unlike their class or the project.
    The flags replace the project's stored ones, which the grid's "Outliers" filter shows
    (storage.browse.OUTLIERS)."""
    features = load_project_features(context.subcontext(0.0, 0.5), project, backbone, layer)
    labels = {img.image_id: img.class_id for img in labeled_images(project)}
    names = {c.id: c.name for c in list_classes(project)}
    flagged = find_outliers(features.image_ids, features.X, labels, names, context=context.subcontext(0.5, 1.0))
    replace_outliers(project, [(o.image_id, o.score, o.reasons) for o in flagged])
    return flagged
