"""Where the model looks: a class activation map for one image and one model version.

Sortlab's models end in a linear head on globally average-pooled features f = mean over (x, y) of
the last feature map A, so a class's score is a sum over the map's positions and Grad-CAM reduces
exactly to CAM, with one forward pass and no backward pass:

    heat_c(x, y) = sum_k (w_ck / sigma_k) * A_k(x, y)

with w the head's weights and sigma the features' standardization (``LinearPredictor.scale``; a
fine-tuned network's head has none). A positive per-image factor on the features (such as scaling
the feature vector to unit length before standardizing it) multiplies the whole map by one positive
number (1 / ||f|| for ``LinearPredictor``'s unit-length rows), which changes neither its shape nor
its peak; the map is shown scaled to its maximum.

The map comes from torch (engine.torch.cam) or, for linear models, from onnxruntime on the ONNX
feature network with its pre-pool map as a second output (engine.features.onnx_cam): the CPU
edition has no torch, and on a CPU onnxruntime is the faster of the two. The runtime is chosen as
for features (engine.features.runners.resolve_runtime): torch on a CUDA GPU, onnxruntime otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image
from scipy.special import softmax

from engine.features.backbones import get_backbone
from engine.features.preprocess import crop_box, preprocess_pil
from engine.images.imaging import ImageDecodeError, load_stored_image, open_image_file
from engine.models.classifiers import LinearPredictor
from engine.models.methods import get_method
from engine.models.predicting import load_linear_predictor
from engine.runtime.edition import require_torch
from engine.runtime.jobs import JobContext
from storage.errors import ProjectError
from storage.images import read_image_bytes
from storage.modelstore import ModelInfo, get_model
from storage.project import Project

log = logging.getLogger(__name__)


class ExplainError(ProjectError):
    """The image or the class to explain cannot be used; the message says why."""


@dataclass(frozen=True)
class ClassEvidence:
    """A model's head seen from the pooled features: ``weights`` (K, D), how much each feature raises
    each class's score, and ``probabilities``, the model's own (N, D) -> (N, K) function."""

    weights: np.ndarray
    probabilities: Callable[[np.ndarray], np.ndarray]


def linear_evidence(predictor: LinearPredictor) -> ClassEvidence:
    """w / sigma per class. Two classes share one score row (the second class's; the first gets its
    negative); Platt-calibrated probabilities fall as a * score grows, so a positive ``calib_a`` flips
    that score's direction. Softmax rows are centred (a shift common to every class leaves softmax as
    it is): a no-op for logistic regression, whose penalty already centres them, and it gives the ordinal
    head's lowest level (a zero row: engine.models.ordinal) the evidence against the higher levels."""
    per_score = np.asarray(predictor.coef, dtype=np.float64) / np.asarray(predictor.scale, dtype=np.float64)
    if predictor.calib_a is None and per_score.shape[0] > 1:
        per_score = per_score - per_score.mean(axis=0)
    if predictor.calib_a is not None:
        per_score = per_score * -np.sign(np.asarray(predictor.calib_a, dtype=np.float64)).reshape(-1, 1)
    weights = np.vstack([-per_score[0], per_score[0]]) if per_score.shape[0] == 1 else per_score
    return ClassEvidence(weights, predictor.predict_proba)


def network_evidence(weight: np.ndarray, bias: np.ndarray) -> ClassEvidence:
    """A fine-tuned network's head: logits = f @ weight.T + bias, then softmax."""
    return ClassEvidence(weight, lambda features: softmax(np.asarray(features, np.float64) @ weight.T + bias, axis=1))


@dataclass(frozen=True)
class Explanation:
    """One image's class activation map. ``heat`` (h, w) is the class's evidence at each position of
    the network's map (score units up to a constant, and up to a positive factor for a model that
    scales feature rows to unit length), over ``crop``: the box (left, top, right,
    bottom) of the ``image_size`` image that the network saw (its center crop), cell (i, j) centred at
    ((j + 0.5) / w, (i + 0.5) / h) of it."""

    model_version: int
    class_names: list[str]
    class_index: int
    probabilities: np.ndarray
    heat: np.ndarray
    image_size: tuple[int, int]
    crop: tuple[float, float, float, float]
    device: str

    @property
    def class_name(self) -> str:
        return self.class_names[self.class_index]

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.class_index])

    def relative_heat(self) -> np.ndarray:
        """The positive evidence scaled to 0..1 (all zeros when nothing speaks for the class)."""
        positive = np.maximum(self.heat, 0.0)
        top = float(positive.max()) if positive.size else 0.0
        return positive / top if top > 0 else np.zeros_like(positive)

    def peak_in_crop(self) -> tuple[float, float]:
        """The hottest point as fractions (x, y) of the crop: the hottest cell, refined between cells
        by a parabola through it and its neighbours."""
        heat = np.asarray(self.heat, dtype=np.float64)
        row, column = np.unravel_index(int(np.argmax(heat)), heat.shape)
        dy = _parabola_offset(heat[:, column], row)
        dx = _parabola_offset(heat[row, :], column)
        return (column + 0.5 + dx) / heat.shape[1], (row + 0.5 + dy) / heat.shape[0]

    @property
    def peak(self) -> tuple[float, float]:
        """The hottest point as fractions (x, y) of the original image's width and height."""
        fx, fy = self.peak_in_crop()
        left, top, right, bottom = self.crop
        width, height = self.image_size
        return (left + fx * (right - left)) / width, (top + fy * (bottom - top)) / height

    def to_json(self) -> dict:
        x, y = self.peak
        return {"class": self.class_name, "probability": float(self.probability),
                "peak": {"x": float(x), "y": float(y)}, "model": self.model_version}


def _parabola_offset(values: np.ndarray, index: int) -> float:
    """Where a parabola through values[index - 1 .. index + 1] peaks, relative to index (0 at an edge)."""
    if index == 0 or index == len(values) - 1:
        return 0.0
    left, centre, right = values[index - 1], values[index], values[index + 1]
    curvature = left - 2.0 * centre + right
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def class_heat(evidence: ClassEvidence, class_index: int, maps: np.ndarray) -> np.ndarray:
    """heat(y, x) = sum_k weight_k * A_k(y, x) for one image's maps (D, h, w)."""
    return np.tensordot(evidence.weights[class_index], np.asarray(maps, dtype=np.float64), axes=1)


# ---------------------------------------------------------------------------------------------
# Loaded map runners, reused between calls (the viewer asks once per image shown)


class MapRunner(Protocol):
    """A loaded network (engine.features.onnx_cam.OnnxCamRunner, engine.torch.cam.TorchCamRunner):
    ``run`` maps (N, 3, H, W) float32 to ((N, D) features, (N, D, h, w) pre-pool maps)."""

    device: str

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


_RUNNERS: dict[tuple, object] = {}
_RUNNERS_LOCK = threading.Lock()
_MAX_CACHED_RUNNERS = 2


def _cached(key: tuple, load: Callable[[], object]):
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = load()
            while len(_RUNNERS) >= _MAX_CACHED_RUNNERS:
                _RUNNERS.pop(next(iter(_RUNNERS)))
            _RUNNERS[key] = runner
        return runner


def forget_cam_runners() -> None:
    """Drop the loaded networks (tests point the ONNX cache at another folder)."""
    with _RUNNERS_LOCK:
        _RUNNERS.clear()


def backbone_map_runner(backbone: str, layer: str | None, runtime: str | None = None) -> MapRunner:
    """The (backbone, layer) map runner: onnxruntime or torch as ``resolve_runtime`` chooses; without
    a usable ONNX copy, torch on the CPU."""
    from engine.features.runners import resolve_runtime

    spec = get_backbone(backbone)
    layer = spec.layer(layer).name
    chosen = resolve_runtime(runtime)

    def load():
        if chosen == "onnx":
            from engine.features.onnx_backend import OnnxExportFailed
            from engine.features.onnx_cam import OnnxCamRunner

            try:
                return OnnxCamRunner(spec, layer)
            except OnnxExportFailed as exc:
                require_torch(f"Heat maps of the {layer} layer of {spec.title}")
                log.warning("Heat maps in PyTorch on the CPU: %s", exc)
                from engine.torch.cam import backbone_cam_runner

                return backbone_cam_runner(spec, layer, device="cpu")
        from engine.torch.cam import backbone_cam_runner

        return backbone_cam_runner(spec, layer)

    return _cached(("backbone", spec.name, layer, chosen), load)


def model_map_runner(project: Project, info: ModelInfo, runtime: str | None = None) -> tuple[MapRunner, ClassEvidence]:
    """The map runner and the head of a model version: its backbone for a linear model, its own
    fine-tuned network (torch only) otherwise."""
    if get_method(info.method).predicts_from_features:
        runner = backbone_map_runner(info.backbone, info.layer, runtime)
        return runner, linear_evidence(load_linear_predictor(project, info))
    require_torch("Heat maps of a fine-tuned network")
    from engine.torch.cam import fine_tuned_cam_runner

    # Keyed by creation time too: a deleted version's number can come back for a new model.
    key = ("network", project.location, info.version, info.created_at)
    runner, weight, bias = _cached(key, lambda: fine_tuned_cam_runner(project, info))
    return runner, network_evidence(weight, bias)


# ---------------------------------------------------------------------------------------------
# The job


ImageRef = int | str | os.PathLike | Image.Image


def open_subject(project: Project, image: ImageRef) -> Image.Image:
    """The image to explain: a decoded picture, a project image id, or an image file's path."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, (int, np.integer)):
        data = read_image_bytes(project, [int(image)]).get(int(image))
        if data is None:
            raise ExplainError(f"The project has no image with id {int(image)}.")
        return load_stored_image(data)
    try:
        return open_image_file(image)
    except ImageDecodeError as exc:
        raise ExplainError(f"Cannot read {os.fspath(image)}: {exc.reason}") from None


def check_class(info: ModelInfo, class_name: str | None) -> None:
    """ExplainError naming the choices when the version has no class ``class_name`` (None: any)."""
    if class_name is not None and class_name not in info.class_names:
        raise ExplainError(f"Model version {info.version} has no class {class_name!r}; "
                           f"choose one of: {', '.join(info.class_names)}.")


def explain_image(
    context: JobContext, project: Project, image: ImageRef, class_name: str | None = None,
    model_version: int | None = None, runtime: str | None = None,
) -> Explanation:
    """The class activation map of ``image`` for ``class_name`` (default: the predicted class) under a
    model version (default: the active one), with the model's probabilities from the same pass."""
    info = get_model(project, model_version)
    check_class(info, class_name)
    picture = open_subject(project, image)
    context.progress(0.1, "Loading the network")
    runner, evidence = model_map_runner(project, info, runtime)
    context.check_cancelled()
    spec = get_backbone(info.backbone)
    features, maps = runner.run(preprocess_pil(picture, spec)[None])
    probabilities = np.asarray(evidence.probabilities(features)[0], dtype=np.float64)
    index = int(np.argmax(probabilities)) if class_name is None else info.class_names.index(class_name)
    context.progress(1.0, f"Heat map of {info.class_names[index]}")
    return Explanation(
        model_version=info.version, class_names=list(info.class_names), class_index=index,
        probabilities=probabilities, heat=class_heat(evidence, index, maps[0]),
        image_size=picture.size, crop=crop_box(picture.width, picture.height, spec), device=runner.device,
    )
