"""Evaluation you can trust: a stable stratified train/validation split that keeps near-duplicates
together, k-fold cross-validation for small datasets, an out-of-fold prediction for every labeled
image, and metrics from sklearn.metrics.

Split stability: an image keeps its side once placed. Images labeled (or relabeled) since the last
assignment are placed per class, in an order fixed by a hash of their content, so that each class
keeps about ``VAL_FRACTION`` of its images on the validation side. Then the leak guard
(engine.curation.leak_guard) puts each group of near-duplicate labeled images on one side, and the
cross-validation folds keep them in one fold. Pinned images never move.

Honest scores for labeled images: ``evaluation_splits`` holds out every labeled image a model can be
judged on once (the validation side, then the training side in parts; or the k folds), so the grid's
"Label disagrees" and "Unsure" filters and the review queue see what a model that never trained on
an image thinks of it.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, top_k_accuracy_score
from sklearn.model_selection import StratifiedKFold

from engine.curation.duplicates import keep_groups_on_one_side, validation_twins
from engine.curation.leak_guard import (
    GuardFeatures,
    cached_guard_features,
    near_duplicate_groups,
    update_near_duplicates,
)
from engine.models.metrics import ClassScores, ConfusionMatrix, Metrics, SourceScore
from engine.models.ordinal_metrics import ordinal_scores
from engine.runtime.jobs import JobContext
from storage.models import utcnow
from storage.project import Project
from storage.splits import LabeledImage, labeled_images, splits_assigned_at, write_splits

VAL_FRACTION = 0.2
# Below these, a single holdout is too noisy to trust: cross-validate instead.
MIN_LABELED_FOR_HOLDOUT = 200
MIN_VAL_PER_CLASS_FOR_HOLDOUT = 10
MAX_FOLDS = 5
# A quick retrain (after a label edit) cuts the training side in 2 for its out-of-fold scores, not in 4:
# two fits fewer keeps it near a second at 2,500 images (benchmarks/retrain.py).
QUICK_TRAIN_FOLDS = 2

Split = tuple[np.ndarray, np.ndarray]  # (training rows, held-out rows)


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


@dataclass(frozen=True)
class SplitAssignment:
    """Every labeled image's side, and the near-duplicate groups the leak guard kept on one side each
    (none looked for when no features are cached)."""

    sides: dict[int, str]
    groups: list[tuple[int, ...]]


def split_labeled_images(
    project: Project, images: Sequence[LabeledImage] | None = None, features: GuardFeatures | None = None,
    val_fraction: float = VAL_FRACTION, context: JobContext | None = None,
) -> SplitAssignment:
    """Place newly labeled images on the train or validation side, keep near-duplicate groups on one side,
    and store it. ``features``: the cached vectors to compare (default: those cached for the guard's
    feature space, if any). Pinned images (storage.catalog.set_split) keep the side the user chose."""
    started = utcnow()
    images = labeled_images(project) if images is None else list(images)
    assigned_at = splits_assigned_at(project)
    new_ids = {
        img.image_id for img in images
        if not img.split_pinned and (assigned_at is None or img.labeled_at is None or img.labeled_at > assigned_at)
    }
    ids = [img.image_id for img in images]
    features = cached_guard_features(project, ids) if features is None else features
    groups: list[tuple[int, ...]] = []
    if features is not None:
        update_near_duplicates(project, ids, features, context)
        groups = near_duplicate_groups(project)
    placed = place_new_images(images, new_ids, val_fraction)
    pinned = {img.image_id for img in images if img.split_pinned}
    sides = keep_groups_on_one_side(groups, placed, pinned, settled=set(placed) - new_ids)
    write_splits(project, {i: side for i, side in sides.items() if i in new_ids or side != placed[i]}, started)
    return SplitAssignment(sides, groups)


def assign_splits(project: Project, val_fraction: float = VAL_FRACTION) -> dict[int, str]:
    """``split_labeled_images`` with the cached features the guard finds; returns every labeled image's side."""
    return split_labeled_images(project, val_fraction=val_fraction).sides


def twins_without_guard(images: Sequence[LabeledImage], groups: Sequence[tuple[int, ...]],
                        val_fraction: float = VAL_FRACTION) -> int:
    """How many validation images would have a near-duplicate on the training side without the guard:
    every unpinned image placed by its content hash alone, as the split does before the guard."""
    if not groups:
        return 0
    unguarded = place_new_images(images, {img.image_id for img in images if not img.split_pinned}, val_fraction)
    return len(validation_twins(groups, unguarded))


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


def group_numbers(image_ids: Sequence[int], groups: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Per row, a number shared by near-duplicates: the row itself, or its group's first row."""
    row_of = {int(i): r for r, i in enumerate(image_ids)}
    numbers = np.arange(len(row_of), dtype=np.int64)
    for group in groups:
        rows = [row_of[i] for i in group if i in row_of]
        if rows:
            numbers[rows] = min(rows)
    return numbers


def stratified_folds(y: np.ndarray, folds: int, seed: int = 0, groups: np.ndarray | None = None) -> list[Split]:
    """Stratified k-fold splits. With ``groups`` (group_numbers), near-duplicates share their first
    member's fold, unless that left a fold without a test image or a training part without two classes."""
    y = np.asarray(y)
    fold_of = np.zeros(len(y), dtype=np.int64)
    with warnings.catch_warnings():  # a class smaller than k: each fold still gets what there is
        warnings.filterwarnings("ignore", message="The least populated class")
        for i, (_, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)):
            fold_of[test] = i
    if groups is not None:
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        together = fold_of[first][inverse]
        if all(np.any(together == i) and np.unique(y[together != i]).size >= 2 for i in range(folds)):
            fold_of = together
    return [(np.flatnonzero(fold_of != i), np.flatnonzero(fold_of == i)) for i in range(folds)]


def _held_out_parts(rows: np.ndarray, y: np.ndarray, folds: int, seed: int, groups: np.ndarray | None) -> list[Split]:
    """``rows`` cut into at most ``folds`` stratified parts, each held out while every other labeled row trains."""
    counts = np.unique(y[rows], return_counts=True)[1]
    folds = min(folds, int(counts.max()) if len(counts) else 0, len(rows))
    if folds < 2:
        return []
    parts = stratified_folds(y[rows], folds, seed, None if groups is None else groups[rows])
    splits = []
    for _, test in parts:
        held = rows[test]
        train = np.setdiff1d(np.arange(len(y)), held, assume_unique=True)
        if np.unique(y[train]).size >= 2:
            splits.append((train, held))
    return splits


def evaluation_splits(
    plan: EvaluationPlan, y: np.ndarray, is_val: np.ndarray, groups: np.ndarray | None = None, seed: int = 0,
    quick: bool = False,
) -> list[Split]:
    """Held-out parts that give labeled images their out-of-fold probabilities, each image once.

    'holdout': first the validation side (the metrics come from it), then the training side cut in
    ``MAX_FOLDS - 1`` parts (``QUICK_TRAIN_FOLDS`` for a quick retrain). 'cv': the plan's folds. 'none':
    folds over the classes with two or more images (an image alone in its class trains every fold and
    keeps the full model's prediction). Near-duplicates (``groups``) are held out together.
    """
    y = np.asarray(y)
    if plan.kind == "holdout":
        val, train = np.flatnonzero(is_val), np.flatnonzero(~np.asarray(is_val, dtype=bool))
        parts = _held_out_parts(train, y, QUICK_TRAIN_FOLDS if quick else MAX_FOLDS - 1, seed, groups)
        return [(train, val), *parts]
    if plan.kind == "cv":
        return _held_out_parts(np.arange(len(y)), y, plan.folds, seed, groups)
    classes, counts = np.unique(y, return_counts=True)
    enough = counts >= 2
    if not enough.any():
        return []
    checkable = np.flatnonzero(np.isin(y, classes[enough]))
    return _held_out_parts(checkable, y, min(MAX_FOLDS, int(counts[enough].min())), seed, groups)


def twins_across_folds(folds: Sequence[Split], groups: np.ndarray) -> int:
    """Rows with a near-duplicate held out in another fold (it trained the model that scored them)."""
    fold_of = np.zeros(len(groups), dtype=np.int64)
    for i, (_, test) in enumerate(folds):
        fold_of[test] = i
    group_folds = np.unique(np.column_stack([groups, fold_of]), axis=0)
    numbers, n_folds = np.unique(group_folds[:, 0], return_counts=True)
    return int(np.isin(groups, numbers[n_folds > 1]).sum())


def twin_scores(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, evaluated: np.ndarray,
                groups: np.ndarray, before_guard: int) -> dict:
    """Metrics fields of the leak guard: how many evaluated images had a near-duplicate on the training
    side before it, how many have one among the labeled images now (on their own side), and the accuracy
    without those."""
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    with_twin = sizes[inverse][evaluated] > 1
    correct = classes[np.argmax(proba[evaluated], axis=1)] == np.asarray(y_true)[evaluated]
    alone = correct[~with_twin]
    return {"n_val_with_twin_before_guard": int(before_guard), "n_val_with_twin": int(with_twin.sum()),
            "accuracy_without_twins": float(alone.mean()) if with_twin.any() and alone.size else None}


def align_columns(proba: np.ndarray, have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Probabilities over ``want`` classes from columns over ``have`` (absent classes get 0)."""
    if np.array_equal(have, want):
        return proba
    out = np.zeros((proba.shape[0], len(want)), dtype=proba.dtype)
    index = {c: i for i, c in enumerate(want.tolist())}
    for column, c in enumerate(have.tolist()):
        out[:, index[c]] = proba[:, column]
    return out


def held_out_probabilities(
    context: JobContext, fit_fold: Callable[[np.ndarray, np.ndarray], object], X: np.ndarray, y: np.ndarray,
    splits: Sequence[Split], classes: np.ndarray,
) -> np.ndarray:
    """Probabilities (columns ``classes``) of each split's held-out rows from a model fit on its training
    rows; rows no split holds out stay zero."""
    proba = np.zeros((len(y), len(classes)), dtype=np.float64)
    for i, (train, test) in enumerate(splits):
        context.check_cancelled()
        model = fit_fold(X[train], y[train])
        proba[test] = align_columns(model.predict_proba(X[test]), model.classes_, classes)
        context.progress((i + 1) / len(splits), f"Cross-validation fold {i + 1} of {len(splits)}")
    return proba


def out_of_fold_probabilities(
    context: JobContext, fit_fold: Callable[[np.ndarray, np.ndarray], object], X: np.ndarray, y: np.ndarray,
    folds: int, seed: int = 0,
) -> np.ndarray:
    """Each labeled image's probabilities from a model that never saw it (k-fold, stratified)."""
    return held_out_probabilities(context, fit_fold, X, y, stratified_folds(y, folds, seed), np.unique(y))


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[int], class_names: Sequence[str],
    sources: Sequence[str] | None = None, levels: Sequence[int] | None = None,
) -> Metrics:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix (rows true,
    columns predicted, in ``class_names`` order), top-k when there are more than 5 classes, and
    accuracy per source. Ordered classes (``levels``: class ids from lowest to highest) add the
    within-one-level accuracy and the mean absolute error in levels, and order the matrix by level. Everything but top-k is read off one sklearn.metrics.confusion_matrix, as
    sklearn's own scores define it (zero where undefined; balanced accuracy over the classes that
    occur): one input check instead of five, which a retrain after every label edit notices."""
    classes = np.asarray(classes)
    y_true = np.asarray(y_true)
    y_pred = classes[np.argmax(proba, axis=1)]
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    hits, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision, recall, f1 = (_ratio(hits, predicted), _ratio(hits, support), _ratio(2 * hits, support + predicted))
    ordinal, confusion = {}, ConfusionMatrix(list(class_names), matrix.tolist())
    if levels is not None:
        ordinal, confusion = ordinal_scores(matrix, classes, class_names, levels)
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
        accuracy=float(hits.sum() / max(matrix.sum(), 1)),
        balanced_accuracy=float(recall[support > 0].mean()),
        per_class={
            name: ClassScores(float(p), float(r), float(f), int(n))
            for name, p, r, f, n in zip(class_names, precision, recall, f1, support)
        },
        confusion_matrix=confusion,
        per_source=per_source,
        **top_k,
        **ordinal,
    )


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)
