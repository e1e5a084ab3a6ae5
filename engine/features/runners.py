"""Feature runtimes: which one runs a backbone (onnxruntime on the CPU, torch on a CUDA GPU), how the
onnxruntime runner spreads a batch over the cores, and the runner for a chosen runtime.

``auto`` picks torch only when a CUDA GPU is there; otherwise the cached, verified ONNX copy of the
feature extractor (several times faster than eager torch on a CPU), or torch on the CPU if that copy
cannot be made. ``runtime="torch"`` or ``SORTLAB_RUNTIME=torch`` forces torch. The torch runner lives
in engine.torch.feature_runner, imported only once ``torch_available()`` says it can be.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from engine.features.backbones import BackboneSpec
from engine.runtime.edition import require_torch, torch_available

log = logging.getLogger(__name__)

RUNTIME_ENV = "SORTLAB_RUNTIME"
RUNTIMES = ("auto", "onnx", "torch")
# Per worker call with onnxruntime: one core's CPU cost per image is the same from 1 to 32 images,
# and small batches keep the workers evenly loaded up to the last image of a job.
ONNX_BATCH_SIZE = 8


def resolve_runtime(runtime: str | None) -> str:
    """'onnx' or 'torch' for a requested runtime (None: ``SORTLAB_RUNTIME``, else 'auto')."""
    chosen = (runtime or os.environ.get(RUNTIME_ENV) or "auto").lower()
    if chosen not in RUNTIMES:
        raise ValueError(f"Unknown runtime {chosen!r}; choose one of {', '.join(RUNTIMES)}.")
    if chosen == "auto":
        return "torch" if torch_available() and _cuda_available() else "onnx"
    if chosen == "torch":
        require_torch("The PyTorch runtime")
    return chosen


def _cuda_available() -> bool:
    if not gpu_driver_present():  # torch could not use a GPU either: no need to import it (0.5 GB) to ask
        return False
    from engine.torch.feature_runner import cuda_available

    return cuda_available()


def gpu_driver_present() -> bool:
    """Whether a GPU driver that PyTorch's ``torch.cuda`` could use is installed, found without
    importing torch: NVIDIA's driver library (libcuda / nvcuda.dll; PyTorch wheels bring the CUDA
    runtime but never the driver), or AMD's ROCm device (/dev/kfd). False means torch.cuda would say
    no GPU; True means ask torch."""
    import sys

    if "torch" in sys.modules:
        return True  # already imported: torch itself answers
    if sys.platform == "darwin":
        return False  # no CUDA on macOS
    import ctypes

    for name in ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return os.path.exists("/dev/kfd")


def device_name(runtime: str | None = None) -> str:
    """Where features are computed, in words for the GUI (no model is loaded to find out)."""
    if resolve_runtime(runtime) == "torch":
        from engine.torch.feature_runner import torch_device_name

        return torch_device_name()
    from engine.features.onnx_backend import default_threads

    return f"CPU, {default_threads()} threads (onnxruntime)"


class FeatureRunner(Protocol):
    """A loaded network for one (backbone, layer): ``run`` maps (N, 3, H, W) float32 to (N, D)."""

    spec: BackboneSpec
    layer: str
    device: str
    batch_size: int

    def run(self, batch: np.ndarray) -> np.ndarray: ...


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
        from engine.features.onnx_backend import OnnxFeatureRunner, default_threads, export

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


def make_runner(spec: BackboneSpec, layer: str, runtime: str) -> FeatureRunner:
    """Load (spec, layer) for a resolved runtime; the ONNX path falls back to torch on the CPU."""
    if runtime == "torch":  # resolve_runtime checked that torch is here
        from engine.torch.feature_runner import TorchFeatureRunner

        return TorchFeatureRunner(spec, layer)
    from engine.features.onnx_backend import OnnxExportFailed

    try:
        return OnnxRuntimeFeatureRunner(spec, layer)
    except OnnxExportFailed as exc:  # slower but correct: never fail a job over the fast path
        require_torch(f"The {layer} layer of {spec.title}")  # the CPU edition ships only some copies
        log.warning("Using PyTorch on the CPU: %s", exc)
        from engine.torch.feature_runner import TorchFeatureRunner

        return TorchFeatureRunner(spec, layer, device="cpu", note="; ONNX unavailable")
