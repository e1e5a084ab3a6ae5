"""A project's model versions as the GUI lists them, and how accuracy grew with the labels.

Reads the model store once and turns each version's stored metrics into the typed ``Metrics``, so
no view ever looks inside the stored JSON. No Qt here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from engine.features.backbones import BackboneUnavailable, get_backbone
from engine.models.evolving import history_points, is_evolving
from engine.models.methods import method_title
from engine.models.metrics import Metrics
from storage.modelstore import ModelInfo, list_models
from storage.project import Project


@dataclass(frozen=True)
class VersionSummary:
    """One model version for the versions table and the accuracy-vs-labels curve."""

    version: int
    created_at: dt.datetime
    method: str
    backbone: str
    layer: str
    n_labeled: int
    metrics: Metrics
    is_active: bool
    evolving: bool = False  # an automatic retrain the next one replaces (engine.models.evolving)
    history: tuple[tuple[int, float], ...] = ()  # accuracy points of the automatic versions it replaced

    @property
    def method_title(self) -> str:
        return method_title(self.method)

    @property
    def backbone_title(self) -> str:
        """The network as users know it ("EfficientNet-Lite0"); its stored name if no longer known."""
        try:
            return get_backbone(self.backbone).title
        except BackboneUnavailable:
            return self.backbone

    @classmethod
    def of(cls, info: ModelInfo) -> VersionSummary:
        return cls(info.version, info.created_at, info.method, info.backbone, info.layer, info.n_labeled,
                   Metrics.from_json(info.metrics), info.is_active, is_evolving(info), tuple(history_points(info)))


def list_versions(project: Project) -> list[VersionSummary]:
    """Every model version, oldest first."""
    return [VersionSummary.of(info) for info in list_models(project)]


class AccuracyHistory(NamedTuple):
    """Labeled images and validation accuracy (0..1) of each evaluated version, oldest first."""

    n_labeled: list[int]
    accuracy: list[float]


def accuracy_history(versions: Sequence[VersionSummary]) -> AccuracyHistory:
    """Each evaluated version's point, after the points of the automatic versions it replaced."""
    points = []
    for version in versions:
        points.extend(version.history)
        if version.metrics.accuracy is not None:
            points.append((version.n_labeled, float(version.metrics.accuracy)))
    return AccuracyHistory([n for n, _ in points], [accuracy for _, accuracy in points])


def model_history(project: Project) -> AccuracyHistory:
    """How validation accuracy grew as the user labeled more images (one point per version, and per
    labeled count of the automatic retrains an evolving version replaced)."""
    return accuracy_history(list_versions(project))
