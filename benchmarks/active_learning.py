"""Active learning: does "label these next" reach random picking's accuracy with fewer labels?

Simulates a user on Sortlab's own cached features (benchmarks/dataset_features.py) of caltech101-dev
(48 classes) and hymenoptera (2 classes). Per seed, a stratified quarter of the images is held back as
test images that selection never sees; every other image starts unlabeled. The strategy asks for a
batch, the script reveals the true labels, the classifier is refitted, the test accuracy is recorded.
Batches grow with the budget (checkpoints at 0.5, 1, 1.5, 2, 3, ... 20 labels per class on average).

The classifier is fixed in advance: standardized features + logistic regression with C = 0.1 and
balanced class weights (Sortlab's own default C when there are too few labels to cross-validate); it is
never tuned on test images. Sortlab's strategy sees only the pool's features, the labels it asked for
and the probabilities of the model trained on them (as the app does after each retrain).

"labels_saved_pct" at budget B: with random picking, B x classes labels give accuracy a; Sortlab's
mean curve (linear between checkpoints) reaches a with L labels; saved = 1 - L / (B x classes).
When Sortlab's first checkpoint is already above a, L is that checkpoint and the figure is a lower bound
(marked with ">=" in the table). Printed per data set: a table, then one JSON line; the caltech101-dev
JSON line comes last (run_all.py reads that one).

    python benchmarks/active_learning.py [--seeds 5] [--first-seed 0] [--datasets caltech101-dev]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.dataset_features import LabeledSet, load_labeled_set  # noqa: E402
from engine.curation.selection_index import build_selection_index  # noqa: E402
from engine.curation.selection_rules import choose_batch  # noqa: E402

BUDGETS = (1, 2, 5, 10, 20)  # labels per class on average
CHECKPOINTS = (0.5, 1, 1.5, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20)
TEST_FRACTION = 0.25
CLASSIFIER_C = 0.1
DATASETS = ("hymenoptera", "caltech101-dev")  # caltech last: its JSON line is the script's last line
SEEDS = {"hymenoptera": 20, "caltech101-dev": 5}  # hymenoptera is tiny and noisy: more seeds, same cost


def fit_classifier(X: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=CLASSIFIER_C, class_weight="balanced", max_iter=300))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few labels converge slowly; the result is what a user would get
        return model.fit(X, y)


def split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) row indices: a stratified TEST_FRACTION of each class is held back."""
    rng = np.random.default_rng(seed)
    test = []
    for cls in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == cls))
        test.extend(rows[: max(1, round(len(rows) * TEST_FRACTION))])
    test_mask = np.zeros(len(y), dtype=bool)
    test_mask[test] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


class Learner:
    """The labels revealed so far (class codes in order of discovery) and the model fitted on them."""

    def __init__(self, X_pool: np.ndarray, y_pool: np.ndarray):
        self.X_pool, self.y_pool = X_pool, y_pool
        self.rows: list[int] = []
        self.codes: dict[int, int] = {}  # true class -> code, as the user names classes when first seen
        self.model = None

    def reveal(self, rows) -> None:
        for row in rows:
            self.rows.append(int(row))
            self.codes.setdefault(int(self.y_pool[row]), len(self.codes))
        labels = self.labeled_codes()
        self.model = fit_classifier(self.X_pool[self.rows], labels) if len(np.unique(labels)) >= 2 else None

    def labeled_codes(self) -> np.ndarray:
        return np.array([self.codes[int(self.y_pool[row])] for row in self.rows], dtype=np.int64)

    def pool_probabilities(self) -> np.ndarray | None:
        if self.model is None:
            return None
        proba = np.zeros((len(self.X_pool), len(self.codes)))
        proba[:, self.model.classes_] = self.model.predict_proba(self.X_pool)
        return proba

    def accuracy(self, X_test: np.ndarray, y_test: np.ndarray) -> float:
        if self.model is None:  # one class known: everything is that class
            return float(np.mean(y_test == self.y_pool[self.rows[0]]))
        true_class = {code: cls for cls, code in self.codes.items()}
        predicted = np.array([true_class[int(code)] for code in self.model.predict(X_test)])
        return float(np.mean(predicted == y_test))


def label_counts(n_classes: int) -> list[int]:
    return [max(1, round(c * n_classes)) for c in CHECKPOINTS]


def run_strategy(name: str, data: LabeledSet, seed: int) -> list[float]:
    """Test accuracy at every checkpoint for one seed."""
    pool, test = split(data.y, seed)
    learner = Learner(data.X[pool], data.y[pool])
    rng = np.random.default_rng(1000 + seed)
    random_order = rng.permutation(len(pool))
    index = build_selection_index(learner.X_pool, seed=seed) if name == "sortlab" else None
    curve = []
    for target in label_counts(len(data.class_names)):
        need = min(target, len(pool)) - len(learner.rows)
        if name == "random":
            batch = random_order[len(learner.rows) : len(learner.rows) + need]
        else:
            selection = choose_batch(index, np.array(learner.rows, dtype=np.int64), learner.labeled_codes(), need,
                                     learner.pool_probabilities())
            batch = [pick.row for pick in selection.picks]
        learner.reveal(batch)
        curve.append(learner.accuracy(data.X[test], data.y[test]))
    return curve


def labels_to_reach(target: float, labels: list[int], accuracy: np.ndarray) -> tuple[float | None, bool]:
    """Labels where the curve first reaches ``target`` (linear between checkpoints), and whether that is
    only an upper bound (the first checkpoint already reaches it); None when it never does."""
    for i, acc in enumerate(accuracy):
        if acc >= target:
            if i == 0:
                return float(labels[0]), True
            before = accuracy[i - 1]
            return labels[i - 1] + (target - before) / (acc - before) * (labels[i] - labels[i - 1]), False
    return None, False


def evaluate(data: LabeledSet, seeds: list[int]) -> dict:
    started = time.perf_counter()
    n_classes = len(data.class_names)
    labels = label_counts(n_classes)
    curves = {name: np.array([run_strategy(name, data, seed) for seed in seeds]) for name in ("random", "sortlab")}
    mean = {name: c.mean(axis=0) for name, c in curves.items()}
    se = {name: c.std(axis=0, ddof=1) / np.sqrt(len(seeds)) for name, c in curves.items()}
    print(f"\n{data.name}: {len(data.y)} images, {n_classes} classes, {len(seeds)} seeds "
          f"(test {TEST_FRACTION:.0%} held back per seed), {time.perf_counter() - started:.0f} s")
    print(f"{'budget':>7} {'labels':>6} {'random acc':>15} {'sortlab acc':>15} {'diff':>6} "
          f"{'labels to match':>15} {'saved':>7}")
    saved: list[float | None] = []
    result = {"random_acc": [], "random_se": [], "sortlab_acc": [], "sortlab_se": []}
    for budget in BUDGETS:
        i = CHECKPOINTS.index(budget)
        needed, bound = labels_to_reach(mean["random"][i], labels, mean["sortlab"])
        pct = None if needed is None else 100.0 * (1.0 - needed / labels[i])
        saved.append(None if pct is None else round(pct, 1))
        for name in ("random", "sortlab"):
            result[f"{name}_acc"].append(round(float(mean[name][i]), 4))
            result[f"{name}_se"].append(round(float(se[name][i]), 4))
        shown = "never" if pct is None else f"{'>=' if bound else ''}{pct:.0f}%"
        accuracies = " ".join(f"{mean[name][i]:>8.3f} ± {se[name][i]:.3f}" for name in ("random", "sortlab"))
        print(f"{budget:>7} {labels[i]:>6} {accuracies} {100 * (mean['sortlab'][i] - mean['random'][i]):>+6.1f} "
              f"{'-' if needed is None else f'{needed:.0f}':>15} {shown:>7}")
    worst = min(100 * (mean["sortlab"][i] - mean["random"][i]) for i in range(len(CHECKPOINTS)))
    print(f"worst difference over all {len(CHECKPOINTS)} checkpoints: {worst:+.1f} points")
    return {"benchmark": "active_learning", "dataset": data.name, "budgets": list(BUDGETS), **result,
            "labels_saved_pct": saved, "seeds": len(seeds), "worst_diff_points": round(worst, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per data set (default: 20 hymenoptera, 5 caltech)")
    parser.add_argument("--first-seed", type=int, default=0, help="strategy development used seeds 100+")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    args = parser.parse_args()
    results = []
    for name in args.datasets:
        data = load_labeled_set(name)
        if data is None:
            print(f"{name}: not present under ../shared/data, skipped")
            continue
        count = args.seeds or SEEDS.get(name, 5)
        with threadpool_limits(1):  # small fits: one BLAS thread is faster than two fighting on a busy machine
            result = evaluate(data, list(range(args.first_seed, args.first_seed + count)))
        print(json.dumps(result), flush=True)
        results.append(result)
    if not results:
        print(json.dumps({"benchmark": "active_learning", "skipped": "no data set under ../shared/data"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
