"""Which edition of Sortlab this is: the full one (with PyTorch) or the CPU edition (without it).

The CPU edition (packaging/, ``SORTLAB_EDITION=cpu``) leaves PyTorch out to stay under 1 GB. Its
quick loop needs no torch: features come from ONNX copies of the bundled backbones shipped with
the app (engine.features.onnx_backend), classifiers from scikit-learn, exports are composed with the
``onnx`` library (engine.ship.onnx_compose). Everything that imports torch lives in the engine.torch
package (lint enforces it; the CPU edition leaves the package out). Code elsewhere imports it lazily
and only after ``torch_available()`` (to choose) or ``require_torch`` (fine-tuning, the linear probe,
torchvision backbones, exporting a network from torch), so the user reads one clear sentence
instead of a traceback.
"""

from __future__ import annotations

import functools
import importlib.util

from storage.errors import ProjectError

FULL_EDITION_HINT = (
    "this edition of Sortlab leaves PyTorch out to stay small; install the full edition for it. "
    "Quick training (logistic regression, SVM), prediction and export work here."
)


class FullEditionRequired(ProjectError):
    """A feature that needs PyTorch was asked for in the CPU edition."""


@functools.cache
def torch_available() -> bool:
    """Whether PyTorch can be imported here (found without importing it: importing costs seconds)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require_torch(feature: str) -> None:
    """Raise FullEditionRequired naming ``feature`` when PyTorch is not in this edition."""
    if not torch_available():
        raise FullEditionRequired(f"{feature} needs the full edition: {FULL_EDITION_HINT}")
