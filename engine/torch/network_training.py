"""The 'probe' and 'finetune' training jobs: the fine-tuning recipe (engine.torch.finetune) run on the
project's labeled images, evaluated on the validation side, stored as a new model version with its
predictions and its training run (the epoch curves, also when cancelled or failed).

Weights are saved as safetensors, never pickled: a probe is stored as a LinearPredictor over the
cached features (so it predicts like the other linear models), a fine-tuned network as its state_dict.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
from safetensors.torch import save as save_state
from torch import nn
from torch.utils.data import DataLoader

from engine.features.backbones import get_backbone
from engine.images.imaging import load_stored_image
from engine.models.classifiers import LinearPredictor
from engine.models.evaluation import assign_splits, classification_metrics
from engine.models.methods import TrainingMethod, get_method
from engine.models.metrics import Metrics
from engine.models.results import EpochResult, TrainResult
from engine.runtime.jobs import JobCancelled, JobContext, user_message
from engine.torch import finetune
from engine.torch.image_data import ImageListDataset, eval_transform, train_transform
from engine.torch.network_predict import stored_image_predictions
from storage.catalog import list_classes
from storage.class_order import class_levels
from storage.images import image_ids as all_image_ids
from storage.images import read_image_bytes
from storage.modelstore import NewModel, PredictionBatch, finish_training_run, save_model_version, start_training_run
from storage.project import Project
from storage.splits import labeled_images


def train_network(
    context: JobContext, project: Project, method: str, backbone: str, layer: str, seed: int = 0,
    config: finetune.FineTuneConfig | None = None,
) -> TrainResult:
    """The 'probe' and 'finetune' training jobs on the project's labeled images (``config`` defaults
    to ``finetune.DEFAULT_CONFIG``)."""
    run_id = start_training_run(project, method)
    curves: list[dict] = []  # the epochs so far, stored with the run however it ends

    def keep_curve(result) -> None:
        if isinstance(result, EpochResult):
            curves.append(result.to_json())

    recording = JobContext(context.progress, _chain(context.partial, keep_curve), context._cancel_event)
    try:
        result = _train_network(recording, project, method, backbone, layer, seed,
                                config or finetune.DEFAULT_CONFIG, run_id)
    except JobCancelled:
        finish_training_run(project, run_id, "cancelled", curves, "Cancelled by the user.")
        raise
    except Exception as exc:
        finish_training_run(project, run_id, "failed", curves, user_message(exc))
        raise
    return result


def holdout_metrics(context: JobContext, project: Project, network: nn.Module, val_loader: DataLoader | None,
                    run_on: torch.device, val_rows, classes: np.ndarray, class_names,
                    counts: dict) -> tuple[Metrics, np.ndarray | None]:
    """(metrics, validation probabilities) of the network on its validation images (rows with ``class_id``
    and ``source``, in the loader's order); "not evaluated" and None without a loader. Shared by
    one-device and distributed training."""
    if val_loader is None:
        return Metrics(evaluation="not evaluated",
                       evaluation_note="every class needs an image on the validation side to be evaluated",
                       **counts), None
    _, _, val_proba = finetune.evaluate(network, nn.CrossEntropyLoss(), val_loader, run_on, context)
    metrics = classification_metrics(np.array([row.class_id for row in val_rows]), val_proba, classes, class_names,
                                     [row.source for row in val_rows], class_levels(project)
                                     ).with_counts(evaluation="holdout", **counts)
    return metrics, val_proba


def _chain(*callbacks: Callable) -> Callable:
    def call(result) -> None:
        for callback in callbacks:
            callback(result)

    return call


def _train_network(context, project, method, backbone, layer, seed, config: finetune.FineTuneConfig, run_id):
    started = time.perf_counter()
    training_method = get_method(method)
    spec = get_backbone(backbone)
    sides = assign_splits(project)
    labeled = labeled_images(project)
    classes = np.array(sorted({img.class_id for img in labeled}), dtype=np.int64)
    index_of = {int(c): i for i, c in enumerate(classes)}
    names_by_id = {c.id: c.name for c in list_classes(project)}
    class_names = [names_by_id.get(int(c), str(c)) for c in classes]
    images = {i: load_stored_image(b) for i, b in read_image_bytes(project, [img.image_id for img in labeled]).items()}
    labeled = [img for img in labeled if img.image_id in images]
    val = [img for img in labeled if sides.get(img.image_id) == "val"]
    has_val = {img.class_id for img in val} == set(index_of)
    train = [img for img in labeled if not has_val or sides.get(img.image_id) != "val"]
    generator = torch.Generator().manual_seed(seed)
    augment = train_transform(spec.input_size, spec.mean, spec.std)
    train_loader = DataLoader(
        ImageListDataset([images[i.image_id] for i in train], [index_of[i.class_id] for i in train], augment),
        batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=len(train) > config.batch_size,
    )
    eval_tf = eval_transform(spec)
    val_loader = None
    if has_val:
        val_loader = DataLoader(ImageListDataset([images[i.image_id] for i in val], [index_of[i.class_id] for i in val],
                                                 eval_tf), batch_size=config.batch_size)
    network = finetune.build_network(spec.name, layer, len(classes))
    report = finetune.fit_network(context.subcontext(0.0, 0.85), network, train_loader, val_loader, config,
                                  fine_tune=training_method.fine_tunes, seed=seed)
    counts = {"n_train": len(train), "n_val": len(val) if has_val else 0, "n_labeled": len(labeled),
              "best_epoch": report.best_epoch, "stopped_early": report.stopped_early}
    metrics, val_proba = holdout_metrics(context, project, network, val_loader if has_val else None, finetune.device(), val,
                                         classes, class_names, counts)
    context.progress(0.9, "Predicting every image")
    network.eval().cpu()
    if training_method.predicts_from_features:
        weights = probe_predictor(network, classes).to_bytes()
    else:
        weights = save_state({k: v.contiguous() for k, v in network.state_dict().items()},
                             metadata={"format": "sortlab-finetune-1"})
    ids, proba = _predict_all(context, project, training_method, spec.name, layer, weights, network)
    out_of_fold = np.zeros(len(ids), dtype=bool)
    if val_proba is not None:
        row_of = {int(i): r for r, i in enumerate(ids)}
        for img, p in zip(val, val_proba):
            if img.image_id in row_of:
                proba[row_of[img.image_id]] = p
                out_of_fold[row_of[img.image_id]] = True
    params = {"seed": seed, "config": asdict(config), "device": str(finetune.device())}
    version = save_model_version(
        project, NewModel(method, spec.name, layer, class_names, classes.tolist(), weights, params, metrics.to_json(), len(labeled)),
        PredictionBatch(ids, proba, out_of_fold),
    )
    curves = [epoch.to_json() for epoch in report.curves]
    finish_training_run(project, run_id, "done", curves, model_version=version)
    context.progress(1.0, f"Model version {version} ready")
    return TrainResult(version, method, spec.name, layer, metrics, len(labeled), run_id, params,
                       {"total_s": time.perf_counter() - started})


def probe_predictor(network: finetune.ClassifierNetwork, classes: np.ndarray) -> LinearPredictor:
    """The probe's head as plain arrays over (unstandardized) backbone features."""
    weight = network.head.weight.detach().cpu().double().numpy()
    bias = network.head.bias.detach().cpu().double().numpy()
    dim = weight.shape[1]
    return LinearPredictor(classes, np.zeros(dim), np.ones(dim), weight, bias)


def _predict_all(context, project, method: TrainingMethod, backbone: str, layer: str, weights: bytes, network):
    """Predictions for every project image: cached features for a probe, the network itself otherwise."""
    if method.predicts_from_features:
        from engine.features.extraction import ensure_features
        from storage.featurestore import load_vectors

        ensure_features(context.subcontext(0.9, 0.98), project, backbone, layer)
        ids, X = load_vectors(project, backbone, layer)
        return ids, LinearPredictor.from_bytes(weights).predict_proba(X)
    return stored_image_predictions(context, project, network, backbone, all_image_ids(project))
