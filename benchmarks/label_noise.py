"""Review labels on real features with planted mistakes: does the queue put the wrong labels first?

For each data set (``../shared/data/caltech101-dev``, ``hymenoptera``; Lite0 features, cached by
dataset_features.py), flip 5 % and 10 % of the labels, either to a random other class or to the class
most confused with the true one (from clean out-of-fold predictions), over several seeds, and run
Sortlab's review (engine.curation.review.review_arrays: 5-fold out-of-fold logistic regression, C =
DEFAULT_C, what a project without a model gets). Reported per condition, mean over seeds: precision
and recall of the queue's top k (k = number flipped) for both rankings (self-confidence, normalized
margin), AUROC, and precision/recall of the top ``suggested_count`` (the confident-learning estimate).
Target: recall >= 0.65 at k for 10 % random flips. With two classes (hymenoptera) "confusable" is the
one other class, so both modes flip the same images, and both rankings order them alike. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_features import LabeledSet, load_labeled_set  # noqa: E402
from engine.curation.review import RANKINGS, label_columns, label_quality, review_arrays  # noqa: E402
from engine.models.classifiers import DEFAULT_C  # noqa: E402

DATASETS = ("caltech101-dev", "hymenoptera")
RATES = (0.05, 0.10)
MODES = ("random", "confusable")
TARGET_RECALL = 0.65


def most_confusable(data: LabeledSet, C: float) -> np.ndarray:
    """For every class, the other class its images lean to most in clean out-of-fold probabilities."""
    review = review_arrays(np.arange(len(data.y)), data.y, data.X, C=C)
    n_classes = len(data.class_names)
    lean = np.zeros((n_classes, n_classes))
    for c in range(n_classes):
        lean[c] = review.probabilities[review.labels == c].mean(axis=0)
    np.fill_diagonal(lean, -np.inf)
    return np.argmax(lean, axis=1)


def flip_labels(y: np.ndarray, rate: float, mode: str, confusable: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    chosen = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
    for i in chosen:
        if mode == "confusable":
            noisy[i] = confusable[y[i]]
        else:
            noisy[i] = rng.choice([c for c in range(n_classes) if c != y[i]])
    return noisy


def score_run(data: LabeledSet, noisy: np.ndarray, C: float, seed: int) -> dict:
    review = review_arrays(np.arange(len(noisy)), noisy, data.X, C=C, seed=seed)
    is_flipped = noisy[review.image_ids] != data.y[review.image_ids]
    k = int(is_flipped.sum())
    columns = label_columns(review.labels, review.classes)
    result = {"flipped": k, "suggested_count": review.suggested_count}
    for ranking in RANKINGS:
        quality = label_quality(review.probabilities, columns, ranking)
        order = np.lexsort((review.image_ids, quality))
        hits_at_k = int(is_flipped[order[:k]].sum())
        result[f"{ranking}_recall_at_k"] = hits_at_k / k
        result[f"{ranking}_auroc"] = float(roc_auc_score(is_flipped, -quality))
        if ranking == "self_confidence":
            top = order[:review.suggested_count]
            hits = int(is_flipped[top].sum())
            result["precision_at_suggested"] = hits / max(len(top), 1)
            result["recall_at_suggested"] = hits / k
    return result


def mean_over(runs: list[dict]) -> dict:
    return {key: round(statistics.fmean(run[key] for run in runs), 4) for key in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--C", type=float, default=DEFAULT_C)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    args = parser.parse_args()
    report: dict = {"benchmark": "label_noise", "C": args.C, "seeds": args.seeds, "datasets": {}}
    started = time.perf_counter()
    for name in args.datasets:
        data = load_labeled_set(name)
        if data is None:
            print(f"{name}: not in ../shared/data, skipped")
            continue
        confusable = most_confusable(data, args.C)
        conditions = {}
        for rate in RATES:
            for mode in MODES:
                runs = [score_run(data, flip_labels(data.y, rate, mode, confusable, len(data.class_names), seed),
                                  args.C, seed) for seed in range(args.seeds)]
                summary = mean_over(runs)
                worst = min(run["self_confidence_recall_at_k"] for run in runs)
                summary["min_self_confidence_recall_at_k"] = round(worst, 4)
                conditions[f"{mode}_{int(rate * 100)}pct"] = summary
                print(f"{name} {mode:10s} {rate:4.0%}: k={summary['flipped']:.0f}  recall@k self-confidence "
                      f"{summary['self_confidence_recall_at_k']:.3f} (margin {summary['margin_recall_at_k']:.3f})  "
                      f"AUROC {summary['self_confidence_auroc']:.3f}  suggested {summary['suggested_count']:.0f}: "
                      f"precision {summary['precision_at_suggested']:.3f} recall {summary['recall_at_suggested']:.3f}",
                      flush=True)
        target = conditions["random_10pct"]["self_confidence_recall_at_k"]
        report["datasets"][name] = {"images": len(data.y), "classes": len(data.class_names),
                                    "conditions": conditions, "meets_target": target >= TARGET_RECALL}
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
