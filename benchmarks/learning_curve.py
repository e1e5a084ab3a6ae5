"""Does the learning-curve advice predict what more labels actually bring?

On ``../shared/data/caltech101-dev`` (Lite0 features, cached by dataset_features.py), for n = 5 and 10
labels per class and several seeds: draw n labeled images per class, fit the overall learning curve
from them exactly as the app does (engine.insight.advice: out-of-fold balanced accuracy at subsample
sizes, saturating power law), and predict the balanced accuracy at 2n per class. Then label n more per
class, train on the 2n (logistic regression, C = DEFAULT_C) and measure the balanced accuracy on every
image not drawn. Reported: mean absolute error of the prediction in points (target <= 3), and, as a
baseline, the error of assuming no gain (the out-of-fold accuracy at n). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_features import load_labeled_set  # noqa: E402
from engine.insight.advice import FRACTIONS, curve_points, fit_power_law, power_law  # noqa: E402
from engine.models.classifiers import DEFAULT_C, make_classifier  # noqa: E402
from engine.runtime.jobs import JobContext  # noqa: E402

DATASET = "caltech101-dev"
SIZES = (5, 10)
TARGET_MAE_POINTS = 3.0


def one_run(X: np.ndarray, y: np.ndarray, n: int, seed: int, C: float) -> dict:
    """Predicted and measured balanced accuracy at 2n per class, from n per class drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    drawn = [rng.permutation(np.flatnonzero(y == c))[: 2 * n] for c in classes]
    first = np.concatenate([rows[:n] for rows in drawn])
    both = np.concatenate(drawn)
    held_out = np.setdiff1d(np.arange(len(y)), both)

    _, _, _, totals, balanced = curve_points(JobContext(), X[first], y[first], "logreg", C, seed)
    params = fit_power_law(totals, balanced)
    predicted = float(power_law(2 * len(first), *params)) if params is not None else float("nan")
    oof_at_n = float(balanced[len(FRACTIONS) - 1 :: len(FRACTIONS)].mean())  # trained on all of each fold

    model = make_classifier("logreg", C=C, random_state=seed).fit(X[both], y[both])
    measured = float(balanced_accuracy_score(y[held_out], model.predict(X[held_out])))
    return {"n": n, "seed": seed, "predicted_2n": predicted, "measured_2n": measured, "oof_at_n": oof_at_n,
            "error_points": 100 * (predicted - measured), "no_gain_error_points": 100 * (oof_at_n - measured)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--C", type=float, default=DEFAULT_C)
    args = parser.parse_args()
    started = time.perf_counter()
    data = load_labeled_set(DATASET)
    if data is None:
        print(json.dumps({"benchmark": "learning_curve", "skipped": f"{DATASET} is not in ../shared/data"}))
        return 0
    counts = np.bincount(data.y)
    keep = np.isin(data.y, np.flatnonzero(counts >= 2 * max(SIZES) + 5))  # leave images to measure on
    X, y = data.X[keep], np.unique(data.y[keep], return_inverse=True)[1]
    report = {"benchmark": "learning_curve", "dataset": DATASET, "images": int(len(y)),
              "classes": int(y.max() + 1), "C": args.C, "seeds": args.seeds, "sizes": {}}
    errors = []
    for n in SIZES:
        runs = [one_run(X, y, n, seed, args.C) for seed in range(args.seeds)]
        for run in runs:
            print(f"n={n} seed={run['seed']}: predicted {100 * run['predicted_2n']:.1f} %, measured "
                  f"{100 * run['measured_2n']:.1f} % at 2n (out-of-fold at n {100 * run['oof_at_n']:.1f} %)",
                  flush=True)
        errors += [abs(r["error_points"]) for r in runs]
        report["sizes"][str(n)] = {
            "mae_points": round(statistics.fmean(abs(r["error_points"]) for r in runs), 2),
            "mean_error_points": round(statistics.fmean(r["error_points"] for r in runs), 2),
            "no_gain_mae_points": round(statistics.fmean(abs(r["no_gain_error_points"]) for r in runs), 2),
            "measured_2n": round(statistics.fmean(r["measured_2n"] for r in runs), 4),
            "predicted_2n": round(statistics.fmean(r["predicted_2n"] for r in runs), 4),
        }
    report["mae_points"] = round(statistics.fmean(errors), 2)
    report["meets_target"] = report["mae_points"] <= TARGET_MAE_POINTS
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
