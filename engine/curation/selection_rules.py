"""The fast half of "label these next": which rows to label, and why, given labels and predictions.

Two phases, switched automatically:

* **Typical** (no model yet, or a class with fewer than ``MIN_LABELS_PER_CLASS`` labels): TypiClust.
  Cluster all images into K = labeled + batch groups and take the most typical image of the largest
  groups holding the fewest labels (none, at first). Low budgets are won by covering the data's modes.
* **Uncertain**: margin with diversity. Among the ~10 x batch unlabeled images with the smallest
  top-1 - top-2 probability margin, k-means into ``batch`` groups and take the image nearest each
  centre (so the batch is not ten near-copies of one confusion).

Both keep rare classes in view: the typical phase covers clusters before it revisits any, and the
uncertain phase keeps a share of each batch for the classes with the fewest labels.
Pure numpy/scikit-learn on rows of a ``SelectionIndex``: no database, no project.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from engine.curation.selection_index import KMEANS_THREADS, SelectionIndex

MIN_LABELS_PER_CLASS = 5  # every labeled class needs this many before the model's doubts are trusted
CANDIDATES_PER_PICK = 10  # the uncertain phase clusters the 10 x batch least certain images
MIN_CLUSTER_SIZE = 5  # TypiClust leaves smaller clusters (outliers) for last
TYPICAL_SHARE = 0.0
PICK_IN_GROUP = 'centre'
BALANCE_SHARE = 0.2  # of an uncertain batch, kept for the classes with the fewest labels
RARE_BELOW_MEDIAN = 0.5  # a class is short of labels below this fraction of the median count


class Strategy(str, Enum):
    TYPICAL = "typical"  # cold start: cover the groups of similar images
    UNCERTAIN = "uncertain"  # the model's doubts, spread over the feature space


@dataclass(frozen=True)
class Pick:
    row: int
    reason: str  # plain words for the person labeling
    score: float  # 0..1, higher = more worth labeling by this batch's own rule


@dataclass(frozen=True)
class Selection:
    strategy: Strategy
    picks: list[Pick]


def choose_strategy(labeled_classes: np.ndarray, probabilities: np.ndarray | None) -> Strategy:
    """Uncertain once a model exists and every class that has labels has at least MIN_LABELS_PER_CLASS."""
    if probabilities is None or len(labeled_classes) == 0:
        return Strategy.TYPICAL
    counts = np.bincount(labeled_classes)
    counts = counts[counts > 0]
    if len(counts) < 2 or counts.min() < MIN_LABELS_PER_CLASS:
        return Strategy.TYPICAL
    return Strategy.UNCERTAIN


def choose_batch(
    index: SelectionIndex,
    labeled_rows: np.ndarray,
    labeled_classes: np.ndarray,
    count: int,
    probabilities: np.ndarray | None = None,
    class_names: list[str] | None = None,
    strategy: Strategy | None = None,
) -> Selection:
    """``count`` unlabeled rows to label next, best first.

    ``labeled_classes[i]`` is the class index of ``labeled_rows[i]``; ``probabilities`` (N, C) is the
    model's prediction per row in the same class indexing (rows it has none for: NaN), or None.
    """
    labeled_rows = np.asarray(labeled_rows, dtype=np.int64)
    labeled_classes = np.asarray(labeled_classes, dtype=np.int64)
    strategy = strategy or choose_strategy(labeled_classes, probabilities)
    count = max(0, min(int(count), index.size - len(np.unique(labeled_rows))))
    if count == 0:
        return Selection(strategy, [])
    if strategy is Strategy.UNCERTAIN and probabilities is not None:
        names = class_names or [f"class {i}" for i in range(probabilities.shape[1])]
        explore = typical_picks(index, labeled_rows, int(round(count * TYPICAL_SHARE)))
        taken = np.concatenate([labeled_rows, [p.row for p in explore]]).astype(np.int64)
        picks = _uncertain_picks(index, taken, labeled_classes, count - len(explore), probabilities, names)
        picks = picks + explore
        if len(picks) == count:
            return Selection(strategy, picks)
        taken = np.concatenate([labeled_rows, [p.row for p in picks]]).astype(np.int64)
        return Selection(strategy, picks + typical_picks(index, taken, count - len(picks)))
    return Selection(Strategy.TYPICAL, typical_picks(index, labeled_rows, count))


def typical_picks(index: SelectionIndex, labeled_rows: np.ndarray, count: int) -> list[Pick]:
    """TypiClust: the most typical unlabeled image of the largest clusters with the fewest labels."""
    clusters = index.coarse_clusters(len(np.unique(labeled_rows)) + count)
    k = int(clusters.max()) + 1
    sizes = np.bincount(clusters, minlength=k)
    labeled_mask = np.zeros(index.size, dtype=bool)
    labeled_mask[labeled_rows] = True
    label_counts = np.bincount(clusters[labeled_mask], minlength=k)
    # Unlabeled rows grouped by cluster, most typical first: one sort, then a pointer per cluster.
    free = np.flatnonzero(~labeled_mask)
    order = free[np.lexsort((-index.typicality[free], clusters[free]))]
    starts = np.searchsorted(clusters[order], np.arange(k + 1))
    top = float(index.typicality.max()) or 1.0
    heap = [(int(sizes[c] < MIN_CLUSTER_SIZE), int(label_counts[c]), -int(sizes[c]), c)
            for c in range(k) if starts[c] < starts[c + 1]]
    heapq.heapify(heap)
    picks: list[Pick] = []
    while heap and len(picks) < count:
        small, labels, negative_size, cluster = heapq.heappop(heap)
        row = int(order[starts[cluster]])
        starts[cluster] += 1
        picks.append(Pick(row, _typical_reason(-negative_size, labels), float(index.typicality[row]) / top))
        if starts[cluster] < starts[cluster + 1]:
            heapq.heappush(heap, (small, labels + 1, negative_size, cluster))
    return picks


def _typical_reason(group_size: int, labels: int) -> str:
    if labels == 0:
        return f"typical of a group of {group_size} similar images with no label yet"
    return f"typical of a group of {group_size} similar images with only {labels} labeled"


def _uncertain_picks(
    index: SelectionIndex, labeled_rows: np.ndarray, labeled_classes: np.ndarray, count: int,
    probabilities: np.ndarray, class_names: list[str],
) -> list[Pick]:
    free = np.ones(index.size, dtype=bool)
    free[labeled_rows] = False
    free &= ~np.isnan(probabilities).any(axis=1)
    rows = np.flatnonzero(free)
    if len(rows) == 0:
        return []
    proba = probabilities[rows]
    top_two = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.column_stack([1 - proba, proba])
    margin = top_two[:, 1] - top_two[:, 0]
    picks = _balance_picks(rows, proba, labeled_classes, int(np.floor(count * BALANCE_SHARE)), class_names)
    chosen = {p.row for p in picks}
    remaining = count - len(picks)
    keep = ~np.isin(rows, list(chosen))
    rows, proba, margin = rows[keep], proba[keep], margin[keep]
    if remaining and len(rows):
        picks += _diverse_low_margin(index, rows, proba, margin, remaining, class_names)
    return picks


def _diverse_low_margin(
    index: SelectionIndex, rows: np.ndarray, proba: np.ndarray, margin: np.ndarray, count: int,
    class_names: list[str],
) -> list[Pick]:
    """k-means the CANDIDATES_PER_PICK x count smallest-margin rows; the row nearest each centre."""
    n_candidates = min(len(rows), CANDIDATES_PER_PICK * count)
    candidates = np.argpartition(margin, n_candidates - 1)[:n_candidates]
    groups = min(count, n_candidates)
    points = index.reduced[rows[candidates]]
    if groups == n_candidates:
        nearest = candidates
    else:
        with threadpool_limits(KMEANS_THREADS):
            model = KMeans(n_clusters=groups, n_init=1, random_state=index.seed).fit(points)
        if PICK_IN_GROUP == "margin":
            groups_of = model.labels_
            nearest = np.array([candidates[groups_of == g][np.argmin(margin[candidates[groups_of == g]])] for g in np.unique(groups_of)])
        else:
            nearest = candidates[_nearest_distinct(model.transform(points))]
    ranked = sorted(nearest, key=lambda c: margin[c])
    picks = []
    for c in ranked:
        first, second = np.argsort(proba[c])[::-1][:2]
        reason = f"the model hesitates between {class_names[first]} and {class_names[second]}"
        picks.append(Pick(int(rows[c]), reason, float(1.0 - margin[c])))
    return picks


def _nearest_distinct(distance: np.ndarray) -> list[int]:
    """For each centre (column), the nearest candidate (row) not already taken by another centre."""
    taken: set[int] = set()
    chosen = []
    for centre in np.argsort(distance.min(axis=0)):
        for candidate in np.argsort(distance[:, centre]):
            if int(candidate) not in taken:
                taken.add(int(candidate))
                chosen.append(int(candidate))
                break
    return chosen


def _balance_picks(
    rows: np.ndarray, proba: np.ndarray, labeled_classes: np.ndarray, budget: int, class_names: list[str],
) -> list[Pick]:
    """Classes short of labels (below half the median count) get the unlabeled image most likely theirs."""
    if budget <= 0:
        return []
    counts = np.bincount(labeled_classes, minlength=proba.shape[1])[: proba.shape[1]]
    known = counts[counts > 0]
    threshold = RARE_BELOW_MEDIAN * float(np.median(known)) if len(known) else 0.0
    short = [int(c) for c in np.argsort(counts, kind="stable") if counts[c] < threshold][:budget]
    picks: list[Pick] = []
    taken: set[int] = set()
    for cls in short:
        for position in np.argsort(-proba[:, cls]):
            if int(position) not in taken:
                taken.add(int(position))
                reason = f"may be {class_names[cls]}, a class with few labels so far"
                picks.append(Pick(int(rows[position]), reason, float(proba[position, cls])))
                break
    return picks
