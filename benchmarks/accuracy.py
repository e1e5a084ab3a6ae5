"""More right answers from the same labels: recipes (features x linear head) on real images, by labeling budget.

For each data set (``../shared/data/caltech101-dev``, ``../shared/data/hymenoptera``, the digits demo
rendered as engine.images.demo renders it), for budgets of 5, 10 and 30 labeled images per class and
"all", over several random draws: label that many images per class at random, train the recipe, and
score the images that were never labeled: mean per-class accuracy (balanced accuracy), mean +- std over
the draws. hymenoptera draws its labels from ``train/`` and is scored on ``val/``; the others score every
image not drawn, and "all" labels a random 80 % of each class. Features are Sortlab's own, computed
through the engine and cached by benchmarks/dataset_features.py (mirror-image views included).

A recipe is a feature set and a linear head, named FEATURES-HEAD:

- features: ``lite0-pooled`` (EfficientNet-Lite0's pooled penultimate layer, the default before issue 15),
  ``lite1-pooled`` (the default now), ``lite2-pooled``, ``liteN-pooled+block6`` (the pooled layer and
  block 6's pooled output, each scaled to unit length, side by side), ``liteN-flip`` (the pooled features
  of the image and of its mirror image, averaged: a test-time view computed once at extraction),
  ``lite0+lite1-pooled`` (both networks' pooled features, each at unit length, side by side);
- heads (engine.models.classifiers.make_classifier('logreg', ...)): ``logreg`` (the default before issue
  15: standardized features, balanced class weights, C chosen by 5-fold CV on log loss from ``OLD_CS``),
  ``default`` (whatever make_classifier('logreg') does now: unit-length rows, C = 1), ``unit`` (unit-length
  rows with the old CV search), ``unit-C<c>`` (unit-length rows, C fixed).

The baseline is ``lite0-pooled-logreg``; ``DEFAULT_RECIPE`` is what Sortlab trains by default.
What the numbers chose (5 draws, 2026-12-02): unit-length rows with C = 1 (C = 0.3 and 3 score within
0.001 on caltech101-dev) and Lite1. Mirror-image views (``lite1-flip``) gain at most 0.3 points on
caltech101-dev, lose up to 0.6 on hymenoptera, and double extraction; block 6 beside the pooled layer
loses 0.6 points at 5 per class on caltech101-dev and up to 2 on hymenoptera: neither is used.
Also measured: extraction images/s of each feature set (the engine's pipeline on the same 64
hymenoptera photos, interleaved, best of two; views and concatenated layers are separate passes here)
and training seconds per recipe and budget. Human-readable tables, then one JSON line per data set;
the last line is caltech101-dev's (``--dataset`` picks others).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_features import DIGITS_DEMO, LabeledSet, load_labeled_set  # noqa: E402
from engine.features.backbones import DEFAULT_BACKBONE  # noqa: E402
from engine.models.classifiers import make_classifier, unit_rows  # noqa: E402
from engine.models.evaluation import VAL_FRACTION, plan_evaluation  # noqa: E402
from engine.models.recipes import recipe_for_training  # noqa: E402
from engine.runtime.jobs import JobContext  # noqa: E402

DATASETS = ("hymenoptera", DIGITS_DEMO, "caltech101-dev")
BUDGETS = (5, 10, 30, "all")
ALL_TRAIN_FRACTION = 0.8
DRAWS = 5
BASELINE = "lite0-pooled-logreg"
# Today's default C grid (before issue 15), for the baseline.
OLD_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SPEED_IMAGES = 64

LITE = {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1", "lite2": "efficientnet_lite2"}
SHORT_NAMES = {backbone: short for short, backbone in LITE.items()}


@dataclass(frozen=True)
class FeatureRecipe:
    """Which cached features make a recipe's vectors: ``parts`` (backbone, layer) side by side (each at
    unit length when there are several), each averaged with its mirror-image view when ``flip``."""

    name: str
    parts: tuple[tuple[str, str | None], ...]
    flip: bool = False

    def load(self, dataset: str) -> LabeledSet | None:
        blocks, base = [], None
        for backbone, layer in self.parts:
            data = load_labeled_set(dataset, backbone, layer)
            if data is None:
                return None
            X = data.X.astype(np.float64)
            if self.flip:
                mirrored = load_labeled_set(dataset, backbone, layer, views="flip")
                assert mirrored.paths == data.paths
                X = (X + mirrored.X) / 2.0
            blocks.append(unit_rows(X) if len(self.parts) > 1 else X)
            base = base or data
        return LabeledSet(base.name, base.paths, base.y, base.class_names, np.hstack(blocks))


FEATURES = {
    recipe.name: recipe
    for recipe in (
        FeatureRecipe("lite0-pooled", ((LITE["lite0"], None),)),
        FeatureRecipe("lite1-pooled", ((LITE["lite1"], None),)),
        FeatureRecipe("lite2-pooled", ((LITE["lite2"], None),)),
        FeatureRecipe("lite0-pooled+block6", ((LITE["lite0"], None), (LITE["lite0"], "block6"))),
        FeatureRecipe("lite0-flip", ((LITE["lite0"], None),), flip=True),
        FeatureRecipe("lite1-pooled+block6", ((LITE["lite1"], None), (LITE["lite1"], "block6"))),
        FeatureRecipe("lite1-flip", ((LITE["lite1"], None),), flip=True),
        FeatureRecipe("lite0+lite1-pooled", ((LITE["lite0"], None), (LITE["lite1"], None))),
    )
}


def _head(name: str) -> Callable[[int], object]:
    """A head name -> a factory of unfitted classifiers (given the draw's seed)."""
    if name == "logreg":
        return lambda seed: make_classifier("logreg", Cs=OLD_CS, unit_length=False, standardize=True,
                                            random_state=seed)
    if name == "unit":
        return lambda seed: make_classifier("logreg", Cs=OLD_CS, unit_length=True, standardize=False,
                                            random_state=seed)
    if name.startswith("unit-C"):
        C = float(name.removeprefix("unit-C"))
        return lambda seed: make_classifier("logreg", C=C, unit_length=True, standardize=False, random_state=seed)
    if name == "default":  # whatever make_classifier('logreg') does now
        return lambda seed: make_classifier("logreg", random_state=seed)
    if name == "auto":  # Quick's automatic recipe choice, as a project's full training makes it
        return AutoRecipeHead
    raise ValueError(f"unknown head {name!r}")


class AutoRecipeHead:
    """engine.models.recipes' choice on the draw's labeled images, as a project training makes it: a
    random 20 % of each class plays the validation side (which never chooses), the rest chooses when
    the plan is a holdout; the model then fits every labeled image with the chosen C."""

    def __init__(self, seed: int):
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray):
        rng = np.random.default_rng(self.seed)
        is_val = np.zeros(len(y), dtype=bool)
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            is_val[members[:int(round(VAL_FRACTION * len(members)))]] = True
        choice = recipe_for_training(JobContext(), plan_evaluation(y, is_val), X, y, is_val, self.seed, None)
        self.chosen = choice.recipe.name
        self.model = make_classifier("logreg", C=choice.recipe.C, random_state=self.seed).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X)


def split_recipe(name: str) -> tuple[FeatureRecipe, str]:
    for features in sorted(FEATURES, key=len, reverse=True):
        if name.startswith(features + "-"):
            return FEATURES[features], name[len(features) + 1 :]
    raise ValueError(f"unknown recipe {name!r}: features must be one of {', '.join(FEATURES)}")


DEFAULT_RECIPE = f"{SHORT_NAMES[DEFAULT_BACKBONE]}-pooled-default"
DEFAULT_RECIPES = (
    BASELINE, "lite0-pooled-unit-C1", "lite0-pooled-default", DEFAULT_RECIPE, "lite2-pooled-default",
    "lite0-pooled+block6-default", "lite1-pooled+block6-default", "lite0-flip-default", "lite1-flip-default",
    "lite0+lite1-pooled-default", f"{SHORT_NAMES[DEFAULT_BACKBONE]}-pooled-auto",
)


def draw(data: LabeledSet, budget, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labeled rows, test rows) of one draw: ``budget`` random images per class (all of a class when it
    has fewer), test = every image never labeled. hymenoptera labels from train/, tests on val/."""
    rng = np.random.default_rng(seed)
    is_val = np.array(["/val/" in p for p in data.paths]) if data.name == "hymenoptera" else None
    pool = np.flatnonzero(~is_val) if is_val is not None else np.arange(len(data.y))
    labeled = []
    for c in np.unique(data.y):
        members = rng.permutation(pool[data.y[pool] == c])
        if budget == "all":
            take = len(members) if is_val is not None else int(round(ALL_TRAIN_FRACTION * len(members)))
        else:
            take = min(budget, len(members) - (0 if is_val is not None else 1))
        labeled.append(members[:take])
    labeled = np.sort(np.concatenate(labeled))
    test = np.flatnonzero(is_val) if is_val is not None else np.setdiff1d(np.arange(len(data.y)), labeled)
    return labeled, test


def evaluate(data: LabeledSet, head: str, budget, draws: int) -> tuple[list[float], list[float]]:
    """Mean per-class accuracy and training seconds of each draw."""
    accuracies, seconds = [], []
    for seed in range(draws):
        labeled, test = draw(data, budget, seed)
        model = _head(head)(seed)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(data.X[labeled], data.y[labeled])
        seconds.append(time.perf_counter() - started)
        if getattr(model, "chosen", None):
            print(f"    {head}: {model.chosen} chosen ({data.name}, {budget} per class, draw {seed})", flush=True)
        accuracies.append(float(balanced_accuracy_score(data.y[test], model.predict(data.X[test]))))
    return accuracies, seconds


def extraction_speed(feature_names: list[str]) -> dict[str, float]:
    """Images/s of each feature set on the same hymenoptera photos (best of two interleaved rounds)."""
    from dataset_features import _class_files, _extract, dataset_dir

    root = dataset_dir("hymenoptera")
    if root is None:
        return {}
    paths = [p for p, _ in _class_files(root)][:: max(1, len(_class_files(root)) // SPEED_IMAGES)][:SPEED_IMAGES]
    passes = {name: [(b, layer, "flip" if FEATURES[name].flip and view else None)
                     for b, layer in FEATURES[name].parts for view in ((0, 1) if FEATURES[name].flip else (0,))]
              for name in feature_names}
    for name in feature_names:  # load each network (and make its ONNX copy) before timing
        for backbone, layer, views in passes[name]:
            _extract(paths[:8], backbone, layer, views)
    best = {name: float("inf") for name in feature_names}
    for _ in range(2):
        for name in feature_names:
            started = time.perf_counter()
            for backbone, layer, views in passes[name]:
                _extract(paths, backbone, layer, views)
            best[name] = min(best[name], time.perf_counter() - started)
    print(file=sys.stderr)
    return {name: round(len(paths) / best[name], 1) for name in feature_names}


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}±{statistics.pstdev(values):.3f}"


def run_dataset(dataset: str, recipes: list[str], draws: int, speed: dict[str, float]) -> dict | None:
    cache: dict[str, LabeledSet | None] = {}
    table: dict[str, list[list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    for recipe in recipes:
        features, head = split_recipe(recipe)
        if features.name not in cache:
            cache[features.name] = features.load(dataset)
        data = cache[features.name]
        if data is None:
            print(f"{dataset}: not found, skipped")
            return None
        table[recipe], seconds[recipe] = [], []
        for budget in BUDGETS:
            accuracies, fit_s = evaluate(data, head, budget, draws)
            table[recipe].append(accuracies)
            seconds[recipe].append(statistics.mean(fit_s))
        print(f"{dataset:15s} {recipe:36s} " + "  ".join(
            f"{budget!s:>3}: {fmt(acc)} ({s:5.2f} s)" for budget, acc, s in zip(BUDGETS, table[recipe], seconds[recipe])
        ) + (f"  extraction {speed[features.name]} img/s" if features.name in speed else ""), flush=True)
    return {
        "benchmark": "accuracy", "dataset": dataset, "budgets": list(BUDGETS), "draws": draws,
        "recipes": {r: [round(statistics.mean(a), 4) for a in table[r]] for r in recipes},
        "std": {r: [round(statistics.pstdev(a), 4) for a in table[r]] for r in recipes},
        "train_s": {r: [round(s, 3) for s in seconds[r]] for r in recipes},
        "extraction_images_per_s": {r: speed.get(split_recipe(r)[0].name) for r in recipes},
        "default": DEFAULT_RECIPE, "baseline": BASELINE,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", dest="datasets", help=f"default: {', '.join(DATASETS)}")
    parser.add_argument("--recipe", action="append", dest="recipes", help="FEATURES-HEAD (default: the main set)")
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument("--no-speed", action="store_true", help="skip the extraction-speed measurement")
    args = parser.parse_args(argv)
    recipes = args.recipes or list(DEFAULT_RECIPES)
    feature_names = list(dict.fromkeys(split_recipe(r)[0].name for r in recipes))
    speed = {} if args.no_speed else extraction_speed(feature_names)
    if speed:
        print("extraction images/s: " + ", ".join(f"{k} {v}" for k, v in speed.items()))
    results = [run_dataset(d, recipes, args.draws, speed) for d in args.datasets or DATASETS]
    for result in results:
        if result is not None:
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
