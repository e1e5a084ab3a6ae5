"""Training a model version: features -> classifier -> honest evaluation -> predictions, in one job.

``train_model`` is the job the GUI and the CLI run. For the linear methods it extracts any missing
features first, then fits on the cached vectors; 'probe' and 'finetune' train in torch on images
(engine.torch.network_training). Either way the new version is stored with its metrics, its training run (curves)
and a prediction for every image, and becomes the active model.

Every labeled image's stored prediction is out-of-fold (engine.models.evaluation.evaluation_splits):
from a model that did not train on it, so a labeling mistake shows up as a disagreeing suggestion;
unlabeled images get the full model's prediction.

Quick retraining (after a label change): the previous version's C is reused, every fit starts from a
solution near its own (the previous version's, or the full model's), no cross-validated search runs,
and the training side is cut in fewer parts for its out-of-fold scores. On large projects the models
are fitted together in float32 (``_fit_and_evaluate``); ``TrainResult.timings`` names each phase
(labels_s, vectors_s, leak_guard_s, train_s, predict_s, store_s; benchmarks/retrain.py --labeled N).
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from engine.features.backbones import DEFAULT_BACKBONE, get_backbone
from engine.models.classifiers import LinearPredictor, check_labels, refit_with_C
from engine.curation.leak_guard import GuardFeatures
from engine.models.evaluation import (
    EvaluationPlan,
    SplitAssignment,
    VAL_FRACTION,
    align_columns,
    classification_metrics,
    evaluation_splits,
    group_numbers,
    held_out_probabilities,
    plan_evaluation,
    split_labeled_images,
    stratified_folds,
    twin_scores,
    twins_across_folds,
    twins_without_guard,
)
from engine.models import recipes
from engine.models.evolving import plan_version, prune
from engine.models.methods import DEFAULT_METHOD, get_method
from engine.models.metrics import Metrics
from engine.models.ordinal import make_feature_classifier, project_method
from engine.models.results import TrainResult
from engine.runtime.jobs import JobCancelled, JobContext, user_message
from storage.catalog import labeled_class_count, list_classes
from storage.class_order import class_levels
from storage.featurestore import load_vectors
from storage.modelstore import (
    ModelInfo,
    NewModel,
    PredictionBatch,
    finish_training_run,
    list_models,
    model_weights,
    save_model_version,
    start_training_run,
)
from storage.project import Project
from storage.splits import LabeledImage, labeled_images

# Quick retraining reuses the previous C while the labeled set has grown by at most this fraction.
QUICK_REUSE_GROWTH = 0.1
# How each evaluation plan tests the model, in the words the training panel shows.
TESTED_HOW = {"holdout": "testing it on the images held back",
              "cv": "testing it on each image with a model that did not learn from it"}
# Folds of the C search inside each cross-validation fold (nested CV): 3 keeps it to a few seconds.
NESTED_INNER_FOLDS = 3


@dataclass
class LabeledFeatures:
    """Cached features of every image, and which of them are labeled (with class, side and source)."""

    image_ids: np.ndarray
    X: np.ndarray
    rows: np.ndarray  # row in X of each labeled image
    y: np.ndarray  # class ids
    is_val: np.ndarray
    sources: list[str]
    groups: np.ndarray  # per labeled image, a number it shares with its near-duplicates
    images: list[LabeledImage]  # the labeled images with features, in row order
    split: SplitAssignment


def resolve_backbone(backbone: str | None, layer: str | None) -> tuple[str, str]:
    spec = get_backbone(backbone or DEFAULT_BACKBONE)
    return spec.name, spec.layer(layer).name


def train_model(
    context: JobContext, project: Project, method: str = DEFAULT_METHOD, backbone: str | None = DEFAULT_BACKBONE,
    layer: str | None = None, seed: int = 0, quick: bool | None = None, automatic: bool = False,
) -> TrainResult:
    """``_train_model`` holding the project's training lock: one training job at a time per project, across
    all clients of a team project (the others get TrainingBusyError: "being trained by ...")."""
    from storage.team_store import training_lock

    with training_lock(project):
        return _train_model(context, project, method, backbone, layer, seed, quick, automatic)


def _train_model(
    context: JobContext, project: Project, method: str = DEFAULT_METHOD, backbone: str | None = DEFAULT_BACKBONE,
    layer: str | None = None, seed: int = 0, quick: bool | None = None, automatic: bool = False,
) -> TrainResult:
    """Train, evaluate and store a new active model version. ``quick``: None decides by itself (reuse the
    previous C when the labels barely changed), True always reuses it, False searches C again.
    ``automatic``: a retrain after a label change, stored as the evolving version (engine.models.evolving)."""
    training_method = get_method(project_method(project, method))
    method = training_method.name
    backbone, layer = resolve_backbone(backbone, layer)
    # Two labeled classes at least, checked before any extraction (a couple of index look-ups).
    check_labels(np.arange(labeled_class_count(project, at_most=2)))
    if not training_method.trains_on_features:
        from engine.runtime.edition import require_torch

        require_torch(f"{training_method.title} training")
        from engine.torch.network_training import train_network

        return train_network(context, project, method, backbone, layer, seed)
    from engine.features.extraction import ensure_features

    ensure_features(context.subcontext(0.0, 0.7), project, backbone, layer)
    return train_on_cached_features(context.subcontext(0.7, 1.0), project, method, backbone, layer, seed, quick,
                                    automatic)


def train_on_cached_features(
    context: JobContext, project: Project, method: str, backbone: str, layer: str, seed: int = 0,
    quick: bool | None = None, automatic: bool = False,
) -> TrainResult:
    """The linear-method training step on features already in the project (records a training run)."""
    run_id = start_training_run(project, method)
    try:
        with quiet_for_other_threads():
            result = _train_linear(context, project, method, backbone, layer, seed, quick, run_id, automatic)
    except JobCancelled:
        finish_training_run(project, run_id, "cancelled", message="Cancelled by the user.")
        raise
    except Exception as exc:
        finish_training_run(project, run_id, "failed", message=user_message(exc))
        raise
    return result


TRAINING_SWITCH_INTERVAL_S = 0.002  # how soon a thread waiting for the GIL gets it while training runs
_QUIET_GUARD = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple[bool, float] = (True, 0.005)


@contextlib.contextmanager
def quiet_for_other_threads():
    """While a linear training runs: Python's cycle collector off, and the GIL handed over sooner.

    Training at 100k images makes and drops hundreds of thousands of objects (label rows, feature
    blobs, prediction rows); that many allocations set off full collections, each walking every object
    of the process with the GIL held: the GUI thread stood still 0.3-0.4 s at a time. What training
    allocates has no cycles: reference counting frees it all at the end. And its long Python loops
    keep the GIL for CPython's switch interval (5 ms) each time another thread asks for it; a label
    key's write asks ~10 times (once per SQLite call), so it took 45-77 ms while a 100k training ran,
    15-30 ms with 2 ms (benchmarks/gui_latency.py --case retrain-100k). Both are process-wide: the
    first training in sets them, the last one out restores them."""
    global _quiet_depth, _quiet_saved
    with _QUIET_GUARD:
        if _quiet_depth == 0:
            _quiet_saved = (gc.isenabled(), sys.getswitchinterval())
            gc.disable()
            sys.setswitchinterval(min(TRAINING_SWITCH_INTERVAL_S, _quiet_saved[1]))
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_GUARD:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                was_enabled, interval = _quiet_saved
                sys.setswitchinterval(interval)
                if was_enabled:
                    gc.enable()


def load_labeled_features(
    project: Project, backbone: str, layer: str, context: JobContext | None = None,
    timings: dict[str, float] | None = None,
) -> LabeledFeatures:
    """Assign sides to newly labeled images (keeping near-duplicates together), then line up labels with
    cached feature rows. ``timings``: filled with the seconds of each step (labels, vectors, leak guard)."""
    timings = {} if timings is None else timings
    began = time.perf_counter()
    images = labeled_images(project)
    listed = time.perf_counter()
    image_ids, X = load_vectors(project, backbone, layer)
    loaded = time.perf_counter()
    split = split_labeled_images(project, images, GuardFeatures(backbone, layer, image_ids, X), context=context)
    timings.update(labels_s=listed - began, vectors_s=loaded - listed, leak_guard_s=time.perf_counter() - loaded)
    row_of = {int(i): r for r, i in enumerate(image_ids)}
    labeled = [img for img in images if img.image_id in row_of]
    ids = [img.image_id for img in labeled]
    return LabeledFeatures(
        image_ids, X,
        np.array([row_of[i] for i in ids], dtype=np.int64),
        np.array([img.class_id for img in labeled], dtype=np.int64),
        np.array([split.sides.get(img.image_id, img.split) == "val" for img in labeled], dtype=bool),
        [img.source for img in labeled], group_numbers(ids, split.groups), labeled, split,
    )


def previous_linear_model(
    project: Project, method: str, backbone: str, layer: str, classes: np.ndarray
) -> tuple[ModelInfo, LinearPredictor] | None:
    """The newest version of the same method, features and classes (for quick retraining)."""
    for info in reversed(list_models(project)):
        if (info.method, info.backbone, info.layer) == (method, backbone, layer) and "C" in info.params:
            if list(info.class_ids) == classes.tolist():
                return info, LinearPredictor.from_bytes(model_weights(project, info.version))
            return None
    return None


def _use_quick(quick: bool | None, previous: ModelInfo | None, n_labeled: int) -> bool:
    if previous is None or quick is False:
        return False
    return quick is True or n_labeled <= previous.n_labeled * (1 + QUICK_REUSE_GROWTH)


def _train_linear(
    context: JobContext, project: Project, method: str, backbone: str, layer: str, seed: int,
    quick: bool | None, run_id: int, automatic: bool = False,
) -> TrainResult:
    started = time.perf_counter()
    context.progress(0.0, "Loading features")
    timings: dict[str, float] = {}
    data = load_labeled_features(project, backbone, layer, context.subcontext(0.0, 0.1), timings)
    # Every cached row labeled, in order (a large labeled project): no copy of the features.
    everything = len(data.rows) == len(data.X) and np.array_equal(data.rows, np.arange(len(data.rows)))
    X_labeled, y = (data.X if everything else data.X[data.rows]), data.y
    classes, _ = check_labels(y)
    names_by_id = {c.id: c.name for c in list_classes(project)}
    class_names = [names_by_id.get(int(c), str(c)) for c in classes]
    plan = plan_evaluation(y, data.is_val)
    previous = previous_linear_model(project, method, backbone, layer, classes)
    levels = class_levels(project)
    if previous and previous[1].scales_rows != make_feature_classifier(method, levels).unit_length:
        previous = None  # saved before unit-length rows (issue 15): its C was chosen for standardized features
    is_quick = _use_quick(quick, previous[0] if previous else None, len(y))
    warm = previous[1] if (is_quick and previous) else None
    loaded = time.perf_counter()
    recipe = None  # Quick's recipe (engine.models.recipes): the default method only
    if method == DEFAULT_METHOD:
        recipe = recipes.recipe_for_training(context.subcontext(0.1, 0.3), plan, X_labeled, y, data.is_val, seed,
                                             previous[0] if is_quick else None)
    C = previous[0].params["C"] if is_quick else (recipe.recipe.C if recipe else None)
    base = make_feature_classifier(method, levels, C=C, random_state=seed, warm_start_from=warm)
    context.check_cancelled()
    context.progress(0.3, f"Training on {len(y)} labeled images, {TESTED_HOW.get(plan.kind, 'too few to test it')}")

    splits = evaluation_splits(plan, y, data.is_val, data.groups, seed, quick=is_quick)
    final, metrics, held_out_proba = _fit_and_evaluate(
        context.subcontext(0.3, 0.85), base, plan, splits, X_labeled, y, data, classes, class_names, levels
    )
    metrics = metrics.with_counts(evaluation=plan.description, n_labeled=int(len(y)),
                                  evaluation_note=plan.reason or metrics.evaluation_note,
                                  **_leak_guard_scores(plan, splits, y, held_out_proba, classes, data, seed))
    trained = time.perf_counter()

    context.check_cancelled()
    context.progress(0.9, "Predicting every image")
    proba = final.predict_proba(data.X)
    predicted = time.perf_counter()
    out_of_fold = np.zeros(len(data.image_ids), dtype=bool)
    held_out = np.zeros(len(y), dtype=bool)
    for _, test in splits:
        held_out[test] = True
    proba[data.rows[held_out]] = held_out_proba[held_out]
    out_of_fold[data.rows[held_out]] = True
    params = {"C": final.C_, "seed": seed, "quick": is_quick, "n_features": int(data.X.shape[1]),
              "cv_results": getattr(final, "cv_results_", [])}
    if recipe:
        params |= {"recipe": recipe.recipe.title, "recipe_name": recipe.recipe.name, "recipe_reason": recipe.reason,
                   "recipe_scores": recipe.scores}
    keeping = plan_version(list_models(project), automatic, metrics.accuracy)
    params.update(keeping.params)
    version = save_model_version(
        project,
        NewModel(method, backbone, layer, class_names, classes.tolist(), final.to_bytes(), params, metrics.to_json(), int(len(y))),
        PredictionBatch(data.image_ids, proba, out_of_fold),
    )
    curves = [{"kind": "cv", "C": r["C"], "score": r["score"]} for r in params["cv_results"]]
    finish_training_run(project, run_id, "done", curves=curves, model_version=version)
    prune(project, keeping)
    done = time.perf_counter()
    context.progress(1.0, f"Model version {version} ready")
    timings.update(load_s=loaded - started, train_s=trained - loaded, predict_s=predicted - trained,
                   store_s=done - predicted, predict_store_s=done - trained, total_s=done - started)
    return TrainResult(version, method, backbone, layer, metrics, int(len(y)), run_id, params, timings)


def _fold_model(base):
    """The unfitted model for one cross-validation fold: nested model selection.

    With C to be searched (``base.C`` None), each fold searches it on its own training part, with
    ``NESTED_INNER_FOLDS`` inner folds, instead of reusing the C chosen on every labeled image: that C
    has seen the fold's held-out images, which makes the out-of-fold accuracy optimistic. It costs
    a few seconds, and only when a small project (cross-validated, under ~200 labels) is trained
    from scratch. A quick retrain (``base.C`` set to the previous version's C) keeps that C in every
    fold and starts from the previous version's solution: slightly optimistic, but it keeps retraining
    after a label edit well under a second.
    """
    if base.C is not None:
        return refit_with_C(base, base.C, base.warm_start_from)
    return refit_with_C(base, None).set_params(max_folds=min(base.max_folds, NESTED_INNER_FOLDS))


def _fit_and_evaluate(context, base, plan: EvaluationPlan, splits, X, y, data: LabeledFeatures, classes, class_names,
                      levels=None):
    """Fit the final model (all labeled images) and one model per split of ``splits``, and measure the
    way ``plan`` says.

    Returns (final model, metrics, held-out probabilities of each labeled image (zero for an image no
    split holds out)). The holdout plan's first split is the validation side: its model chooses C (when
    not quick) and gives the metrics; the other splits' models, which only score the training side,
    reuse that C and start from the final model's solution (a started solver stops within its
    tolerance of the fold's own optimum, tight enough that it forgets the labels it started from:
    engine.models.logistic_float32.TOL; measured on Lite0 features with 10 % flipped labels, the
    out-of-fold scores find the same mistakes as cold fits).

    Large projects (``LogisticClassifier.fits_in_float32``, from ~3,000 labeled images of 1280-d features):
    the same models, each on the same rows and judged the same way, are fitted together, every step one
    pass over the features for all of them, all started from the previous version's solution when there
    is one (engine.models.logistic_float32). At 100,000 labeled images: ~2 s instead of ~60 s (busy
    2-core test machine)."""
    proba = np.zeros((len(y), len(classes)), dtype=np.float64)
    if plan.kind == "holdout" and _shares_passes(base, X, y, splits):
        # Large: the validation model, the final one and the out-of-fold ones fitted together, one pass
        # over the features per step for all of them (LogisticClassifier.fit_subsets).
        (train, val), others = splits[0], splits[1:]
        context.progress(0.1, f"Fitting {len(splits) + 1} models together")
        parts = [train, np.arange(len(y)), *(rows for rows, _ in others)]
        split_model, final, *fold_models = base.fit_subsets(X, y, parts)
        context.check_cancelled()
        proba[val] = split_model.predict_proba(X[val])
        metrics = classification_metrics(y[val], proba[val], classes, class_names,
                                         [data.sources[r] for r in val], levels)
        metrics = metrics.with_counts(n_train=int(len(train)), n_val=int(len(val)))
        for model, (_, test) in zip(fold_models, others):
            proba[test] = model.predict_proba(X[test])
        return final, metrics, proba
    if plan.kind == "holdout":
        (train, val), others = splits[0], splits[1:]
        split_model = refit_with_C(base, base.C, base.warm_start_from).fit(X[train], y[train])
        context.check_cancelled()
        proba[val] = align_columns(split_model.predict_proba(X[val]), split_model.classes_, classes)
        metrics = classification_metrics(y[val], proba[val], classes, class_names,
                                         [data.sources[r] for r in val], levels)
        metrics = metrics.with_counts(n_train=int(len(train)), n_val=int(len(val)))
        context.progress(0.3, "Refitting on all labeled images")
        warm = split_model.predictor_ if np.array_equal(split_model.classes_, classes) else None
        final = refit_with_C(base, split_model.C_, warm).fit(X, y)
        final.cv_results_ = split_model.cv_results_

        def fit_fold(X_fold, y_fold):
            return refit_with_C(base, final.C_, final.predictor_).fit(X_fold, y_fold)
    else:
        final = refit_with_C(base, base.C, base.warm_start_from).fit(X, y)
        others = splits

        def fit_fold(X_fold, y_fold):
            return _fold_model(base).fit(X_fold, y_fold)
    context.check_cancelled()
    held = held_out_probabilities(context.subcontext(0.4, 1.0), fit_fold, X, y, others, classes)
    for _, test in others:
        proba[test] = held[test]
    if plan.kind == "cv":
        evaluated = np.sort(np.concatenate([test for _, test in splits]))
        metrics = classification_metrics(y[evaluated], proba[evaluated], classes, class_names,
                                         [data.sources[r] for r in evaluated], levels)
        metrics = metrics.with_counts(n_train=int(len(y)), n_val=int(len(evaluated)), folds=plan.folds)
    elif plan.kind != "holdout":
        metrics = Metrics(n_train=int(len(y)), n_val=0)
    return final, metrics, proba


def _shares_passes(base, X: np.ndarray, y: np.ndarray, splits) -> bool:
    """Whether ``base`` can fit every split's model together (a large logistic fit, every class in every
    training part)."""
    fits_in_float32 = getattr(base, "fits_in_float32", None)
    if fits_in_float32 is None or not fits_in_float32(X):
        return False
    n_classes = np.unique(y).size
    return all(np.unique(y[train]).size == n_classes for train, _ in splits)


def _leak_guard_scores(plan: EvaluationPlan, splits, y, proba, classes, data: LabeledFeatures, seed: int) -> dict:
    """The metrics' near-duplicate fields: twins before the guard, twins now, accuracy without them."""
    if plan.kind == "holdout":
        evaluated = splits[0][1]
        before = twins_without_guard(data.images, data.split.groups, VAL_FRACTION)
    elif plan.kind == "cv":
        evaluated = np.sort(np.concatenate([test for _, test in splits]))
        before = twins_across_folds(stratified_folds(y, plan.folds, seed), data.groups)
    else:
        return {}
    return twin_scores(y, proba, classes, evaluated, data.groups, before)
