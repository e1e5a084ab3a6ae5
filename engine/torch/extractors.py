"""Feature extractors: a backbone network cut at one of its registry layers, mapping a normalized
NCHW float batch to (N, D) pooled features, plus the ImageNet head that follows the default layer.

The extractors share the network's weights (no copy), so fine-tuning an extractor tunes the network.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.features.backbones import BackboneSpec, BackboneUnavailable, get_backbone, list_backbones
from engine.torch.networks import load_backbone


class LiteFeatures(nn.Module):
    """EfficientNet-Lite up to a chosen point, globally average-pooled."""

    def __init__(self, model: nn.Module, last_block: int | None):
        super().__init__()
        self.conv_stem = model._conv_stem
        self.bn0 = model._bn0
        self.act = model._swish
        count = len(model._blocks) if last_block is None else last_block + 1
        self.blocks = nn.ModuleList(model._blocks[:count])
        self.total_blocks = len(model._blocks)
        self.drop_connect_rate = model._global_params.drop_connect_rate or 0.0
        self.use_head = last_block is None
        if self.use_head:
            self.conv_head = model._conv_head
            self.bn1 = model._bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.body(x, len(self.blocks)), len(self.blocks))

    def body(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """The stem and blocks ``[0, stop)``: the activations a cached-tail fine-tune keeps."""
        return self._blocks(self.act(self.bn0(self.conv_stem(x))), 0, stop)

    def finish(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``[start, end)``, the head convolution and the pooling, from ``body(x, start)``."""
        x = self._blocks(x, start, len(self.blocks))
        if self.use_head:
            x = self.act(self.bn1(self.conv_head(x)))
        return x.mean(dim=(2, 3))

    def _blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for index in range(start, stop):
            # Stochastic depth only matters while fine-tuning (it is a no-op in eval mode).
            rate = self.drop_connect_rate * index / self.total_blocks if self.training else None
            x = self.blocks[index](x, drop_connect_rate=rate)
        return x

    @property
    def last_stage_start(self) -> int:
        """Index of the first block of the last stage (the last blocks of one output width)."""
        widths = [block._block_args.output_filters for block in self.blocks]
        start = len(widths) - 1
        while start > 0 and widths[start - 1] == widths[-1]:
            start -= 1
        return start


def _lite_stage_ends(model: nn.Module) -> list[int]:
    """Index of the last block of each stage (stages differ in output width)."""
    widths = [block._block_args.output_filters for block in model._blocks]
    return [i for i in range(len(widths)) if i == len(widths) - 1 or widths[i + 1] != widths[i]]


class _PooledSequential(nn.Module):
    """Run a few modules in turn, then global-average-pool (and optionally normalize) the result."""

    def __init__(self, *modules: nn.Module, post: nn.Module | None = None):
        super().__init__()
        self.body = nn.Sequential(*modules)
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.post is not None:  # e.g. ConvNeXt's LayerNorm2d before its classifier
            return self.post(x.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return x.mean(dim=(2, 3))


def _torchvision_extractor(name: str, model: nn.Module, layer: str) -> nn.Module:
    if name.startswith("resnet"):
        stem = (model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3)
        return _PooledSequential(*stem, model.layer4) if layer == "pooled" else _PooledSequential(*stem)
    if name == "mobilenet_v3_large":
        return _PooledSequential(*(model.features if layer == "pooled" else model.features[:13]))
    if name == "efficientnet_b0":
        return _PooledSequential(*(model.features if layer == "pooled" else model.features[:6]))
    if name == "convnext_tiny":
        if layer == "pooled":
            return _PooledSequential(*model.features, post=model.classifier[0])
        return _PooledSequential(*model.features[:6])
    raise BackboneUnavailable(f"No feature extractor for {name}.")


def feature_extractor(model: nn.Module, layer: str | None = None, backbone: str | None = None) -> nn.Module:
    """A module sharing ``model``'s weights that maps a normalized float NCHW batch to (N, D) features.

    ``backbone`` names the architecture when it cannot be told from the model (torchvision models).
    """
    name = backbone or getattr(model, "sortlab_backbone", None) or _guess_backbone(model)
    spec = get_backbone(name)
    layer_name = spec.layer(layer).name
    if spec.family == "efficientnet_lite":
        if layer_name == "pooled":
            last_block = None
        else:
            stage = int(layer_name.removeprefix("block"))
            last_block = _lite_stage_ends(model)[stage - 1]
        extractor = LiteFeatures(model, last_block)
    else:
        extractor = _torchvision_extractor(spec.name, model, layer_name)
    return extractor.train(model.training)


def load_feature_extractor(spec: BackboneSpec, layer: str | None = None, model: nn.Module | None = None) -> nn.Module:
    """The (spec, layer) feature extractor in eval mode, over ``model`` or the network loaded with its weights."""
    return feature_extractor(model if model is not None else load_backbone(spec), layer, spec.name).eval()


def _guess_backbone(model: nn.Module) -> str:
    if hasattr(model, "_blocks") and hasattr(model, "_conv_stem"):
        image_size = model._global_params.image_size
        for spec in list_backbones():
            if spec.family == "efficientnet_lite" and spec.input_size == image_size:
                return spec.name
    raise BackboneUnavailable("Cannot tell which network this model is; pass backbone=NAME.")


def classifier_head(model: nn.Module, backbone: str | None = None) -> nn.Linear:
    """The ImageNet classification layer that follows the default 'pooled' features."""
    name = backbone or getattr(model, "sortlab_backbone", None) or _guess_backbone(model)
    if name.startswith("efficientnet_lite"):
        return model._fc
    if name.startswith("resnet"):
        return model.fc
    if name == "convnext_tiny":
        return model.classifier[2]
    if name == "mobilenet_v3_large":
        raise BackboneUnavailable("MobileNetV3's head has a hidden layer; there is no single linear head.")
    return model.classifier[-1]
