"""The fast half of "label these next": which rows to label, and why, given labels and predictions.

Two phases, switched automatically:

* **Typical** (no model yet, fewer than ``SWITCH_LABELS_PER_CLASS`` labels per labeled class on
  average, or fewer than ``SWITCH_MIN_LABELS`` in all): TypiClust. Cluster all images into
  K = labeled + batch groups and take the most typical image of the largest groups holding the fewest
  labels (none, at first): covering the data's modes wins at low budgets, and a class that forms its
  own group gets found.
* **Uncertain**: the unlabeled images with the smallest top-1 - top-2 probability margin, plus a
  share of typical picks from groups with the fewest labels (exploration, so classes the model has
  not met yet still turn up) and a share for the classes with the fewest labels (class balance).

Measured on caltech101-dev and hymenoptera (benchmarks/active_learning.py, development seeds 100+):
the switch looks at the *mean* count, because waiting until every class has 5 labels kept 48-class
runs in the typical phase long after it stopped paying; the 20-label floor, because a 2-class model
fitted on 10 images points its doubts at the wrong places (3-4 points lost at 12-20 labels); plain
margin, because k-means diversity over the 10 x batch least certain images (and over 2x, 3x) lost
0.5-2 points of accuracy at 5-20 labels per class against taking the smallest margins directly.
Pure numpy on rows of a ``SelectionIndex``: no database, no project.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum

import numpy as np

from engine.curation.selection_index import SelectionIndex

SWITCH_LABELS_PER_CLASS = 5  # average labels per labeled class before the model's doubts lead...
SWITCH_MIN_LABELS = 20  # ...and never before this many labels in all (two classes: 10 labels was too early)
MIN_CLUSTER_SIZE = 5  # TypiClust leaves smaller clusters (outliers) for last
EXPLORE_SHARE = 0.25  # of an uncertain batch: typical images of the groups with the fewest labels
BALANCE_SHARE = 0.2  # of an uncertain batch: kept for the classes with the fewest labels
RARE_BELOW_MEDIAN = 0.5  # a class is short of labels below this fraction of the median count


class Strategy(str, Enum):
    TYPICAL = "typical"  # cold start: cover the groups of similar images
    UNCERTAIN = "uncertain"  # where the model hesitates


@dataclass(frozen=True)
class Pick:
    row: int
    reason: str  # plain words for the person labeling
    score: float  # 0..1, higher = more worth labeling by the rule that picked it


@dataclass(frozen=True)
class Selection:
    strategy: Strategy
    picks: list[Pick]


def choose_strategy(labeled_classes: np.ndarray, probabilities: np.ndarray | None) -> Strategy:
    """Uncertain once a model exists, two classes have labels, they have SWITCH_LABELS_PER_CLASS on
    average, and there are SWITCH_MIN_LABELS labels in all."""
    if probabilities is None or len(labeled_classes) < SWITCH_MIN_LABELS:
        return Strategy.TYPICAL
    counts = np.bincount(labeled_classes)
    counts = counts[counts > 0]
    if len(counts) < 2 or counts.mean() < SWITCH_LABELS_PER_CLASS:
        return Strategy.TYPICAL
    return Strategy.UNCERTAIN


def choose_batch(
    index: SelectionIndex,
    labeled_rows: np.ndarray,
    labeled_classes: np.ndarray,
    count: int,
    probabilities: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> Selection:
    """``count`` unlabeled rows to label next (fewer only when fewer are left).

    ``labeled_classes[i]`` is the class index of ``labeled_rows[i]``; ``probabilities`` (N, C) is the
    model's prediction per row in the same class indexing (rows it has none for: NaN), or None.
    """
    labeled_rows = np.unique(np.asarray(labeled_rows, dtype=np.int64))
    labeled_classes = np.asarray(labeled_classes, dtype=np.int64)
    strategy = choose_strategy(labeled_classes, probabilities)
    count = max(0, min(int(count), index.size - len(labeled_rows)))
    if strategy is Strategy.TYPICAL or probabilities is None:
        return Selection(Strategy.TYPICAL, typical_picks(index, labeled_rows, count))
    names = class_names or [f"class {i}" for i in range(probabilities.shape[1])]
    picks = typical_picks(index, labeled_rows, int(round(count * EXPLORE_SHARE)))
    taken = np.concatenate([labeled_rows, [p.row for p in picks]]).astype(np.int64)
    picks += uncertain_picks(taken, labeled_classes, count - len(picks), probabilities, names)
    if len(picks) < count:  # the model has no prediction for some images: cover them the typical way
        taken = np.concatenate([labeled_rows, [p.row for p in picks]]).astype(np.int64)
        picks += typical_picks(index, taken, count - len(picks))
    return Selection(strategy, picks)


def typical_picks(index: SelectionIndex, labeled_rows: np.ndarray, count: int) -> list[Pick]:
    """TypiClust: the most typical unlabeled image of the largest clusters with the fewest labels."""
    if count <= 0:
        return []
    clusters = index.coarse_clusters(len(labeled_rows) + count)
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
    # Priority: clusters big enough first, then the fewest labels (counting this batch's picks), then size.
    heap = [(int(sizes[c] < MIN_CLUSTER_SIZE), int(label_counts[c]), -int(sizes[c]), c)
            for c in range(k) if starts[c] < starts[c + 1]]
    heapq.heapify(heap)
    picks: list[Pick] = []
    while heap and len(picks) < count:
        small, covered, negative_size, cluster = heapq.heappop(heap)
        row = int(order[starts[cluster]])
        starts[cluster] += 1
        reason = _typical_reason(int(sizes[cluster]), int(label_counts[cluster]))
        picks.append(Pick(row, reason, float(index.typicality[row]) / top))
        if starts[cluster] < starts[cluster + 1]:
            heapq.heappush(heap, (small, covered + 1, negative_size, cluster))
    return picks


def _typical_reason(group_size: int, labels: int) -> str:
    if labels == 0:
        return f"typical of a group of {group_size} similar images with no label yet"
    return f"typical of a group of {group_size} similar images with only {labels} labeled"


def uncertain_picks(
    taken_rows: np.ndarray, labeled_classes: np.ndarray, count: int, probabilities: np.ndarray,
    class_names: list[str],
) -> list[Pick]:
    """Images for the classes short of labels, then the smallest top-1 - top-2 margins."""
    if count <= 0:
        return []
    free = ~np.isnan(probabilities).any(axis=1)
    free[taken_rows] = False
    rows = np.flatnonzero(free)
    proba = probabilities[rows]
    picks = _balance_picks(rows, proba, labeled_classes, int(count * BALANCE_SHARE), class_names)
    keep = ~np.isin(rows, [p.row for p in picks])
    rows, proba = rows[keep], proba[keep]
    wanted = min(count - len(picks), len(rows))
    if wanted <= 0:
        return picks
    ordered = np.sort(proba, axis=1)  # two classes at least in this phase
    margin = ordered[:, -1] - ordered[:, -2]
    chosen = np.argpartition(margin, wanted - 1)[:wanted]
    for position in chosen[np.argsort(margin[chosen], kind="stable")]:
        runner_up, first = np.argsort(proba[position])[-2:]
        reason = f"the model hesitates between {class_names[first]} and {class_names[runner_up]}"
        picks.append(Pick(int(rows[position]), reason, float(1.0 - margin[position])))
    return picks


def _balance_picks(
    rows: np.ndarray, proba: np.ndarray, labeled_classes: np.ndarray, budget: int, class_names: list[str],
) -> list[Pick]:
    """Classes short of labels (below half the median count) get the unlabeled image most likely theirs."""
    if budget <= 0 or len(rows) == 0:
        return []
    counts = np.bincount(labeled_classes, minlength=proba.shape[1])[: proba.shape[1]]
    known = counts[counts > 0]
    threshold = RARE_BELOW_MEDIAN * float(np.median(known)) if len(known) else 0.0
    predictable = proba.max(axis=0) > 0  # a class the model never outputs has nothing to point at
    short = [int(c) for c in np.argsort(counts, kind="stable") if counts[c] < threshold and predictable[c]]
    picks: list[Pick] = []
    taken: set[int] = set()
    for cls in short[:budget]:
        for position in np.argsort(-proba[:, cls]):
            if int(position) not in taken:
                taken.add(int(position))
                reason = f"may be {class_names[cls]}, a class with few labels so far"
                picks.append(Pick(int(rows[position]), reason, float(proba[position, cls])))
                break
    return picks
