"""The frozen body of an EfficientNet-Lite (its stem and every block before the last stage) run with
onnxruntime, for Thorough on a CPU.

Why: the body is most of the network and never changes while the last stage is fine-tuned, yet eager
PyTorch runs it at ~16 images/s on 2 cores, so caching the labeled images' activations and predicting
every other image took most of Thorough's minutes. onnxruntime runs the same graph ~8x faster. The copy
is exported in memory for the network at hand (about a second), checked against torch on the same
verification batch as the feature copies (engine.features.onnx_backend), and dropped for torch itself
when exporting or the check fails: the activations are the same either way, only slower.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from engine.features.backbones import BackboneSpec
from engine.features.onnx_backend import (OPSET, VERIFY_TOLERANCE, OnnxFeatureRunner, largest_difference,
                                         verification_batch)
from engine.torch.extractors import LiteFeatures
from engine.torch.onnx_export import run_network, to_onnx

log = logging.getLogger(__name__)


class _Body(nn.Module):
    """``features.body(x, stop)`` as a module, so it can be traced."""

    def __init__(self, features: LiteFeatures, stop: int):
        super().__init__()
        self.features, self.stop = features, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features.body(x, self.stop)


class BodyRunner:
    """Maps a normalized (N, 3, H, W) float32 batch to the body's activations up to block ``stop``
    (a float32 tensor), with onnxruntime when its copy was made and checked, else with torch."""

    def __init__(self, features: LiteFeatures, spec: BackboneSpec, stop: int):
        self._body = _Body(features, stop).eval()
        self.onnx: OnnxFeatureRunner | None = None
        self.why_torch = ""  # why the body runs in torch, for the log
        try:
            sample = verification_batch(spec)
            runner = OnnxFeatureRunner(to_onnx(self._body, spec.input_size, "pixels", "activations", OPSET))
            expected, got = run_network(self._body, sample), runner.run(sample)
            scale = max(1.0, float(np.max(np.abs(expected))))
            difference = largest_difference(expected, got)
            if not difference <= VERIFY_TOLERANCE * scale:
                raise ValueError(f"the ONNX copy differs from torch by {difference:.2e}")
            self.onnx = runner
        except Exception as exc:  # any failure: torch computes the same activations, only slower
            self.why_torch = str(exc) or type(exc).__name__
            log.warning("The frozen body runs in torch: %s", self.why_torch)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.onnx is not None:
            return torch.from_numpy(self.onnx.run(batch.numpy()))
        with torch.no_grad():
            return self._body(batch)
