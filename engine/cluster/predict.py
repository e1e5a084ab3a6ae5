"""``predict --cluster``: classify image files on a Dask cluster, rows streamed back in input order.

Each worker runs the exported network (engine.ship.network) in one onnxruntime session. For a feature
model that network is the very ONNX copy of the backbone the local pipeline runs, followed by the
linear head as ONNX operators (engine.ship.onnx_compose), so a row differs from ``predict`` on this
machine only by the head's float32 rounding (~1e-7). A fine-tuned network is exported from torch on
this machine (it needs the full edition here, never on the workers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.cluster.session import CHUNK_SIZE, ClusterConnection, install_model, map_in_order, remove_model
from engine.cluster.worker import ChunkResult, Preprocessing
from engine.features.backbones import get_backbone
from engine.images.imaging import ImageDecodeError, read_image_file
from engine.models.predicting import FilePrediction, _file_rows, expand_image_paths
from engine.runtime.jobs import JobContext
from engine.ship.network import INPUT_NAME, OUTPUT_NAME, build_network, export_onnx, is_network_model, linear_predictor
from storage.modelstore import ModelInfo, get_model
from storage.project import Project


@dataclass
class ClusterPredictReport:
    """What a cluster prediction did; the rows themselves went to ``on_rows`` as they arrived."""

    model_version: int
    class_names: list[str]
    files: int
    predicted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    workers: set[str] = field(default_factory=set)


def network_onnx(project: Project, info: ModelInfo) -> bytes:
    """The version's whole network as ONNX bytes (input ``images``, output ``probabilities``)."""
    if is_network_model(info):
        return export_onnx(build_network(project, info), get_backbone(info.backbone).input_size)
    from engine.features.onnx_backend import export as backbone_onnx
    from engine.ship.onnx_compose import compose

    spec = get_backbone(info.backbone)
    return compose(backbone_onnx(spec, spec.layer(info.layer).name), linear_predictor(project, info),
                   INPUT_NAME, OUTPUT_NAME)


def file_chunks(paths: Sequence[str], size: int = CHUNK_SIZE) -> Iterator[list[tuple[int, bytes | str]]]:
    """(position, file bytes) items, or (position, reason) for a file this machine cannot read, in chunks."""
    for start in range(0, len(paths), size):
        items: list[tuple[int, bytes | str]] = []
        for position in range(start, min(start + size, len(paths))):
            try:
                items.append((position, read_image_file(paths[position])))
            except ImageDecodeError as exc:
                items.append((position, exc.reason))
        yield items


def predict_files_on_cluster(
    context: JobContext,
    project: Project,
    paths: Sequence[str | os.PathLike],
    connection: ClusterConnection,
    on_rows: Callable[[list[FilePrediction], list[tuple[str, str]]], None],
    model_version: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> ClusterPredictReport:
    """Classify files (folders expanded as ``predict`` does) on the cluster. ``on_rows(rows, failed)`` gets
    each chunk's predictions and unreadable files, in input order, as soon as the chunk is back."""
    info = get_model(project, model_version)
    files = expand_image_paths(paths)
    report = ClusterPredictReport(info.version, list(info.class_names), len(files))
    context.progress(0.0, f"Sending model version {info.version} to the workers")
    model = network_onnx(project, info)
    context.check_cancelled()
    plugin = install_model(connection, model, OUTPUT_NAME, Preprocessing.of(get_backbone(info.backbone)), "predict")
    done = [0]

    def consume(result: ChunkResult) -> None:
        rows = _file_rows(info, [files[k] for k in result.keys], np.asarray(result.outputs, dtype=np.float64))
        failed = sorted((int(k), reason) for k, reason in result.failed)
        failures = [(files[k], reason) for k, reason in failed]
        on_rows(rows, failures)
        report.predicted += len(rows)
        report.failed.extend(failures)
        report.workers.add(result.worker)
        done[0] += len(rows) + len(failures)
        context.progress(done[0] / max(len(files), 1),
                         f"Predicted {done[0]} of {len(files)} images on {len(report.workers)} workers")

    try:
        map_in_order(context, connection, plugin, file_chunks(files, chunk_size), consume)
    finally:
        remove_model(connection, plugin)
    return report
