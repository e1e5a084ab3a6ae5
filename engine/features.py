"""Deep-feature extraction: images -> backbone features, cached in the project per (backbone, layer).

``ensure_features`` is a job (see engine.jobs). It computes vectors only for images that have none
yet, in batches: a small thread pool reads and decodes the next batches (Pillow releases the GIL)
while this thread runs the network on the current one (onnxruntime and torch release it too), so
decoding overlaps inference. Each batch's vectors are committed in one transaction and the job
checks for cancellation between batches, so a cancelled or killed run resumes where it stopped.

Runtimes: with a CUDA GPU, torch on the GPU; otherwise onnxruntime on a cached, verified ONNX copy
of the feature extractor (several times faster than eager torch on a CPU), or torch on the CPU if
that copy cannot be made. ``runtime="torch"`` or ``SORTLAB_RUNTIME=torch`` forces torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from engine.backbones import DEFAULT_BACKBONE, BackboneSpec, feature_extractor, get_backbone
from engine.imaging import ImageDecodeError, read_image_file
from engine.jobs import JobContext
from engine.preprocess import preprocess_bytes
from storage.featurestore import ensure_feature_set, load_vectors, missing_image_ids, store_vectors
from storage.images import read_image_bytes
from storage.project import Project

log = logging.getLogger(__name__)

RUNTIME_ENV = "SORTLAB_RUNTIME"
RUNTIMES = ("auto", "onnx", "torch")
CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 64
DECODE_WORKERS = 2
PREFETCH_BATCHES = 3  # batches being decoded ahead of the one the network is running on


@dataclass
class FeatureSetInfo:
    """What ``ensure_features`` did: ``extracted`` now, ``cached`` before; ``images`` = vectors stored."""

    backbone: str
    layer: str
    dim: int
    images: int
    extracted: int
    cached: int
    device: str
    seconds: float
    failed: list[tuple[int, str]] = field(default_factory=list)  # (image id, reason)

    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone, "layer": self.layer, "extracted": self.extracted, "cached": self.cached,
            "dim": self.dim, "device": self.device, "seconds": round(self.seconds, 3),
            "failed": [{"image_id": image_id, "reason": reason} for image_id, reason in self.failed],
        }


# ---------------------------------------------------------------------------------------------
# Runtimes


def _resolve_runtime(runtime: str | None) -> str:
    chosen = (runtime or os.environ.get(RUNTIME_ENV) or "auto").lower()
    if chosen not in RUNTIMES:
        raise ValueError(f"Unknown runtime {chosen!r}; choose one of {', '.join(RUNTIMES)}.")
    if chosen == "auto":
        return "torch" if torch.cuda.is_available() else "onnx"
    return chosen


def device_name(runtime: str | None = None) -> str:
    """Where features are computed, in words for the GUI (no model is loaded to find out)."""
    if _resolve_runtime(runtime) == "torch":
        if torch.cuda.is_available():
            return f"GPU: {torch.cuda.get_device_name(0)} (PyTorch CUDA)"
        return f"CPU, {torch.get_num_threads()} threads (PyTorch)"
    from engine.onnx_backend import default_threads

    return f"CPU, {default_threads()} threads (onnxruntime)"


class FeatureRunner(Protocol):
    """A loaded network for one (backbone, layer): ``run`` maps (N, 3, H, W) float32 to (N, D)."""

    spec: BackboneSpec
    layer: str
    device: str
    batch_size: int

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class TorchFeatureRunner:
    """Eager torch on a GPU (or the CPU when forced or when ONNX is not usable)."""

    def __init__(self, spec: BackboneSpec, layer: str, device: str | None = None, note: str = ""):
        self.spec, self.layer = spec, layer
        self.torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = feature_extractor(spec.load_model(), layer, spec.name).eval().to(self.torch_device)
        if self.torch_device.type == "cuda":
            self.device = f"GPU: {torch.cuda.get_device_name(self.torch_device)} (PyTorch CUDA)"
            self.batch_size = GPU_BATCH_SIZE
        else:
            self.device = f"CPU, {torch.get_num_threads()} threads (PyTorch{note})"
            self.batch_size = CPU_BATCH_SIZE

    def run(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            features = self.module(tensor.to(self.torch_device, non_blocking=True))
            return features.float().cpu().numpy()


class OnnxRuntimeFeatureRunner:
    """onnxruntime on the cached ONNX copy of the feature extractor."""

    def __init__(self, spec: BackboneSpec, layer: str, threads: int | None = None):
        from engine.onnx_backend import OnnxFeatureRunner, export

        self.spec, self.layer = spec, layer
        self.path = export(spec, layer)
        self._runner = OnnxFeatureRunner(self.path, threads)
        self.device = f"CPU, {self._runner.threads} threads (onnxruntime)"
        self.batch_size = CPU_BATCH_SIZE

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._runner.run(batch)


_RUNNERS: dict[tuple[str, str, str], FeatureRunner] = {}
_RUNNERS_LOCK = threading.Lock()
_MAX_CACHED_RUNNERS = 2


def get_runner(backbone: str = DEFAULT_BACKBONE, layer: str | None = None, runtime: str | None = None) -> FeatureRunner:
    """A loaded network for (backbone, layer), reused between jobs (loading costs seconds)."""
    spec = get_backbone(backbone)
    layer_name = spec.layer(layer).name
    chosen = _resolve_runtime(runtime)
    key = (spec.name, layer_name, chosen)
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = _make_runner(spec, layer_name, chosen)
            while len(_RUNNERS) >= _MAX_CACHED_RUNNERS:
                _RUNNERS.pop(next(iter(_RUNNERS)))
            _RUNNERS[key] = runner
        return runner


def _make_runner(spec: BackboneSpec, layer: str, runtime: str) -> FeatureRunner:
    if runtime == "torch":
        return TorchFeatureRunner(spec, layer)
    from engine.onnx_backend import OnnxExportFailed

    try:
        return OnnxRuntimeFeatureRunner(spec, layer)
    except OnnxExportFailed as exc:  # slower but correct: never fail a job over the fast path
        log.warning("Using PyTorch on the CPU: %s", exc)
        return TorchFeatureRunner(spec, layer, device="cpu", note="; ONNX unavailable")


# ---------------------------------------------------------------------------------------------
# The overlapped decode -> network pipeline


@dataclass
class _PreparedBatch:
    keys: list  # image ids or paths whose pixels are in ``pixels``, in order
    pixels: np.ndarray
    failed: list[tuple[object, str]]


def _prepare_batch(keys: Sequence, load: Callable[[Sequence], dict], spec: BackboneSpec) -> _PreparedBatch:
    """Read and decode one batch (runs on a decoder thread)."""
    data = load(keys)
    size = spec.input_size
    pixels = np.empty((len(keys), 3, size, size), dtype=np.float32)
    ok: list = []
    failed: list[tuple[object, str]] = []
    for key in keys:
        item = data.get(key)
        if isinstance(item, ImageDecodeError):
            failed.append((key, item.reason))
            continue
        if item is None:
            continue  # removed from the project meanwhile
        try:
            pixels[len(ok)] = preprocess_bytes(item, spec)
        except ImageDecodeError as exc:
            failed.append((key, exc.reason))
            continue
        ok.append(key)
    return _PreparedBatch(ok, pixels[: len(ok)], failed)


def _pipeline(
    context: JobContext,
    runner: FeatureRunner,
    keys: Sequence,
    load: Callable[[Sequence], dict],
    consume: Callable[[list, np.ndarray], None],
    label: str,
    batch_size: int | None = None,
) -> list[tuple[object, str]]:
    """Decode batches ahead on worker threads while running the network here; returns failures."""
    size = batch_size or runner.batch_size
    batches = [list(keys[start : start + size]) for start in range(0, len(keys), size)]
    failed: list[tuple[object, str]] = []
    done = 0
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="sortlab-decode") as pool:
        upcoming = iter(batches)

        def submit_next() -> None:
            batch = next(upcoming, None)
            if batch is not None:
                pending.append(pool.submit(_prepare_batch, batch, load, runner.spec))

        try:
            for _ in range(PREFETCH_BATCHES):
                submit_next()
            while pending:
                prepared = pending.popleft().result()
                submit_next()
                if prepared.keys:
                    consume(prepared.keys, runner.run(prepared.pixels))
                failed.extend(prepared.failed)
                done += len(prepared.keys) + len(prepared.failed)
                context.progress(done / max(len(keys), 1), f"{label}: {done} of {len(keys)} images")
                context.check_cancelled()
        finally:
            for future in pending:
                future.cancel()
    return failed


# ---------------------------------------------------------------------------------------------
# Public API


def ensure_features(
    context: JobContext,
    project: Project,
    backbone: str = DEFAULT_BACKBONE,
    layer: str | None = None,
    *,
    runtime: str | None = None,
    batch_size: int | None = None,
) -> FeatureSetInfo:
    """Compute and cache features for every project image that has none for (backbone, layer).

    ``runtime``: 'auto' (default), 'onnx' or 'torch'; ``batch_size`` defaults to the runtime's own.
    """
    started = time.perf_counter()
    spec = get_backbone(backbone)
    layer_spec = spec.layer(layer)
    feature_set = ensure_feature_set(project, spec.name, layer_spec.name, layer_spec.dim)
    missing = missing_image_ids(project, feature_set.id)
    cached = feature_set.vectors
    if not missing:
        context.progress(1.0, f"All {cached} images already have {spec.title} features")
        return FeatureSetInfo(spec.name, layer_spec.name, layer_spec.dim, cached, 0, cached,
                              device_name(runtime), time.perf_counter() - started)
    context.progress(0.0, f"Loading {spec.title}")
    runner = get_runner(spec.name, layer_spec.name, runtime)
    context.check_cancelled()
    stored = [0]

    def consume(image_ids: list, vectors: np.ndarray) -> None:
        stored[0] += store_vectors(project, feature_set.id, image_ids, vectors)

    failed = _pipeline(
        context, runner, missing, lambda ids: read_image_bytes(project, ids), consume,
        f"Computing {spec.title} features", batch_size,
    )
    context.progress(1.0, f"{stored[0]} images got {spec.title} features")
    return FeatureSetInfo(
        spec.name, layer_spec.name, layer_spec.dim, cached + stored[0], stored[0], cached, runner.device,
        time.perf_counter() - started, [(int(image_id), reason) for image_id, reason in failed],
    )


def load_features(
    project: Project, backbone: str = DEFAULT_BACKBONE, layer: str | None = None, image_ids=None
) -> tuple[np.ndarray, np.ndarray]:
    """Cached (image ids int64, features float32 (N, D)), in image-id order; empty when none."""
    if layer is None:
        layer = get_backbone(backbone).default_layer
    return load_vectors(project, backbone, layer, image_ids)


def features_for_files(
    context: JobContext,
    paths: Sequence[str | os.PathLike],
    backbone: str = DEFAULT_BACKBONE,
    layer: str | None = None,
    *,
    runtime: str | None = None,
    batch_size: int | None = None,
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Features of image files outside any project: (readable paths, (N, D) features, [(path, reason)])."""
    spec = get_backbone(backbone)
    layer_spec = spec.layer(layer)
    keys = [str(Path(path)) for path in paths]
    if not keys:
        return [], np.zeros((0, layer_spec.dim), dtype=np.float32), []
    context.progress(0.0, f"Loading {spec.title}")
    runner = get_runner(spec.name, layer_spec.name, runtime)

    def load(batch: Sequence[str]) -> dict:
        found: dict[str, bytes | ImageDecodeError] = {}
        for path in batch:
            try:
                found[path] = read_image_file(path)
            except ImageDecodeError as exc:
                found[path] = exc
        return found

    ok_paths: list[str] = []
    chunks: list[np.ndarray] = []

    def consume(batch_paths: list, vectors: np.ndarray) -> None:
        ok_paths.extend(batch_paths)
        chunks.append(np.asarray(vectors, dtype=np.float32))

    failed = _pipeline(context, runner, keys, load, consume, f"Computing {spec.title} features", batch_size)
    X = np.concatenate(chunks) if chunks else np.zeros((0, layer_spec.dim), dtype=np.float32)
    return ok_paths, X, [(str(path), reason) for path, reason in failed]
