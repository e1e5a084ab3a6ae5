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
from engine.torch import cached_tail, finetune
from engine.torch.body_runner import BodyRunner
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
        result = _train_network(recording, project, method, backbone, layer, seed, config, run_id)
    except JobCancelled:
        finish_training_run(project, run_id, "cancelled", curves, "Cancelled by the user.")
        raise
    except Exception as exc:
        finish_training_run(project, run_id, "failed", curves, user_message(exc))
        raise
    return result


def holdout_metrics(context: JobContext, project: Project, network: nn.Module, val_loader: DataLoader | None,
                    run_on: torch.device, val_rows, classes: np.ndarray, class_names,
                    counts: dict, val_proba: np.ndarray | None = None) -> tuple[Metrics, np.ndarray | None]:
    """(metrics, validation probabilities) of the network on its validation images (rows with ``class_id``
    and ``source``, in the loader's order, or given as ``val_proba``); "not evaluated" and None without
    either. Shared by one-device, cached-tail and distributed training."""
    if val_loader is None and val_proba is None:
        return Metrics(evaluation="not evaluated",
                       evaluation_note="every class needs an image on the validation side to be evaluated",
                       **counts), None
    if val_proba is None:
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


def _train_network(context, project, method, backbone, layer, seed, config: finetune.FineTuneConfig | None,
                   run_id):
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
    train_side = [img for img in labeled if sides.get(img.image_id) != "val"]
    # Judged on the validation side only when every class has images on both sides (pinned images and
    # their near-duplicates can leave a class with none to train on).
    has_val = {img.class_id for img in val} == {img.class_id for img in train_side} == set(index_of)
    train = train_side if has_val else labeled
    network = finetune.build_network(spec.name, layer, len(classes), seed)
    counts = {"n_train": len(train), "n_val": len(val) if has_val else 0, "n_labeled": len(labeled)}
    predicted: dict[int, np.ndarray] = {}  # image id -> probabilities already known (cached labeled images)
    forward = None  # how the other images are predicted, when not by the network itself
    if uses_cached_tail(training_method, network):
        recipe = cached_tail.RECIPE
        config = config or cached_tail.CACHED_TAIL_CONFIG
        body = BodyRunner(network.features, spec, network.features.last_stage_start)
        report, val_proba, predicted = fine_tune_cached_tail(
            context.subcontext(0.0, 0.85), network, spec, images, train, val if has_val else [], index_of, config, seed,
            body)
        forward = cached_tail.whole_network(network, body)
        counts |= {"best_epoch": report.best_epoch, "stopped_early": report.stopped_early}
        metrics, val_proba = holdout_metrics(context, project, network, None, finetune.device(), val, classes,
                                             class_names, counts, val_proba)
    else:
        recipe = FULL_NETWORK_RECIPE if training_method.fine_tunes else PROBE_RECIPE
        config = config or finetune.DEFAULT_CONFIG
        train_loader, val_loader = _image_loaders(spec, images, train, val if has_val else [], index_of, config, seed)
        report = finetune.fit_network(context.subcontext(0.0, 0.85), network, train_loader, val_loader, config,
                                      fine_tune=training_method.fine_tunes, seed=seed)
        counts |= {"best_epoch": report.best_epoch, "stopped_early": report.stopped_early}
        metrics, val_proba = holdout_metrics(context, project, network, val_loader, finetune.device(), val,
                                             classes, class_names, counts)
    fitted = time.perf_counter()
    context.progress(0.9, "Predicting every image")
    network.eval().cpu()
    if training_method.predicts_from_features:
        weights = probe_predictor(network, classes).to_bytes()
    else:
        weights = save_state({k: v.contiguous() for k, v in network.state_dict().items()},
                             metadata={"format": "sortlab-finetune-1"})
    ids, proba = _predict_all(context, project, training_method, spec.name, layer, weights, network, predicted,
                              forward)
    out_of_fold = np.zeros(len(ids), dtype=bool)
    if val_proba is not None:
        row_of = {int(i): r for r, i in enumerate(ids)}
        for img, p in zip(val, val_proba):
            if img.image_id in row_of:
                proba[row_of[img.image_id]] = p
                out_of_fold[row_of[img.image_id]] = True
    params = {"seed": seed, "config": asdict(config), "device": str(finetune.device()), "recipe": recipe}
    version = save_model_version(
        project, NewModel(method, spec.name, layer, class_names, classes.tolist(), weights, params, metrics.to_json(), len(labeled)),
        PredictionBatch(ids, proba, out_of_fold),
    )
    curves = [epoch.to_json() for epoch in report.curves]
    finish_training_run(project, run_id, "done", curves, model_version=version)
    context.progress(1.0, f"Model version {version} ready")
    return TrainResult(version, method, spec.name, layer, metrics, len(labeled), run_id, params,
                       {"fit_s": fitted - started, "predict_s": time.perf_counter() - fitted,
                        "total_s": time.perf_counter() - started})


FULL_NETWORK_RECIPE = "the whole network fine-tuned, head first, with augmented images"
PROBE_RECIPE = "a linear head trained on the frozen network's features"


def uses_cached_tail(method: TrainingMethod, network: finetune.ClassifierNetwork) -> bool:
    """Thorough without CUDA fine-tunes the last stage on cached activations (engine.torch.cached_tail);
    with CUDA, or for networks it cannot cut, the whole network."""
    return method.fine_tunes and finetune.device().type == "cpu" and cached_tail.can_cache_body(network)


def fine_tune_cached_tail(context: JobContext, network: finetune.ClassifierNetwork, spec, images: dict, train: list,
                          val: list, index_of: dict[int, int], config: finetune.FineTuneConfig, seed: int,
                          body: BodyRunner | None = None):
    """(fit report, validation probabilities or None, {image id: probabilities} of every labeled image).

    Fits on the training side, scored on the validation side; the network then learns again from its
    starting weights on every labeled image with the same schedule (cheap once activations are cached;
    without the last stage when validation dropped it), so the shipped model has seen every label, as
    Quick's does; the metrics and the validation images' probabilities are those of the network that
    did not see them."""
    # Progress shares as the steps took on 2 cores: caching ~10 % of the time (onnxruntime), each fit ~45 %.
    cached = cached_tail.cache_body(context.subcontext(0.0, 0.1), network, spec,
                                    [images[i.image_id] for i in train + val],
                                    [index_of[i.class_id] for i in train + val], body=body)
    train_rows, val_rows = np.arange(len(train)), np.arange(len(train), len(train) + len(val))
    start = cached_tail.trainable_state(network)
    report = cached_tail.fit_cached_tail(context.subcontext(0.1, 0.55 if val else 1.0), network,
                                         cached.subset(train_rows), cached.subset(val_rows) if val else None,
                                         config, seed)
    val_proba = cached_tail.cached_probabilities(network, cached.subset(val_rows)) if val else None
    if val:
        kept_last_stage = report.curves[report.best_epoch - 1].stage == "full"
        network.load_state_dict(start, strict=False)
        cached_tail.fit_cached_tail(context.subcontext(0.55, 1.0, partials=False), network, cached, None, config,
                                    seed, last_stage=kept_last_stage)
    proba = cached_tail.cached_probabilities(network, cached)
    return report, val_proba, {img.image_id: p for img, p in zip(train + val, proba)}


def _image_loaders(spec, images: dict, train: list, val: list, index_of: dict[int, int],
                   config: finetune.FineTuneConfig, seed: int) -> tuple[DataLoader, DataLoader | None]:
    """Augmented training images and plain validation images (None without validation images)."""
    generator = torch.Generator().manual_seed(seed)
    augment = train_transform(spec.input_size, spec.mean, spec.std)
    train_loader = DataLoader(
        ImageListDataset([images[i.image_id] for i in train], [index_of[i.class_id] for i in train], augment),
        batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=len(train) > config.batch_size,
    )
    val_loader = None
    if val:
        val_loader = DataLoader(ImageListDataset([images[i.image_id] for i in val], [index_of[i.class_id] for i in val],
                                                 eval_transform(spec)), batch_size=config.batch_size)
    return train_loader, val_loader


def probe_predictor(network: finetune.ClassifierNetwork, classes: np.ndarray) -> LinearPredictor:
    """The probe's head as plain arrays over (unstandardized) backbone features."""
    weight = network.head.weight.detach().cpu().double().numpy()
    bias = network.head.bias.detach().cpu().double().numpy()
    dim = weight.shape[1]
    return LinearPredictor(classes, np.zeros(dim), np.ones(dim), weight, bias)


def _predict_all(context, project, method: TrainingMethod, backbone: str, layer: str, weights: bytes, network,
                 predicted: dict[int, np.ndarray], forward: Callable | None = None):
    """Predictions for every project image: cached features for a probe, the network itself (or
    ``forward``) otherwise, except for the images in ``predicted``, whose probabilities training already has."""
    if method.predicts_from_features:
        from engine.features.extraction import ensure_features
        from storage.featurestore import load_vectors

        ensure_features(context.subcontext(0.9, 0.98), project, backbone, layer)
        ids, X = load_vectors(project, backbone, layer)
        return ids, LinearPredictor.from_bytes(weights).predict_proba(X)
    ids = all_image_ids(project)
    ran_ids, ran_proba = stored_image_predictions(context, project, network, backbone,
                                                  [i for i in ids if i not in predicted], forward)
    if not predicted:
        return ran_ids, ran_proba
    known = np.array(list(predicted), dtype=np.int64)
    both_ids = np.concatenate([ran_ids.astype(np.int64), known])
    both_proba = np.concatenate([ran_proba, np.stack([predicted[int(i)] for i in known])])
    order = np.argsort(both_ids, kind="stable")
    return both_ids[order], both_proba[order]
