"""Evaluation you can trust: a stable stratified train/validation split, k-fold cross-validation for
small datasets (an out-of-fold prediction for every labeled image), and metrics from sklearn.metrics.

Split stability: an image keeps its side once placed. Images labeled (or relabeled) since the last
assignment are placed per class, in an order fixed by a hash of their content, so that each class
keeps about ``VAL_FRACTION`` of its images on the validation side. Pinned images never move.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from sklearn.model_selection import StratifiedKFold

from engine.models.metrics import ClassScores, ConfusionMatrix, Metrics, SourceScore
from engine.runtime.jobs import JobContext
from storage.models import utcnow
from storage.project import Project
from storage.splits import LabeledImage, labeled_images, splits_assigned_at, write_splits

VAL_FRACTION = 0.2
# Below these, a single holdout is too noisy to trust: cross-validate instead.
MIN_LABELED_FOR_HOLDOUT = 200
MIN_VAL_PER_CLASS_FOR_HOLDOUT = 10
MAX_FOLDS = 5


def hash_rank(content_hash: str) -> int:
    """A stable pseudo-random rank from an image's content (same image, same rank, on every machine)."""
    return int(hashlib.sha256(content_hash.encode("utf-8")).hexdigest()[:15], 16)


def place_new_images(images: Sequence[LabeledImage], new_ids: set[int], val_fraction: float = VAL_FRACTION) -> dict[int, str]:
    """Sides for every labeled image: old ones keep theirs, new ones fill each class up to its val share."""
    sides = {img.image_id: img.split for img in images}
    by_class: dict[int, list[LabeledImage]] = {}
    for img in images:
        by_class.setdefault(img.class_id, []).append(img)
    for members in by_class.values():
        target = math.floor(val_fraction * len(members) + 0.5)
        n_val = sum(1 for img in members if img.image_id not in new_ids and img.split == "val")
        for img in sorted((m for m in members if m.image_id in new_ids), key=lambda m: (hash_rank(m.content_hash), m.image_id)):
            side = "val" if n_val < target else "train"
            n_val += side == "val"
            sides[img.image_id] = side
    return sides


def assign_splits(project: Project, val_fraction: float = VAL_FRACTION) -> dict[int, str]:
    """Place newly labeled images on the train or validation side and store it; returns every labeled
    image's side. Pinned images (storage.catalog.set_split) keep the side the user chose."""
    started = utcnow()
    images = labeled_images(project)
    assigned_at = splits_assigned_at(project)
    new_ids = {
        img.image_id for img in images
        if not img.split_pinned and (assigned_at is None or img.labeled_at is None or img.labeled_at > assigned_at)
    }
    sides = place_new_images(images, new_ids, val_fraction)
    changed = {i: sides[i] for i in new_ids}
    write_splits(project, changed, started)
    return sides


@dataclass(frozen=True)
class EvaluationPlan:
    """How a model will be judged: 'holdout' (validation side), 'cv' (k-fold) or 'none' (too few labels)."""

    kind: str
    folds: int = 0
    reason: str = ""

    @property
    def description(self) -> str:
        return {"holdout": "holdout", "cv": f"{self.folds}-fold CV"}.get(self.kind, "not evaluated")


def plan_evaluation(y: np.ndarray, is_val: np.ndarray) -> EvaluationPlan:
    """Holdout when the validation side is big enough everywhere, else k-fold CV, else nothing."""
    y = np.asarray(y)
    is_val = np.asarray(is_val, dtype=bool)
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        return EvaluationPlan("none", reason="only one class is labeled")
    if counts.min() < 2:
        return EvaluationPlan("none", reason="every class needs at least 2 labeled images to be evaluated")
    val_counts = np.array([np.sum(is_val & (y == c)) for c in classes])
    train_counts = counts - val_counts
    if (len(y) >= MIN_LABELED_FOR_HOLDOUT and val_counts.min() >= MIN_VAL_PER_CLASS_FOR_HOLDOUT
            and train_counts.min() >= 1):
        return EvaluationPlan("holdout")
    return EvaluationPlan("cv", folds=min(MAX_FOLDS, int(counts.min())))


def stratified_folds(y: np.ndarray, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def align_columns(proba: np.ndarray, have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Probabilities over ``want`` classes from columns over ``have`` (absent classes get 0)."""
    if np.array_equal(have, want):
        return proba
    out = np.zeros((proba.shape[0], len(want)), dtype=proba.dtype)
    index = {c: i for i, c in enumerate(want.tolist())}
    for column, c in enumerate(have.tolist()):
        out[:, index[c]] = proba[:, column]
    return out


def out_of_fold_probabilities(
    context: JobContext, fit_fold: Callable[[np.ndarray, np.ndarray], object], X: np.ndarray, y: np.ndarray,
    folds: int, seed: int = 0,
) -> np.ndarray:
    """Each labeled image's probabilities from a model that never saw it (k-fold, stratified)."""
    classes = np.unique(y)
    proba = np.zeros((len(y), len(classes)), dtype=np.float64)
    splits = stratified_folds(y, folds, seed)
    for i, (train, test) in enumerate(splits):
        context.check_cancelled()
        model = fit_fold(X[train], y[train])
        proba[test] = align_columns(model.predict_proba(X[test]), model.classes_, classes)
        context.progress((i + 1) / len(splits), f"Cross-validation fold {i + 1} of {len(splits)}")
    return proba


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[int], class_names: Sequence[str],
    sources: Sequence[str] | None = None,
) -> Metrics:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix (rows true,
    columns predicted, in ``class_names`` order), top-k when there are more than 5 classes, and
    accuracy per source, all from sklearn.metrics."""
    classes = np.asarray(classes)
    y_true = np.asarray(y_true)
    y_pred = classes[np.argmax(proba, axis=1)]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    top_k = {}
    if len(classes) > 5:
        top_k = {f"top_{k}_accuracy": float(top_k_accuracy_score(y_true, proba, k=k, labels=classes)) for k in (3, 5)}
    per_source = {}
    if sources is not None:
        sources = np.asarray(list(sources), dtype=object)
        per_source = {
            str(name): SourceScore(float(np.mean(y_true[sources == name] == y_pred[sources == name])),
                                   int(np.sum(sources == name)))
            for name in sorted(set(sources.tolist()))
        }
    return Metrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)),
        per_class={
            name: ClassScores(float(p), float(r), float(f), int(s))
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        },
        confusion_matrix=ConfusionMatrix(list(class_names), confusion_matrix(y_true, y_pred, labels=classes).tolist()),
        per_source=per_source,
        **top_k,
    )
