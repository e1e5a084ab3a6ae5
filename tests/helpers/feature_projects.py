"""Projects with synthetic cached features (Gaussian blobs per class), for training tests that must not
need a network: images are tiny placeholder rows, vectors go straight into the feature store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.features.backbones import DEFAULT_BACKBONE, DEFAULT_LAYER
from storage import catalog
from storage.featurestore import ensure_feature_set, store_vectors
from storage.models import Image

# The default network's features: training from the window (and train_model's defaults) use them as cached.
BACKBONE = DEFAULT_BACKBONE
LAYER = DEFAULT_LAYER


@dataclass
class FeatureProject:
    image_ids: list[int]
    class_ids: list[int | None]  # None for unlabeled images
    class_by_name: dict[str, int]
    centers: np.ndarray


def add_placeholder_images(project, n: int, sources: list[str] | None = None, start: int = 0) -> list[int]:
    with project.writing() as session:
        rows = [
            Image(content_hash=f"synthetic-{start + i}", original_name=f"{start + i}.jpg",
                  original_path=f"/synthetic/{start + i}.jpg", source=(sources[i] if sources else "cam"),
                  width=8, height=8, original_format="JPEG", data=b"x", thumbnail=b"t")
            for i in range(n)
        ]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def make_feature_project(
    project, labeled_per_class: list[int], unlabeled: int = 0, dim: int = 32, spread: float = 1.5, seed: int = 0,
    sources: tuple[str, ...] = ("cam-a", "cam-b"),
) -> FeatureProject:
    """Classes c0, c1, ... with the given numbers of labeled images, plus unlabeled images of random classes."""
    rng = np.random.default_rng(seed)
    k = len(labeled_per_class)
    centers = rng.normal(size=(k, dim)) * 2
    truth = [c for c, n in enumerate(labeled_per_class) for _ in range(n)]
    truth += list(rng.integers(0, k, unlabeled))
    n = len(truth)
    ids = add_placeholder_images(project, n, [sources[i % len(sources)] for i in range(n)])
    by_name = catalog.ensure_classes(project, [f"c{c}" for c in range(k)])
    class_ids: list[int | None] = []
    for i, c in enumerate(truth):
        class_ids.append(by_name[f"c{c}"] if i < sum(labeled_per_class) else None)
    for c in range(k):
        members = [ids[i] for i, cid in enumerate(class_ids) if cid == by_name[f"c{c}"]]
        if members:
            catalog.set_labels(project, members, by_name[f"c{c}"], origin="import")
    X = (centers[np.array(truth)] + rng.normal(scale=spread, size=(n, dim))).astype(np.float32)
    feature_set = ensure_feature_set(project, BACKBONE, LAYER, dim)
    store_vectors(project, feature_set.id, ids, X)
    return FeatureProject(ids, class_ids, by_name, centers)
