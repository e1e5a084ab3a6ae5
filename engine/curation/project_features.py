"""Which cached features the curation tools (label review, duplicates, outliers) look at, and loading them.

They use the feature space the user's active model was trained on, so a suspect or a twin is judged
the way the model sees the images; a project without a model uses the default backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.features.backbones import DEFAULT_BACKBONE, get_backbone
from engine.runtime.jobs import JobContext
from storage.featurestore import load_vectors
from storage.modelstore import ModelInfo, active_model
from storage.project import Project


@dataclass(frozen=True)
class ProjectFeatures:
    """Every image's cached vector for one (backbone, layer), in image-id order."""

    backbone: str
    layer: str
    image_ids: np.ndarray  # int64
    X: np.ndarray  # float32 (N, D)


def resolve_feature_space(project: Project, backbone: str | None = None, layer: str | None = None) -> tuple[str, str]:
    """(backbone, layer): the ones asked for, else the active model's, else the default backbone's."""
    model: ModelInfo | None = active_model(project)
    spec = get_backbone(backbone or (model.backbone if model is not None else DEFAULT_BACKBONE))
    if layer is None and model is not None and model.backbone == spec.name:
        layer = model.layer
    return spec.name, spec.layer(layer).name


def load_project_features(
    context: JobContext, project: Project, backbone: str | None = None, layer: str | None = None,
) -> ProjectFeatures:
    """Extract the features images still lack (progress 0..0.9 of ``context``), then load them all."""
    from engine.features.extraction import ensure_features

    backbone, layer = resolve_feature_space(project, backbone, layer)
    ensure_features(context.subcontext(0.0, 0.9), project, backbone, layer)
    image_ids, X = load_vectors(project, backbone, layer)
    return ProjectFeatures(backbone, layer, np.asarray(image_ids, dtype=np.int64), np.asarray(X, dtype=np.float32))
