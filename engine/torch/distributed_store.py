"""Rank 0's last step of a torchrun fine-tuning: evaluate the network on the validation images, predict
every project image, and store the one model version with its metrics and curves, as single-process
fine-tuning (engine.torch.network_training) stores it."""

from __future__ import annotations

import time

import numpy as np
from safetensors.torch import save as save_state
from torch import nn
from torch.utils.data import DataLoader

from engine.images.imaging import load_stored_image
from engine.models.results import EpochResult, TrainResult
from engine.runtime.jobs import JobContext
from engine.torch.distributed_shards import TrainingShards, class_array
from engine.torch.image_data import ImageListDataset, eval_transform
from engine.torch.network_predict import stored_image_predictions
from engine.torch.network_training import holdout_metrics, probe_predictor
from storage.images import image_ids as all_image_ids
from storage.modelstore import NewModel, PredictionBatch, finish_training_run, save_model_version


def store_version(
    context: JobContext, project, shards: TrainingShards, method, spec, layer: str, network: nn.Module,
    curves: list[EpochResult], counts: dict, params: dict, started: float,
) -> TrainResult:
    classes = class_array(shards)
    run_on = next(network.parameters()).device
    val_loader = None
    if shards.val:
        val_set = ImageListDataset([load_stored_image(shards.image_bytes(e.image_id)) for e in shards.val],
                                   [e.target for e in shards.val], eval_transform(spec))
        val_loader = DataLoader(val_set, batch_size=32)
    metrics, val_proba = holdout_metrics(context, project, network, val_loader, run_on, shards.val, classes,
                                         shards.class_names, counts)
    context.progress(0.9, "Predicting every image")
    network.eval().cpu()
    if method.predicts_from_features:
        from engine.features.extraction import ensure_features
        from engine.models.classifiers import LinearPredictor
        from storage.featurestore import load_vectors

        weights = probe_predictor(network, classes).to_bytes()
        ensure_features(context.subcontext(0.9, 0.98), project, spec.name, layer)
        ids, X = load_vectors(project, spec.name, layer)
        proba = LinearPredictor.from_bytes(weights).predict_proba(X)
    else:
        weights = save_state({k: v.contiguous() for k, v in network.state_dict().items()},
                             metadata={"format": "sortlab-finetune-1"})
        ids, proba = stored_image_predictions(context, project, network, spec.name, all_image_ids(project))
    out_of_fold = np.zeros(len(ids), dtype=bool)
    if val_proba is not None:
        row_of = {int(i): r for r, i in enumerate(ids)}
        for entry, p in zip(shards.val, val_proba):
            if entry.image_id in row_of:
                proba[row_of[entry.image_id]] = p
                out_of_fold[row_of[entry.image_id]] = True
    n_labeled = counts["n_labeled"]
    version = save_model_version(
        project, NewModel(method.name, spec.name, layer, shards.class_names, classes.tolist(), weights, params,
                          metrics.to_json(), n_labeled),
        PredictionBatch(ids, proba, out_of_fold),
    )
    finish_training_run(project, shards.run_id, "done", [row.to_json() for row in curves], model_version=version)
    context.progress(1.0, f"Model version {version} ready")
    return TrainResult(version, method.name, spec.name, layer, metrics, n_labeled, shards.run_id, params,
                       {"total_s": time.perf_counter() - started})
