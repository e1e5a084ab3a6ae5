"""Deep-feature extraction: images -> backbone features, cached in the project per (backbone, layer).

``ensure_features`` is a job (see engine.jobs). It computes vectors only for images that have none
yet, in batches, decoding overlapping inference (Pillow, onnxruntime and torch all release the GIL):
on the CPU one worker thread per core decodes a batch and then runs the network on it with that
core alone, so decoding on one core overlaps inference on the others with no thread ever waiting
for another; with torch, worker threads decode the next batches while this thread runs the network
on the current one. Vectors are committed in transactions of at least ``STORE_AT_LEAST`` images (and
at once on cancel), and the job checks for cancellation between batches, so a cancelled or killed
run resumes where it stopped (a kill loses at most the last uncommitted few dozen images).

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

from engine.edition import require_torch, torch_available

if torch_available():
    import torch
else:  # the CPU edition: onnxruntime on the shipped ONNX copies only (engine.onnx_backend)
    torch = None

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
# Per worker call with onnxruntime: one core's CPU cost per image is the same from 1 to 32 images,
# and small batches keep the workers evenly loaded up to the last image of a job.
ONNX_BATCH_SIZE = 8
# Vectors per write transaction: one per 8-image batch would cost ~0.15 ms of CPU per image more.
STORE_AT_LEAST = 32
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
        return "torch" if torch is not None and torch.cuda.is_available() else "onnx"
    if chosen == "torch":
        require_torch("The PyTorch runtime")
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
    """onnxruntime on the cached ONNX copy of the feature extractor, one core per call.

    The session runs each call on the calling thread alone (``intra_op_num_threads=1``) and is
    called from ``parallel_calls`` threads at once (an ORT session is safe to share). On a 2-core
    CPU this beats one call spread over both cores: a single-threaded call needs ~10 % less CPU per
    image (no per-operator fork/join), and an image decoder taking a core away only slows one call
    instead of stalling every operator of the other at its join. The extraction pipeline gives each
    worker thread its own batch to decode and run; ``run`` splits one batch over the workers.
    """

    def __init__(self, spec: BackboneSpec, layer: str, threads: int | None = None):
        from engine.onnx_backend import OnnxFeatureRunner, default_threads, export

        self.spec, self.layer = spec, layer
        self.path = export(spec, layer)
        self._runner = OnnxFeatureRunner(self.path, threads=1)
        self.parallel_calls = max(1, threads or default_threads())
        self.device = f"CPU, {self.parallel_calls} threads (onnxruntime)"
        self.batch_size = ONNX_BATCH_SIZE
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def run_one(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch on the calling thread (one core); safe to call from several threads at once."""
        return self._runner.run(batch)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch on all ``parallel_calls`` cores by splitting it into one chunk per core."""
        parts = min(self.parallel_calls, len(batch))
        if parts <= 1:
            return self.run_one(batch)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parallel_calls, thread_name_prefix="sortlab-onnx")
        chunks = np.array_split(np.ascontiguousarray(batch, dtype=np.float32), parts)
        return np.concatenate(list(self._pool.map(self.run_one, chunks)))


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
        require_torch(f"The {layer} layer of {spec.title}")  # the CPU edition ships only some copies
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
            preprocess_bytes(item, spec, out=pixels[len(ok)])
        except ImageDecodeError as exc:
            failed.append((key, exc.reason))
            continue
        ok.append(key)
    return _PreparedBatch(ok, pixels[: len(ok)], failed)


def _plan_batches(keys: Sequence, size: int, workers: int) -> list[list]:
    """Batches of ``size``, then smaller ones at the end so that no worker is left running a full
    batch alone while the others are idle (the tail of a 400-image job would cost several %)."""
    batches: list[list] = []
    start = 0
    while len(keys) - start > size * workers:
        batches.append(list(keys[start : start + size]))
        start += size
    remaining = len(keys) - start
    tail = max(1, -(-remaining // (2 * workers))) if workers > 1 else size
    while start < len(keys):
        batches.append(list(keys[start : start + tail]))
        start += tail
    return batches


def _pipeline(
    context: JobContext,
    runner: FeatureRunner,
    keys: Sequence,
    load: Callable[[Sequence], dict],
    consume: Callable[[list, np.ndarray], None],
    label: str,
    batch_size: int | None = None,
) -> list[tuple[object, str]]:
    """Decode overlapping inference; returns failures. Results are consumed here, in key order.

    A runner with ``parallel_calls`` > 1 (onnxruntime on the CPU) gets that many worker threads,
    each decoding its own batch and then running it on one core, so every core is always busy with
    one thing. Otherwise (torch) worker threads decode batches ahead while this thread runs them.
    """
    size = batch_size or runner.batch_size
    workers = getattr(runner, "parallel_calls", 1)
    fused = workers > 1 and hasattr(runner, "run_one")
    batches = _plan_batches(keys, size, workers if fused else 1)
    failed: list[tuple[object, str]] = []
    done = 0
    pending: deque[Future] = deque()

    def decode_and_run(batch: list) -> tuple[_PreparedBatch, np.ndarray | None]:
        prepared = _prepare_batch(batch, load, runner.spec)
        return prepared, (runner.run_one(prepared.pixels) if prepared.keys else None)

    with ThreadPoolExecutor(workers if fused else DECODE_WORKERS, thread_name_prefix="sortlab-decode") as pool:
        upcoming = iter(batches)

        def submit_next() -> None:
            batch = next(upcoming, None)
            if batch is not None:
                if fused:
                    pending.append(pool.submit(decode_and_run, batch))
                else:
                    pending.append(pool.submit(_prepare_batch, batch, load, runner.spec))

        try:
            # Several batches per worker in flight, so none waits while this thread awaits a slow one.
            for _ in range(4 * workers if fused else PREFETCH_BATCHES):
                submit_next()
            while pending:
                if fused:
                    prepared, vectors = pending.popleft().result()
                    submit_next()
                else:
                    prepared = pending.popleft().result()
                    submit_next()
                    vectors = runner.run(prepared.pixels) if prepared.keys else None
                if prepared.keys:
                    consume(prepared.keys, vectors)
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
    unsaved: tuple[list, list] = ([], [])  # image ids, vector blocks computed but not yet committed

    def save() -> None:
        if unsaved[0]:  # taken out first, so the ``finally`` below never retries a failed write
            image_ids, vectors = list(unsaved[0]), np.concatenate(unsaved[1])
            unsaved[0].clear()
            unsaved[1].clear()
            stored[0] += store_vectors(project, feature_set.id, image_ids, vectors)

    def consume(image_ids: list, vectors: np.ndarray) -> None:
        unsaved[0].extend(image_ids)
        unsaved[1].append(vectors)
        if len(unsaved[0]) >= STORE_AT_LEAST:
            save()

    try:
        failed = _pipeline(
            context, runner, missing, lambda ids: read_image_bytes(project, ids), consume,
            f"Computing {spec.title} features", batch_size,
        )
    finally:  # cancelled or failed: keep every vector already computed
        save()
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
