"""``extract --cluster``: compute a project's missing features on a Dask cluster.

This machine reads the images from the project in chunks and sends them to the workers; the
workers return vectors; only this machine writes to the project, in the same transactions as a
local extraction (engine.features.extraction), so an interrupted run resumes where it stopped.
Workers run the same verified ONNX copy of the backbone the local pipeline runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np

from engine.cluster.session import CHUNK_SIZE, ClusterConnection, install_model, map_in_order, remove_model
from engine.cluster.worker import ChunkResult, Preprocessing
from engine.features.backbones import DEFAULT_BACKBONE, get_backbone
from engine.features.extraction import STORE_AT_LEAST, FeatureSetInfo
from engine.runtime.jobs import JobContext
from storage.featurestore import ensure_feature_set, missing_image_ids, store_vectors
from storage.images import read_image_bytes
from storage.project import Project


def image_chunks(project: Project, image_ids: Sequence[int], size: int = CHUNK_SIZE) -> Iterator[list]:
    """(image id, stored bytes) items in chunks, each read in its own short session."""
    for start in range(0, len(image_ids), size):
        wanted = [int(i) for i in image_ids[start : start + size]]
        data = read_image_bytes(project, wanted)
        yield [(image_id, data[image_id]) for image_id in wanted if image_id in data]


def ensure_features_on_cluster(
    context: JobContext,
    project: Project,
    connection: ClusterConnection,
    backbone: str = DEFAULT_BACKBONE,
    layer: str | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> FeatureSetInfo:
    """Compute and cache (backbone, layer) features for every project image that has none, on the cluster."""
    from engine.features.onnx_backend import export as backbone_onnx
    from engine.ship.onnx_compose import BACKBONE_OUTPUT

    started = time.perf_counter()
    spec = get_backbone(backbone)
    layer_spec = spec.layer(layer)
    feature_set = ensure_feature_set(project, spec.name, layer_spec.name, layer_spec.dim)
    missing = missing_image_ids(project, feature_set.id)
    cached = feature_set.vectors
    where = f"Dask cluster {connection.spec.describe()}"
    if not missing:
        context.progress(1.0, f"All {cached} images already have {spec.title} features")
        return FeatureSetInfo(spec.name, layer_spec.name, layer_spec.dim, cached, 0, cached, where, 0.0)
    context.progress(0.0, f"Sending {spec.title} to the workers")
    model = backbone_onnx(spec, layer_spec.name).read_bytes()
    context.check_cancelled()
    plugin = install_model(connection, model, BACKBONE_OUTPUT, Preprocessing.of(spec), "features")
    stored = [0]
    done = [0]
    failed: list[tuple[int, str]] = []
    unsaved: tuple[list, list] = ([], [])

    def save() -> None:
        if unsaved[0]:
            image_ids, vectors = list(unsaved[0]), np.concatenate(unsaved[1])
            unsaved[0].clear()
            unsaved[1].clear()
            stored[0] += store_vectors(project, feature_set.id, image_ids, vectors)

    def consume(result: ChunkResult) -> None:
        if result.keys:
            unsaved[0].extend(int(k) for k in result.keys)
            unsaved[1].append(np.asarray(result.outputs, dtype=np.float32))
        failed.extend((int(k), reason) for k, reason in result.failed)
        if len(unsaved[0]) >= STORE_AT_LEAST:
            save()
        done[0] += len(result.keys) + len(result.failed)
        context.progress(done[0] / len(missing), f"Computing {spec.title} features: {done[0]} of {len(missing)} "
                         "images on the cluster")

    try:
        map_in_order(context, connection, plugin, image_chunks(project, missing, chunk_size), consume)
    finally:  # cancelled or failed: keep every vector already computed
        save()
        remove_model(connection, plugin)
    context.progress(1.0, f"{stored[0]} images got {spec.title} features")
    return FeatureSetInfo(spec.name, layer_spec.name, layer_spec.dim, cached + stored[0], stored[0], cached, where,
                          time.perf_counter() - started, failed)
