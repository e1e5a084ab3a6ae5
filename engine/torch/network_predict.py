"""Predictions of a fine-tuned network: rebuilt from its safetensors weights (never pickled), run on
the project's stored images or on files outside the project, chunk by chunk with cancellation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load as load_state

from engine.features.backbones import BackboneSpec, get_backbone
from engine.images.imaging import load_stored_image, open_image_file
from engine.runtime.jobs import JobContext
from engine.torch.finetune import ClassifierNetwork, build_network, device
from engine.torch.image_data import eval_transform
from storage.images import image_ids as all_image_ids
from storage.images import read_image_bytes
from storage.modelstore import ModelInfo, model_weights
from storage.project import Project


def load_fine_tuned(project: Project, info: ModelInfo) -> ClassifierNetwork:
    """Rebuild a fine-tuned network from its safetensors state_dict."""
    network = build_network(info.backbone, info.layer, len(info.class_ids))
    network.load_state_dict(load_state(model_weights(project, info.version)))
    return network.eval()


def network_predictions(
    context: JobContext, network: ClassifierNetwork, spec: BackboneSpec, keys: Sequence,
    load: Callable[[Sequence], dict], batch: int = 32, forward: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs of a network for images loaded chunk by chunk: (keys that loaded, proba).
    ``forward`` computes the network's logits another way (engine.torch.cached_tail.whole_network)."""
    run_on = device()
    network.eval().to(run_on)
    to_tensor = eval_transform(spec)
    done_keys, outputs = [], []
    with torch.inference_mode():
        for start in range(0, len(keys), batch):
            context.check_cancelled()
            chunk = keys[start:start + batch]
            loaded = load(chunk)
            ok = [k for k in chunk if k in loaded]
            if ok:
                x = torch.stack([to_tensor(loaded[k]) for k in ok]).to(run_on)
                logits = (forward or network)(x)
                outputs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
                done_keys.extend(ok)
    n_classes = network.head.out_features
    proba = np.concatenate(outputs) if outputs else np.zeros((0, n_classes), dtype=np.float32)
    return np.asarray(done_keys, dtype=object if keys and isinstance(keys[0], str) else np.int64), proba


def stored_image_predictions(
    context: JobContext, project: Project, network: ClassifierNetwork, backbone: str, image_ids: Sequence[int],
    forward: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, proba) of ``network`` (or ``forward``) for stored project images."""
    return network_predictions(
        context, network, get_backbone(backbone), image_ids,
        lambda chunk: {i: load_stored_image(b) for i, b in read_image_bytes(project, chunk).items()}, forward=forward,
    )


def predict_project_images(context: JobContext, project: Project, info: ModelInfo, image_ids=None):
    """(image ids, proba) for every project image, or only ``image_ids``."""
    ids = all_image_ids(project) if image_ids is None else [int(i) for i in image_ids]
    return stored_image_predictions(context, project, load_fine_tuned(project, info), info.backbone, ids)


def predict_image_files(context: JobContext, project: Project, info: ModelInfo, paths: Sequence[str]):
    """(paths that could be read, proba, [(path, reason)]) for files outside the project."""
    network = load_fine_tuned(project, info)
    failed: list[tuple[str, str]] = []

    def load(chunk):
        loaded = {}
        for path in chunk:
            try:
                loaded[path] = open_image_file(path)
            except Exception as exc:  # unreadable files are reported, the rest still get predictions
                failed.append((path, getattr(exc, "reason", None) or str(exc)))
        return loaded

    keys, proba = network_predictions(context, network, get_backbone(info.backbone), list(paths), load)
    return [str(k) for k in keys], proba, failed
