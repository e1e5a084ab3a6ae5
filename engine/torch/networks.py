"""Backbone networks in PyTorch, built from the registry's specs (engine.features.backbones).

Weights files are read with ``torch.load(weights_only=True)`` only: a file that holds Python objects
instead of plain tensors is refused, never unpickled, whoever made it. A user-picked torchvision
weights file is checked against its network before it is installed into the torch hub cache.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from engine.features.backbones import BackboneSpec, BackboneUnavailable, get_backbone


def hub_checkpoints_dir() -> Path:
    """Where torchvision looks for weights files (``torch.hub.set_dir`` and ``TORCH_HOME`` move it)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weight_files(weights_enum: str) -> list[str]:
    """The file names torchvision gives the weights listed by ``torchvision.models.<weights_enum>``."""
    from torchvision import models

    return [Path(member.url).name for member in getattr(models, weights_enum)]


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """The network of ``spec`` with its ImageNet head and freshly initialized weights."""
    if spec.family == "efficientnet_lite":
        from efficientnet_lite_pytorch import EfficientNet

        # from_name gives static "same" padding at the native size, which ONNX export needs.
        return EfficientNet.from_name(spec.name.replace("_", "-"))
    from torchvision import models

    return getattr(models, spec.name)(weights=None)


def load_backbone(spec: BackboneSpec) -> nn.Module:
    """The full network with its ImageNet head and weights, in eval mode, on the CPU."""
    path = spec.require_weights()
    model = build_backbone(spec)
    try:
        state = _read_state_dict(path)
    except Exception as exc:  # a damaged or foreign file: one clear line for the user
        raise BackboneUnavailable(
            f"The weights file {path} for {spec.title} cannot be read ({_first_line(exc)})."
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BackboneUnavailable(
            f"The weights file {path} does not match the {spec.title} network: {str(exc).splitlines()[0]}"
        ) from exc
    model.sortlab_backbone = spec.name  # lets engine.torch.extractors tell the architecture
    return model.eval()


def install_weights_file(name: str, source: str | os.PathLike) -> Path:
    """Make a user-picked torchvision weights file available: check it fits the network, then copy
    it into the torch hub cache under the name torchvision uses. Returns the installed path."""
    spec = get_backbone(name)
    if spec.family != "torchvision":
        raise BackboneUnavailable(f"{spec.title} comes with its own weights; there is nothing to install.")
    source = Path(source)
    try:
        state = _read_state_dict(source)
    except Exception as exc:
        raise BackboneUnavailable(
            f"{source.name} is not a readable PyTorch weights file ({_first_line(exc)})."
        ) from exc
    try:
        build_backbone(spec).load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise BackboneUnavailable(f"{source.name} does not hold {spec.title} weights.") from exc
    folder = hub_checkpoints_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / torchvision_weight_files(spec.weights_enum)[0]
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".sortlab-", suffix=".pth")
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _read_state_dict(path: Path):
    """Tensors only (``weights_only``); a checkpoint's ``state_dict`` entry when it is one."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        return state["state_dict"]
    return state


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    """A loader's error as one plain line. torch's weights_only refusal spans many lines of advice
    (with terminal colour codes) meant for programmers, such as re-running with weights_only=False,
    which Sortlab must never suggest for a file of unknown origin."""
    text = _ANSI_ESCAPE.sub("", str(exc)).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds Python objects, not plain weights, and Sortlab never runs code from such files"
    return text.splitlines()[0] if text else type(exc).__name__
