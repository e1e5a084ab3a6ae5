"""Deep-feature extraction: images -> backbone features, cached in the project per (backbone, layer).

``ensure_features`` is a job (see engine.runtime.jobs). It computes vectors only for images that have none
yet, in batches, decoding overlapping inference (Pillow, onnxruntime and torch all release the GIL):
on the CPU one worker thread per core decodes a batch and then runs the network on it with that
core alone, so decoding on one core overlaps inference on the others with no thread ever waiting
for another; with torch, worker threads decode the next batches while this thread runs the network
on the current one. Vectors are committed in transactions of at least ``STORE_AT_LEAST`` images (and
at once on cancel), and the job checks for cancellation between batches, so a cancelled or killed
run resumes where it stopped (a kill loses at most the last uncommitted few dozen images).

Which runtime runs the network (onnxruntime, or torch on a GPU) is engine.features.runners' choice;
a loaded runner is kept here between jobs.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.features.backbones import DEFAULT_BACKBONE, BackboneSpec, get_backbone
from engine.features.preprocess import preprocess_bytes
from engine.features.runners import FeatureRunner, device_name, make_runner, resolve_runtime
from engine.images.imaging import ImageDecodeError, read_image_file
from engine.runtime.jobs import JobContext
from storage.featurestore import ensure_feature_set, load_vectors, missing_image_ids, store_vectors
from storage.images import read_image_bytes
from storage.project import Project

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
# Loaded runners, reused between jobs


_RUNNERS: dict[tuple[str, str, str], FeatureRunner] = {}
_RUNNERS_LOCK = threading.Lock()
_MAX_CACHED_RUNNERS = 2


def get_runner(backbone: str = DEFAULT_BACKBONE, layer: str | None = None, runtime: str | None = None) -> FeatureRunner:
    """A loaded network for (backbone, layer), reused between jobs (loading costs seconds)."""
    spec = get_backbone(backbone)
    layer_name = spec.layer(layer).name
    chosen = resolve_runtime(runtime)
    key = (spec.name, layer_name, chosen)
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = make_runner(spec, layer_name, chosen)
            while len(_RUNNERS) >= _MAX_CACHED_RUNNERS:
                _RUNNERS.pop(next(iter(_RUNNERS)))
            _RUNNERS[key] = runner
        return runner


def forget_runners() -> None:
    """Drop the loaded networks, so the next job loads them again from where the ONNX copies now are
    (tests point the cache at a new folder; a runner keeps the path it was loaded from)."""
    with _RUNNERS_LOCK:
        _RUNNERS.clear()


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
