"""The torch modules that turn a Sortlab model version into ONE network for ONNX export
(engine.torch.onnx_export writes it and runs it for the check).

``FeaturesThenLinear``: the backbone's feature extractor, then the linear classifier (rows scaled to
unit length first when its ``unit_norm`` says so) with its standardization folded into the weights (``folded_linear``), then the same probability function
Sortlab uses (softmax, logistic sigmoid for two classes, or Platt-calibrated sigmoids). Callers
outside engine.torch (engine.ship, engine.features.onnx_backend) reach this module only after
``require_torch``/``torch_available``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.features.backbones import BackboneSpec
from engine.models.classifiers import MIN_NORM, LinearPredictor
from engine.ship.onnx_compose import folded_linear  # shared with the torch-free export
from engine.torch.extractors import load_feature_extractor


class LinearProbabilityHead(nn.Module):
    """Features (N, D) -> class probabilities (N, K), exactly as LinearPredictor.predict_proba."""

    def __init__(self, predictor: LinearPredictor):
        super().__init__()
        weight, bias = folded_linear(predictor)
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            self.linear.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
        self.binary = weight.shape[0] == 1
        self.unit_rows = predictor.scales_rows
        self.calibrated = predictor.calib_a is not None
        a = np.zeros(weight.shape[0]) if predictor.calib_a is None else np.asarray(predictor.calib_a)
        b = np.zeros(weight.shape[0]) if predictor.calib_b is None else np.asarray(predictor.calib_b)
        self.register_buffer("calib_a", torch.from_numpy(a.astype(np.float32)))
        self.register_buffer("calib_b", torch.from_numpy(b.astype(np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.unit_rows:  # as engine.models.classifiers.unit_rows
            features = features / torch.clamp(torch.linalg.vector_norm(features, dim=1, keepdim=True), min=MIN_NORM)
        scores = self.linear(features)
        if self.calibrated:
            p = torch.sigmoid(-(self.calib_a * scores + self.calib_b))
            if self.binary:
                return torch.cat([1.0 - p, p], dim=1)
            total = p.sum(dim=1, keepdim=True)
            uniform = torch.full_like(p, 1.0 / p.shape[1])
            return torch.where(total > 0, p / torch.clamp(total, min=1e-30), uniform)
        if self.binary:
            p = torch.sigmoid(scores)
            return torch.cat([1.0 - p, p], dim=1)
        return torch.softmax(scores, dim=1)


class FeaturesThenLinear(nn.Module):
    """Preprocessed images -> backbone features -> linear classifier probabilities."""

    def __init__(self, extractor: nn.Module, predictor: LinearPredictor):
        super().__init__()
        self.features = extractor
        self.head = LinearProbabilityHead(predictor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class SoftmaxOutput(nn.Module):
    """A network's logits turned into probabilities, as Sortlab does for fine-tuned networks."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(images).float(), dim=1)


def feature_model_network(spec: BackboneSpec, layer: str, predictor: LinearPredictor) -> nn.Module:
    """A feature model as one network: the (spec, layer) extractor with its weights, then the classifier."""
    return FeaturesThenLinear(load_feature_extractor(spec, layer), predictor)


def finetuned_network(project, info) -> nn.Module:
    """The fine-tuned network of a model version (weights from safetensors), ending in softmax."""
    from engine.torch.network_predict import load_fine_tuned

    return SoftmaxOutput(load_fine_tuned(project, info).eval())
