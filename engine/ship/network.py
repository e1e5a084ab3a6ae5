"""The exported network: one ONNX graph mapping preprocessed images to class probabilities.

Feature models (a linear head on a backbone's features) become backbone + head; fine-tuned models
are their whole network. With torch the graph is traced from a torch module; without it (the CPU
edition) a feature model's ONNX is composed from the backbone's verified ONNX copy and the head
(engine.ship.onnx_compose). Weights come from safetensors bytes only: nothing here unpickles.
"""

from __future__ import annotations

import io

import numpy as np

from engine.models.methods import MethodKind, TrainingMethod, UnknownMethod, get_method
from storage.errors import ProjectError
from storage.modelstore import ModelInfo, model_weights
from storage.project import Project

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


class ExportError(ProjectError):
    """The model cannot be exported; the message says why."""


def exported_method(info: ModelInfo) -> TrainingMethod:
    """The registry entry of the version's method, or ExportError when Sortlab cannot ship it."""
    try:
        method = get_method(info.method)
    except UnknownMethod as exc:
        raise ExportError(f"Cannot export model version {info.version}: {exc}") from None
    if not method.exportable:
        raise ExportError(f"Model version {info.version} was trained with '{method.title}', which cannot be exported.")
    return method


def is_network_model(info: ModelInfo) -> bool:
    """Whether the version is a whole (fine-tuned) network rather than a linear model on features."""
    return exported_method(info).kind is MethodKind.NETWORK


def linear_predictor(project: Project, info: ModelInfo):
    """The version's linear classifier (feature models only), read from its safetensors weights."""
    from engine.models.classifiers import LinearPredictor

    try:
        return LinearPredictor.from_bytes(model_weights(project, info.version))
    except ValueError as exc:
        raise ExportError(f"Model version {info.version} has no readable linear classifier ({exc}).") from exc


def build_network(project: Project, info: ModelInfo):
    """A torch module mapping preprocessed images (N, 3, H, W) to class probabilities (N, K).

    Without torch (the CPU edition) a feature model comes back as finished ONNX bytes instead: the
    backbone's verified ONNX copy composed with the linear head (engine.ship.onnx_compose)."""
    from engine.runtime.edition import require_torch, torch_available

    if not is_network_model(info) and not torch_available():
        return _composed_network(project, info)
    require_torch("Exporting a fine-tuned network")
    from engine.torch import torch_export

    if not is_network_model(info):
        from engine.features.backbones import get_backbone

        network = torch_export.feature_model_network(get_backbone(info.backbone), info.layer,
                                                     linear_predictor(project, info))
    else:
        network = torch_export.finetuned_network(project, info)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def _composed_network(project: Project, info: ModelInfo) -> bytes:
    """ONNX bytes of a feature model built without torch: backbone ONNX copy + linear head."""
    from engine.features.backbones import get_backbone
    from engine.features.onnx_backend import OnnxExportFailed
    from engine.features.onnx_backend import export as backbone_onnx
    from engine.ship.onnx_compose import compose

    spec = get_backbone(info.backbone)
    try:
        backbone = backbone_onnx(spec, spec.layer(info.layer).name)
    except OnnxExportFailed as exc:
        raise ExportError(f"Cannot export model version {info.version}: {exc}.") from exc
    return compose(backbone, linear_predictor(project, info), INPUT_NAME, OUTPUT_NAME)


def export_onnx(network, input_size: int) -> bytes:
    """The network as ONNX bytes with a dynamic batch dimension. ONNX bytes already composed by
    ``build_network`` (CPU edition) pass through unchanged."""
    if isinstance(network, bytes):
        return network
    from engine.torch.onnx_export import to_onnx

    return to_onnx(network, input_size, INPUT_NAME, OUTPUT_NAME, OPSET)


def head_arrays(project: Project, info: ModelInfo) -> bytes | None:
    """The linear classifier alone (standardization folded in; ``unit_norm`` present when feature rows are
    scaled to unit length first) as an .npz of plain arrays;
    None for a fine-tuned network, which has no separate head to ship."""
    if is_network_model(info):
        return None
    from engine.ship.onnx_compose import folded_linear

    predictor = linear_predictor(project, info)
    weight, bias = folded_linear(predictor)
    arrays = {
        "weight": weight.astype(np.float32), "bias": bias.astype(np.float32),
        "coef": predictor.coef, "intercept": predictor.intercept, "mean": predictor.mean, "scale": predictor.scale,
        "classes": np.asarray(info.class_names, dtype=np.str_),
    }
    if predictor.calib_a is not None:
        arrays.update(calib_a=predictor.calib_a, calib_b=predictor.calib_b)
    if predictor.unit_norm is not None:  # rows scaled to unit length before ``weight`` applies
        arrays.update(unit_norm=predictor.unit_norm)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
