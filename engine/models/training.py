"""Training a model version: features -> classifier -> honest evaluation -> predictions, in one job.

``train_model`` is the job the GUI and the CLI run. For the linear methods it extracts any missing
features first, then fits on the cached vectors; 'probe' and 'finetune' train in torch on images
(engine.torch.network_training). Either way the new version is stored with its metrics, its training run (curves)
and a prediction for every image, and becomes the active model.

Quick retraining (after a label change): the previous version's C is reused and the solver starts
from its solution, so no cross-validated search runs on every retrain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from engine.features.backbones import DEFAULT_BACKBONE, get_backbone
from engine.models.classifiers import LinearPredictor, check_labels, make_classifier, refit_with_C
from engine.models.evaluation import (
    EvaluationPlan,
    align_columns,
    assign_splits,
    classification_metrics,
    out_of_fold_probabilities,
    plan_evaluation,
)
from engine.models.methods import DEFAULT_METHOD, get_method
from engine.models.metrics import Metrics
from engine.models.results import TrainResult
from engine.runtime.jobs import JobCancelled, JobContext, user_message
from storage.catalog import list_classes
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
from storage.splits import labeled_images

# Quick retraining reuses the previous C while the labeled set has grown by at most this fraction.
QUICK_REUSE_GROWTH = 0.1
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


def resolve_backbone(backbone: str | None, layer: str | None) -> tuple[str, str]:
    spec = get_backbone(backbone or DEFAULT_BACKBONE)
    return spec.name, spec.layer(layer).name


def train_model(
    context: JobContext, project: Project, method: str = DEFAULT_METHOD, backbone: str | None = DEFAULT_BACKBONE,
    layer: str | None = None, seed: int = 0, quick: bool | None = None,
) -> TrainResult:
    """Train, evaluate and store a new active model version. ``quick``: None decides by itself (reuse the
    previous C when the labels barely changed), True always reuses it, False searches C again."""
    training_method = get_method(method)
    backbone, layer = resolve_backbone(backbone, layer)
    check_labels(np.array([img.class_id for img in labeled_images(project)], dtype=np.int64))
    if not training_method.trains_on_features:
        from engine.runtime.edition import require_torch

        require_torch(f"{training_method.title} training")
        from engine.torch.network_training import train_network

        return train_network(context, project, method, backbone, layer, seed)
    from engine.features.extraction import ensure_features

    ensure_features(context.subcontext(0.0, 0.7), project, backbone, layer)
    return train_on_cached_features(context.subcontext(0.7, 1.0), project, method, backbone, layer, seed, quick)


def train_on_cached_features(
    context: JobContext, project: Project, method: str, backbone: str, layer: str, seed: int = 0,
    quick: bool | None = None,
) -> TrainResult:
    """The linear-method training step on features already in the project (records a training run)."""
    run_id = start_training_run(project, method)
    try:
        result = _train_linear(context, project, method, backbone, layer, seed, quick, run_id)
    except JobCancelled:
        finish_training_run(project, run_id, "cancelled", message="Cancelled by the user.")
        raise
    except Exception as exc:
        finish_training_run(project, run_id, "failed", message=user_message(exc))
        raise
    return result


def load_labeled_features(project: Project, backbone: str, layer: str) -> LabeledFeatures:
    """Assign sides to newly labeled images, then line up labels with cached feature rows."""
    sides = assign_splits(project)
    image_ids, X = load_vectors(project, backbone, layer)
    row_of = {int(i): r for r, i in enumerate(image_ids)}
    labeled = [img for img in labeled_images(project) if img.image_id in row_of]
    return LabeledFeatures(
        image_ids, X,
        np.array([row_of[img.image_id] for img in labeled], dtype=np.int64),
        np.array([img.class_id for img in labeled], dtype=np.int64),
        np.array([sides.get(img.image_id, img.split) == "val" for img in labeled], dtype=bool),
        [img.source for img in labeled],
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
    quick: bool | None, run_id: int,
) -> TrainResult:
    started = time.perf_counter()
    context.progress(0.0, "Loading features")
    data = load_labeled_features(project, backbone, layer)
    X_labeled, y = data.X[data.rows], data.y
    classes, _ = check_labels(y)
    names_by_id = {c.id: c.name for c in list_classes(project)}
    class_names = [names_by_id.get(int(c), str(c)) for c in classes]
    plan = plan_evaluation(y, data.is_val)
    previous = previous_linear_model(project, method, backbone, layer, classes)
    is_quick = _use_quick(quick, previous[0] if previous else None, len(y))
    warm = previous[1] if (is_quick and previous) else None
    base = make_classifier(method, C=previous[0].params["C"] if is_quick else None, random_state=seed,
                           warm_start_from=warm)
    loaded = time.perf_counter()
    context.check_cancelled()
    context.progress(0.1, f"Training on {len(y)} labeled images ({plan.description})")

    final, metrics, eval_rows, eval_proba = _fit_and_evaluate(
        context.subcontext(0.1, 0.85), base, plan, X_labeled, y, data, classes, class_names, seed
    )
    metrics = metrics.with_counts(evaluation=plan.description, n_labeled=int(len(y)),
                                  evaluation_note=plan.reason or metrics.evaluation_note)
    trained = time.perf_counter()

    context.check_cancelled()
    context.progress(0.9, "Predicting every image")
    proba = final.predict_proba(data.X)
    out_of_fold = np.zeros(len(data.image_ids), dtype=bool)
    proba[eval_rows] = eval_proba
    out_of_fold[eval_rows] = True
    params = {"C": final.C_, "seed": seed, "quick": is_quick, "n_features": int(data.X.shape[1]),
              "cv_results": getattr(final, "cv_results_", [])}
    version = save_model_version(
        project,
        NewModel(method, backbone, layer, class_names, classes.tolist(), final.to_bytes(), params, metrics.to_json(), int(len(y))),
        PredictionBatch(data.image_ids, proba, out_of_fold),
    )
    curves = [{"kind": "cv", "C": r["C"], "score": r["score"]} for r in params["cv_results"]]
    finish_training_run(project, run_id, "done", curves=curves, model_version=version)
    done = time.perf_counter()
    context.progress(1.0, f"Model version {version} ready")
    timings = {"load_s": loaded - started, "train_s": trained - loaded, "predict_store_s": done - trained,
               "total_s": done - started}
    return TrainResult(version, method, backbone, layer, metrics, int(len(y)), run_id, params, timings)


def _fold_model(base):
    """The unfitted model for one cross-validation fold: nested model selection.

    With C to be searched (``base.C`` None), each fold searches it on its own training part, with
    ``NESTED_INNER_FOLDS`` inner folds, instead of reusing the C chosen on every labeled image: that C
    has seen the fold's held-out images, which makes the out-of-fold accuracy optimistic. It costs
    a few seconds, and only when a small project (cross-validated, under ~200 labels) is trained
    from scratch. A quick retrain (``base.C`` set to the previous version's C) keeps that C in every
    fold: slightly optimistic, but it keeps retraining after a label edit well under a second.
    """
    model = refit_with_C(base, base.C)
    return model if base.C is not None else model.set_params(max_folds=min(base.max_folds, NESTED_INNER_FOLDS))


def _fit_and_evaluate(context, base, plan: EvaluationPlan, X, y, data: LabeledFeatures, classes, class_names, seed):
    """Fit the final model (all labeled images) and evaluate it the way ``plan`` says.

    Returns (final model, metrics, feature rows evaluated, their honest probabilities)."""
    rows = data.rows
    if plan.kind == "holdout":
        train, val = ~data.is_val, data.is_val
        split_model = refit_with_C(base, base.C, base.warm_start_from).fit(X[train], y[train])
        context.check_cancelled()
        val_proba = align_columns(split_model.predict_proba(X[val]), split_model.classes_, classes)
        metrics = classification_metrics(y[val], val_proba, classes, class_names,
                                         [s for s, v in zip(data.sources, val) if v])
        metrics = metrics.with_counts(n_train=int(train.sum()), n_val=int(val.sum()))
        context.progress(0.6, "Refitting on all labeled images")
        warm = split_model.predictor_ if np.array_equal(split_model.classes_, classes) else None
        final = refit_with_C(base, split_model.C_, warm).fit(X, y)
        final.cv_results_ = split_model.cv_results_
        return final, metrics, rows[val], val_proba
    final = refit_with_C(base, base.C, base.warm_start_from).fit(X, y)
    if plan.kind == "cv":
        context.check_cancelled()
        oof = out_of_fold_probabilities(context, lambda Xf, yf: _fold_model(base).fit(Xf, yf), X, y, plan.folds, seed)
        metrics = classification_metrics(y, oof, classes, class_names, data.sources)
        metrics = metrics.with_counts(n_train=int(len(y)), n_val=int(len(y)), folds=plan.folds)
        return final, metrics, rows, oof
    return final, Metrics(n_train=int(len(y)), n_val=0), rows[:0], np.zeros((0, len(classes)))
