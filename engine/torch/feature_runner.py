"""The PyTorch feature runtime: eager torch on a CUDA GPU, or on the CPU when forced or when no
ONNX copy can be made (engine.features.extraction chooses; it runs the decode pipeline around it)."""

from __future__ import annotations

import numpy as np
import torch

from engine.features.backbones import BackboneSpec
from engine.torch.extractors import load_feature_extractor

CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 64


def cuda_available() -> bool:
    return torch.cuda.is_available()


def torch_device_name() -> str:
    """Where torch would compute features, in words for the GUI (no model is loaded to find out)."""
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)} (PyTorch CUDA)"
    return f"CPU, {torch.get_num_threads()} threads (PyTorch)"


class TorchFeatureRunner:
    """A loaded (backbone, layer) extractor: ``run`` maps (N, 3, H, W) float32 to (N, D) features."""

    def __init__(self, spec: BackboneSpec, layer: str, device: str | None = None, note: str = ""):
        self.spec, self.layer = spec, layer
        self.torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = load_feature_extractor(spec, layer).to(self.torch_device)
        if self.torch_device.type == "cuda":
            self.device = f"GPU: {torch.cuda.get_device_name(self.torch_device)} (PyTorch CUDA)"
            self.batch_size = GPU_BATCH_SIZE
        else:
            self.device = f"CPU, {torch.get_num_threads()} threads (PyTorch{note})"
            self.batch_size = CPU_BATCH_SIZE

    def run(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            features = self.module(tensor.to(self.torch_device, non_blocking=True))
            return features.float().cpu().numpy()
