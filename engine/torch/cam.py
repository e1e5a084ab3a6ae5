"""The last feature map before global average pooling, in PyTorch: what a class activation map is made of.

Every Sortlab model ends in a linear head on globally average-pooled features, so Grad-CAM reduces
exactly to CAM and needs no backward pass: one forward pass that keeps the map the extractor would
pool. ``FeatureMaps`` runs an extractor's own modules (shared weights, no copy) up to the pooling and
returns both the map and the features the extractor itself returns, so a map and the prediction it
explains come from one pass.

The map is taken by calling the modules explicitly, not with forward hooks: in
``efficientnet_lite_pytorch`` the stem and the head share one ReLU6 module, so a hook on it fires
twice per image (the stem's map first). engine.insight.explain turns maps into heat maps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.features.backbones import BackboneSpec
from engine.torch.extractors import LiteFeatures, _PooledSequential, load_feature_extractor


class FeatureMaps(nn.Module):
    """(N, 3, H, W) -> (maps (N, D, h, w), features (N, D)) for a feature extractor of engine.torch.extractors.

    ``features`` are exactly the extractor's output. ``maps`` average over (h, w) to ``features``
    (ConvNeXt's LayerNorm after its pooling is folded in, up to its bias, which is constant over
    the image), so a linear head's score spreads over the map's positions as a sum.
    """

    def __init__(self, extractor: nn.Module):
        super().__init__()
        if not isinstance(extractor, (LiteFeatures, _PooledSequential)):
            raise TypeError(f"No feature map for {type(extractor).__name__}.")
        if isinstance(extractor, _PooledSequential) and extractor.post is not None \
                and not isinstance(extractor.post, nn.LayerNorm):
            raise TypeError(f"No feature map through {type(extractor.post).__name__} after pooling.")
        self.extractor = extractor

    def _lite_map(self, x: torch.Tensor) -> torch.Tensor:
        lite = self.extractor
        x = lite.act(lite.bn0(lite.conv_stem(x)))
        for block in lite.blocks:
            x = block(x, drop_connect_rate=None)  # eval mode: stochastic depth is off
        if lite.use_head:  # the head's conv + BN + activation, called here rather than hooked
            x = lite.act(lite.bn1(lite.conv_head(x)))
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.extractor, LiteFeatures):
            maps = self._lite_map(x)
            return maps, maps.mean(dim=(2, 3))
        maps = self.extractor.body(x)
        pooled = maps.mean(dim=(2, 3))
        norm = self.extractor.post
        if norm is None:
            return maps, pooled
        # LayerNorm over channels of the pooled vector: its mean and spread are one number per image,
        # so (A - mu) * gamma / sigma averages to the normalized features minus the bias.
        mu = pooled.mean(dim=1, keepdim=True)
        sigma = torch.sqrt(pooled.var(dim=1, unbiased=False, keepdim=True) + norm.eps)
        gamma = norm.weight[None, :, None, None]
        folded = (maps - mu[:, :, None, None]) * gamma / sigma[:, :, None, None]
        return folded, norm(pooled[:, :, None, None]).flatten(1)


class TorchCamRunner:
    """Maps and features of one extractor in torch: ``run`` maps (N, 3, H, W) float32 to numpy
    ((N, D), (N, D, h, w)), like engine.features.onnx_cam.OnnxCamRunner."""

    def __init__(self, extractor: nn.Module, device: str | None = None):
        self.torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = FeatureMaps(extractor.eval()).to(self.torch_device)
        where = (f"GPU: {torch.cuda.get_device_name(self.torch_device)}" if self.torch_device.type == "cuda"
                 else f"CPU, {torch.get_num_threads()} threads")
        self.device = f"{where} (PyTorch)"

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device)
        with torch.inference_mode():
            maps, features = self.module(tensor)
            return features.float().cpu().numpy(), maps.float().cpu().numpy()


def backbone_cam_runner(spec: BackboneSpec, layer: str, device: str | None = None) -> TorchCamRunner:
    """The (spec, layer) extractor with its ImageNet weights, for a linear model on its features."""
    return TorchCamRunner(load_feature_extractor(spec, layer), device)


def fine_tuned_cam_runner(project, info, device: str | None = None) -> tuple[TorchCamRunner, np.ndarray, np.ndarray]:
    """A fine-tuned network's extractor, and its linear head as (weight (K, D), bias (K,)) float64."""
    from engine.torch.network_predict import load_fine_tuned

    network = load_fine_tuned(project, info)
    weight = network.head.weight.detach().cpu().double().numpy()
    bias = network.head.bias.detach().cpu().double().numpy()
    return TorchCamRunner(network.features, device), weight, bias
