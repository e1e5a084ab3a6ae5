"""Predictions: refresh a model version's predictions for every project image, or classify image
files outside the project without importing them.

Linear models (``MethodKind.LINEAR`` in engine.models.methods: logreg, svm, the linear probe) run on
cached features; a fine-tuned network runs on the images themselves (engine.torch.network_predict).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.models.classifiers import LinearPredictor
from engine.models.methods import get_method
from engine.runtime.jobs import JobContext
from storage.images import image_ids as all_image_ids
from storage.modelstore import (
    ModelInfo,
    PredictionBatch,
    active_model,
    get_model,
    model_weights,
    store_predictions,
)
from storage.project import Project


@dataclass(frozen=True)
class FilePrediction:
    path: str
    class_name: str
    class_id: int | None
    probability: float
    margin: float
    probabilities: list[float] = field(repr=False)


@dataclass(frozen=True)
class RefreshOutcome:
    """What ``refresh_if_model`` did: the model version used and how many predictions it stored."""

    model_version: int
    predicted: int


@dataclass
class FilePredictions:
    """Predictions for image files, in the order given, plus the files that could not be read."""

    model_version: int
    class_names: list[str]
    predictions: list[FilePrediction]
    failed: list[tuple[str, str]]


def predicts_from_features(info: ModelInfo) -> bool:
    """Whether a stored version predicts from cached features (a linear head) or from pixels (a network)."""
    return get_method(info.method).predicts_from_features


def load_linear_predictor(project: Project, info: ModelInfo) -> LinearPredictor:
    return LinearPredictor.from_bytes(model_weights(project, info.version))


def predict_feature_rows(project: Project, info: ModelInfo, X: np.ndarray) -> np.ndarray:
    """Probabilities (N, K) in the model's class order for cached-feature rows."""
    return load_linear_predictor(project, info).predict_proba(X)


def refresh_predictions(
    context: JobContext, project: Project, model_version: int | None = None, image_ids: Sequence[int] | None = None,
) -> int:
    """(Re)compute a version's predictions for every image (the active version by default), or only for
    ``image_ids``. Cross-validated predictions of labeled images are kept. Returns how many were stored."""
    info = get_model(project, model_version)
    wanted = None if image_ids is None else sorted({int(i) for i in image_ids})
    if wanted is not None and not wanted:
        return 0
    if not predicts_from_features(info):
        from engine.runtime.edition import require_torch

        require_torch("Predicting with a fine-tuned network")
        from engine.torch.network_predict import predict_project_images

        ids, proba = predict_project_images(context, project, info, wanted)
    else:
        from engine.features.extraction import ensure_features
        from storage.featurestore import load_vectors

        ensure_features(context.subcontext(0.0, 0.8), project, info.backbone, info.layer)
        ids, X = load_vectors(project, info.backbone, info.layer, wanted)
        context.check_cancelled()
        proba = predict_feature_rows(project, info, X) if len(ids) else np.zeros((0, len(info.class_ids)))
    stored = store_predictions(project, info.version, PredictionBatch(ids, proba), keep_out_of_fold=True)
    context.progress(1.0, f"Predicted {len(ids)} images")
    return stored


def images_without_prediction(project: Project, model_version: int) -> list[int]:
    """Ids of the images a version has no prediction for (imported after it was trained)."""
    from engine.insight.projection import prediction_arrays  # plain id column: no object per prediction

    ids = np.asarray(all_image_ids(project), dtype=np.int64)
    return ids[~np.isin(ids, prediction_arrays(project, model_version)[0])].tolist()


def refresh_if_model(context: JobContext, project: Project) -> RefreshOutcome | None:
    """Give every image the active model has no prediction for one (call it after an import, so new
    images get suggestions and a place in confidence order). None when there is no model yet."""
    info = active_model(project)
    if info is None:
        return None
    missing = images_without_prediction(project, info.version)
    if not missing:
        context.progress(1.0, f"Every image already has a prediction of model version {info.version}")
        return RefreshOutcome(info.version, 0)
    context.progress(0.0, f"Predicting {len(missing)} new images with model version {info.version}")
    return RefreshOutcome(info.version, refresh_predictions(context, project, info.version, missing))


def expand_image_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given, folders expanded to the image files inside them (sorted, recursive)."""
    from engine.images.importing import collect_items

    items, _skipped, _failed = collect_items(paths)
    return [item.path for item in items]


def predict_files(
    context: JobContext, project: Project, paths: Sequence[str | os.PathLike], model_version: int | None = None
) -> FilePredictions:
    """Classify image files (or folders of them) that are not in the project, without importing them."""
    info = get_model(project, model_version)
    files = expand_image_paths(paths)
    if not predicts_from_features(info):
        from engine.runtime.edition import require_torch

        require_torch("Predicting with a fine-tuned network")
        from engine.torch.network_predict import predict_image_files

        ok_paths, proba, failed = predict_image_files(context, project, info, files)
    else:
        from engine.features.extraction import features_for_files

        ok_paths, X, failed = features_for_files(context, files, info.backbone, info.layer)
        proba = predict_feature_rows(project, info, X) if len(ok_paths) else np.zeros((0, len(info.class_ids)))
    return FilePredictions(info.version, list(info.class_names), _file_rows(info, ok_paths, proba),
                           [(str(p), str(r)) for p, r in failed])


def _file_rows(info: ModelInfo, paths: Sequence[str], proba: np.ndarray) -> list[FilePrediction]:
    rows = []
    for path, p in zip(paths, np.asarray(proba, dtype=np.float64)):
        order = np.argsort(-p, kind="stable")
        top = int(order[0])
        margin = float(p[top] - p[order[1]]) if len(p) > 1 else float(p[top])
        rows.append(FilePrediction(str(path), info.class_names[top], int(info.class_ids[top]), float(p[top]),
                                   margin, [float(v) for v in p]))
    return rows
