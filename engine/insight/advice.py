"""How many more labels each class needs: learning curves fitted to the project's own labels.

The linear method is refitted, with C fixed, on stratified subsamples of the training part of each
cross-validation fold (1/4, 1/2, 3/4 and all of it, a few repeats); the held-out fold scores it, so
every point is an out-of-fold recall at a known number of training labels. A saturating power law
acc(n) = a - b * n^(-c) (a in [0, 1]) is fitted per class (n = that class's training labels) and
overall (balanced accuracy, n = all training labels); solving it for 5 more points gives the advice,
and refits on bootstrap resamples of the points give its range. Each class's curve assumes the other
classes keep their labels; a class with fewer than MIN_PER_CLASS labels gets no advice (too noisy).
No Qt here: the GUI runs ``advice_job`` and shows the plain ``Advice``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from sklearn.model_selection import StratifiedKFold

from engine.models.classifiers import CLASSIFIERS, DEFAULT_C, make_classifier
from engine.models.ordinal import ORDINAL_METHOD, make_feature_classifier
from engine.runtime.jobs import JobContext
from storage.catalog import list_classes
from storage.class_order import class_levels
from storage.featurestore import load_vectors
from storage.modelstore import active_model
from storage.project import Project
from storage.splits import labeled_images

MIN_PER_CLASS = 5
PLUS_POINTS = 0.05
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
MAX_FOLDS = 4
REPEATS = 2
BOOTSTRAPS = 30
# Advice that needs more than this many times the current labels is extrapolated too far to trust.
MAX_GROWTH = 10.0
RANGE_PERCENTILES = (10, 90)
# Learning curves of linear heads on deep features decay like n^(-c) with c well under 1; steeper fits
# come from noisy points and would call a class saturated far too early.
EXPONENT_RANGE = (0.05, 1.0)
# "Saturated" only when this share of the bootstrap curves agrees (a noisy flat fit is no evidence).
SATURATED_AGREEMENT = 0.75


@dataclass(frozen=True)
class LearningCurve:
    """Observed (training labels, out-of-fold accuracy) points and the fitted a - b * n^(-c)."""

    sizes: tuple[float, ...]
    accuracies: tuple[float, ...]
    a: float
    b: float
    c: float

    def predict(self, n) -> np.ndarray:
        return power_law(np.asarray(n, dtype=np.float64), self.a, self.b, self.c)

    def labels_for(self, accuracy: float) -> float:
        """Training labels at which the curve reaches ``accuracy`` (inf when it never does)."""
        if accuracy >= self.a or self.b <= 0:
            return math.inf
        return (self.b / (self.a - accuracy)) ** (1.0 / self.c)


@dataclass(frozen=True)
class ClassAdvice:
    """One class (or, with ``name`` None, the whole model): where it is and how many more labels it needs.

    ``accuracy`` is the out-of-fold recall (balanced accuracy overall), ``more_for_plus_5_points`` the
    extra labels for 5 more points, ``more_range`` its (low, high) bootstrap range (high None: maybe
    never); both None with ``reason`` when the curve cannot tell, ``saturated`` when 5 points are out of reach.
    """

    name: str | None
    labeled: int
    accuracy: float | None = None
    more_for_plus_5_points: int | None = None
    more_range: tuple[int, int | None] | None = None
    saturated: bool = False
    reason: str = ""
    curve: LearningCurve | None = None

    def sentence(self) -> str:
        """The advice in plain words."""
        who = self.name if self.name is not None else "The whole model"
        if self.saturated:
            return (f"{who} is saturated at {round(100 * self.accuracy)} %: more images would likely add "
                    "less than 5 points.")
        if self.more_for_plus_5_points is None:
            return f"{who}: {self.reason}"
        now = round(100 * self.accuracy)
        spread = ""
        if self.more_range is not None:
            low, high = self.more_range
            spread = f" (somewhere between {low} and {high})" if high is not None else f" (at least {low})"
        target = min(100, now + round(100 * PLUS_POINTS))
        subject = f"images of {self.name}" if self.name is not None else "labeled images overall"
        return (f"About {self.more_for_plus_5_points} more {subject}{spread} would likely bring "
                f"{'it' if self.name is not None else 'the balanced accuracy'} from {now} % to about {target} %.")

    def to_json(self) -> dict:
        """The ``train --json`` row (the overall row has ``"class": null``)."""
        return {"class": self.name, "labeled": self.labeled, "accuracy": self.accuracy,
                "more_for_plus_5_points": self.more_for_plus_5_points}


@dataclass(frozen=True)
class Advice:
    """Advice for each class with labels, and overall."""

    classes: list[ClassAdvice]
    overall: ClassAdvice

    def sentences(self) -> list[str]:
        return [self.overall.sentence()] + [c.sentence() for c in self.classes]

    def to_json(self) -> list[dict]:
        return [c.to_json() for c in self.classes]


def power_law(n, a, b, c):
    return a - b * np.power(n, -c)


def fit_power_law(sizes, accuracies) -> tuple[float, float, float] | None:
    """(a, b, c) of the saturating power law through the points (None when the fit fails)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    accuracies = np.asarray(accuracies, dtype=np.float64)
    if np.unique(sizes).size < 2:
        return None
    top = float(np.max(accuracies))
    guess = (min(1.0, top + 0.02), max(1e-3, top - float(np.min(accuracies))) * float(np.min(sizes)) ** 0.5, 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow while trying extreme exponents
            bounds = ([0.0, 0.0, EXPONENT_RANGE[0]], [1.0, 100.0, EXPONENT_RANGE[1]])
            params, _ = curve_fit(power_law, sizes, accuracies, p0=guess, bounds=bounds, maxfev=5000)
    except (RuntimeError, ValueError):
        return None
    return float(params[0]), float(params[1]), float(params[2])


def curve_points(context: JobContext, X: np.ndarray, y: np.ndarray, method: str = "logreg", C: float = DEFAULT_C,
                 seed: int = 0, fractions=FRACTIONS, repeats: int = REPEATS, max_folds: int = MAX_FOLDS,
                 levels=None):
    """Out-of-fold points: (training labels per class [points, classes], recall per class [points,
    classes], total training labels [points], balanced accuracy [points]), one point per repeat and
    fraction. Needs at least two images in every class. ``levels``: the class order of ordered classes."""
    classes, counts = np.unique(y, return_counts=True)
    folds = min(max_folds, int(counts.min()))
    per_class_n, recalls, totals, balanced = [], [], [], []
    steps, done = repeats * folds * len(fractions), 0
    for repeat in range(repeats):
        rng = np.random.default_rng(seed + repeat)
        correct = np.zeros((len(fractions), len(classes)))
        trained = np.zeros((len(fractions), len(classes)))
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + repeat)
        for train, test in splitter.split(X, y):
            by_class = [rng.permutation(train[y[train] == c]) for c in classes]
            for f, fraction in enumerate(fractions):
                context.check_cancelled()
                picked = np.concatenate([rows[: max(1, round(fraction * len(rows)))] for rows in by_class])
                with warnings.catch_warnings():  # one image per class is a small subsample, not a regression
                    warnings.filterwarnings("ignore", message="The number of unique classes")
                    model = _classifier(method, C, seed, levels).fit(X[picked], y[picked])
                hits = model.predict(X[test]) == y[test]
                for k, c in enumerate(classes):
                    correct[f, k] += hits[y[test] == c].sum()
                    trained[f, k] += np.count_nonzero(y[picked] == c)
                done += 1
                context.progress(done / steps, "Fitting learning curves")
        recall = correct / counts  # every image is held out once per repeat
        per_class_n.extend(trained / folds)
        recalls.extend(recall)
        totals.extend((trained / folds).sum(axis=1))
        balanced.extend(recall.mean(axis=1))
    return classes, np.array(per_class_n), np.array(recalls), np.array(totals), np.array(balanced)


def _classifier(method: str, C: float, seed: int, levels=None):
    """The project's linear method with C fixed (logistic regression for a network method); ``max_folds=1``
    keeps the SVM's calibration out of inner cross-validation (the curve only needs the predicted class)."""
    if method == ORDINAL_METHOD and levels is not None:
        return make_feature_classifier(method, levels, C=C, random_state=seed, max_folds=1)
    return make_classifier(method if method in CLASSIFIERS else "logreg", C=C, random_state=seed, max_folds=1)


def advise(name: str | None, labeled: int, current_n: float, sizes, accuracies, accuracy: float,
           seed: int = 0, bootstraps: int = BOOTSTRAPS, context: JobContext | None = None) -> ClassAdvice:
    """Advice from one curve's points: ``current_n`` is where the labels are now (on the curve's axis).
    ``context``: checked between the bootstrap's curve fits (a safe point to stop or let another job run)."""
    params = fit_power_law(sizes, accuracies)
    if params is None:
        return ClassAdvice(name, labeled, accuracy, reason="the learning curve could not be fitted.")
    curve = LearningCurve(tuple(map(float, sizes)), tuple(map(float, accuracies)), *params)
    more = _more_labels(curve, current_n)
    samples = _bootstrap_more_labels(sizes, accuracies, current_n, seed, bootstraps, context)
    if more is None:
        if samples and np.mean(np.isinf(samples)) >= SATURATED_AGREEMENT:
            return ClassAdvice(name, labeled, accuracy, saturated=True, curve=curve)
        return ClassAdvice(name, labeled, accuracy, curve=curve,
                           reason="too noisy to tell whether more images would help; label a few more and train again.")
    if more > MAX_GROWTH * current_n:
        return ClassAdvice(name, labeled, accuracy, curve=curve,
                           reason=f"5 more points would need over {int(MAX_GROWTH * current_n)} more images; "
                           "the curve cannot tell that far.")
    spread = None
    if samples:
        finite = np.minimum(np.asarray(samples), np.finfo(np.float64).max / 4)  # inf would make nan of the range
        low, high = np.percentile(finite, RANGE_PERCENTILES)
        high = math.inf if high >= np.finfo(np.float64).max / 8 else high
        spread = (int(min(low, more)), None if not np.isfinite(high) else int(max(high, more)))
    return ClassAdvice(name, labeled, accuracy, int(more), spread, curve=curve)


def _bootstrap_more_labels(sizes, accuracies, current_n: float, seed: int, bootstraps: int,
                           context: JobContext | None = None) -> list[float]:
    """Labels needed for 5 more points by curves refitted to resampled points (inf: out of reach)."""
    rng = np.random.default_rng(seed)
    sizes, accuracies = np.asarray(sizes), np.asarray(accuracies)
    samples = []
    for _ in range(bootstraps):
        if context is not None:
            context.check_cancelled()
        pick = rng.integers(0, len(sizes), len(sizes))
        refit = fit_power_law(sizes[pick], accuracies[pick])
        if refit is not None:
            extra = _more_labels(LearningCurve((), (), *refit), current_n)
            samples.append(math.inf if extra is None else float(extra))
    return samples


def _more_labels(curve: LearningCurve, current_n: float) -> int | None:
    """Labels to add for PLUS_POINTS above the curve's value at ``current_n`` (None: out of reach)."""
    target = float(curve.predict(current_n)) + PLUS_POINTS
    needed = curve.labels_for(target) if target < 1.0 else math.inf
    return None if not np.isfinite(needed) else max(1, math.ceil(needed - current_n))


def learning_advice(context: JobContext, X: np.ndarray, y: np.ndarray, class_names: dict[int, str],
                    method: str = "logreg", C: float = DEFAULT_C, seed: int = 0, levels=None) -> Advice:
    """Advice for labeled features ``X``/``y`` (class ids, named by ``class_names``)."""
    ids, counts = np.unique(y, return_counts=True)
    name_of = {int(c): class_names.get(int(c), str(c)) for c in ids}
    too_few = {int(c) for c, n in zip(ids, counts) if n < MIN_PER_CLASS}
    if len(ids) - len(too_few) < 2:
        reason = f"label at least {MIN_PER_CLASS} images in each of two classes to get advice."
        return Advice([_too_few(name_of[int(c)], int(n)) for c, n in zip(ids, counts)],
                      ClassAdvice(None, int(len(y)), reason=reason))
    usable = np.isin(y, [c for c, n in zip(ids, counts) if n >= 2])
    classes, per_class_n, recalls, totals, balanced = curve_points(context, X[usable], y[usable], method, C, seed,
                                                                   levels=levels)
    last = np.array(FRACTIONS) == 1.0
    at_full = np.tile(last, len(recalls) // len(FRACTIONS))
    advice = []
    for c, n in zip(ids, counts):
        if int(c) in too_few:
            advice.append(_too_few(name_of[int(c)], int(n)))
            continue
        k = int(np.searchsorted(classes, c))
        accuracy = float(recalls[at_full, k].mean())
        advice.append(advise(name_of[int(c)], int(n), float(n), per_class_n[:, k], recalls[:, k], accuracy, seed,
                             context=context))
    if too_few:
        overall = ClassAdvice(None, int(len(y)), float(balanced[at_full].mean()),
                              reason=f"every class needs {MIN_PER_CLASS} labeled images for overall advice.")
    else:
        overall = advise(None, int(len(y)), float(len(y)), totals, balanced, float(balanced[at_full].mean()), seed,
                         context=context)
    return Advice(advice, overall)


def _too_few(name: str, labeled: int) -> ClassAdvice:
    return ClassAdvice(name, labeled, reason=f"only {labeled} labeled; label at least {MIN_PER_CLASS} to get advice.")


def project_advice(context: JobContext, project: Project, method: str, backbone: str, layer: str,
                   C: float | None = None, seed: int = 0) -> Advice:
    """Advice for the project's labeled images with cached ``backbone``/``layer`` features."""
    names = {c.id: c.name for c in list_classes(project)}
    image_ids, X = load_vectors(project, backbone, layer)
    row_of = {int(i): r for r, i in enumerate(image_ids)}
    everything = labeled_images(project)
    labeled = [img for img in everything if img.image_id in row_of]
    if not labeled:
        reason = "no labeled image has features yet: train a model with a linear method first."
        ids, counts = np.unique([img.class_id for img in everything], return_counts=True)
        return Advice([ClassAdvice(names.get(int(c), str(c)), int(n), reason=reason) for c, n in zip(ids, counts)],
                      ClassAdvice(None, len(everything), reason=reason))
    rows = np.array([row_of[img.image_id] for img in labeled], dtype=np.int64)
    y = np.array([img.class_id for img in labeled], dtype=np.int64)
    advice = learning_advice(context, X[rows], y, names, method, DEFAULT_C if C is None else float(C), seed,
                             class_levels(project))
    position = {name: i for i, name in enumerate(names.values())}  # list_classes is in the class list's order
    return Advice(sorted(advice.classes, key=lambda item: position.get(item.name, len(position))), advice.overall)


def advice_job(context: JobContext, project: Project) -> Advice:
    """The GUI's job: advice for the active model's features, method and C."""
    info = active_model(project)
    if info is None:
        return Advice([], ClassAdvice(None, 0, reason="train a model first."))
    return project_advice(context, project, info.method, info.backbone, info.layer, info.params.get("C"),
                          int(info.params.get("seed", 0)))
