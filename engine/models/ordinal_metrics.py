"""The scores of ordered classes (fill levels), read off the confusion matrix.

Exact accuracy is the usual accuracy; within-one-level accuracy counts a prediction one level off as
right ("3/4" called "full"); the mean absolute error is in levels (0 = always right, 4 = "empty" always
called "full" on a five-level scale). Level distances come from the whole class order, so a class
without labels between two others still counts as a level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.models.metrics import ConfusionMatrix


def level_positions(classes: Sequence[int], levels: Sequence[int]) -> np.ndarray:
    """Each class's level (its index in ``levels``, the class ids from lowest to highest)."""
    position = {int(c): i for i, c in enumerate(levels)}
    missing = [int(c) for c in classes if int(c) not in position]
    if missing:
        raise ValueError(f"Class ids {missing} are not in the class order.")
    return np.array([position[int(c)] for c in classes], dtype=np.int64)


def ordinal_scores(matrix: np.ndarray, classes: Sequence[int], class_names: Sequence[str],
                   levels: Sequence[int]) -> tuple[dict[str, float], ConfusionMatrix]:
    """({within_one_accuracy, mean_absolute_error_levels}, the confusion matrix in level order) from a
    confusion matrix whose rows (true) and columns (predicted) follow ``classes``."""
    matrix = np.asarray(matrix, dtype=np.int64)
    level = level_positions(classes, levels)
    distance = np.abs(level[:, None] - level[None, :])
    total = max(int(matrix.sum()), 1)
    scores = {"within_one_accuracy": float(matrix[distance <= 1].sum() / total),
              "mean_absolute_error_levels": float((matrix * distance).sum() / total)}
    order = np.argsort(level, kind="stable")
    ordered = matrix[np.ix_(order, order)]
    return scores, ConfusionMatrix([class_names[i] for i in order], ordered.tolist())
