"""The CPU fast path: an ONNX copy of a backbone's feature extractor, run with onnxruntime.

Eager PyTorch runs EfficientNet-Lite0 at 7-20 images/s on a 2-core laptop; onnxruntime runs the
same graph at 65-150 images/s with the same numbers out. The copy is exported once per
(backbone, layer, weights, library versions), checked against torch right after export, written
atomically, and cached under the user cache folder (``SORTLAB_CACHE_DIR`` overrides it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from engine.backbones import BackboneSpec, feature_extractor

log = logging.getLogger(__name__)

CACHE_ENV = "SORTLAB_CACHE_DIR"
EXPORT_FORMAT = 1  # bump when the exported graph changes meaning
OPSET = 17
VERIFY_TOLERANCE = 1e-3  # max abs difference between torch and onnxruntime features
_EXPORT_LOCK = threading.Lock()


class OnnxExportFailed(RuntimeError):
    """The ONNX copy could not be made or does not match torch; callers fall back to torch."""


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override) / "onnx"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("sortlab")) / "onnx"


def _versions_key() -> str:
    import onnxruntime

    return f"torch{torch.__version__}-ort{onnxruntime.__version__}-fmt{EXPORT_FORMAT}-opset{OPSET}"


def model_path(spec: BackboneSpec, layer: str) -> Path:
    digest = hashlib.sha256(f"{spec.weights_fingerprint()}|{_versions_key()}".encode()).hexdigest()[:16]
    return cache_dir() / f"{spec.name}-{layer}-{digest}.onnx"


def _verification_batch(spec: BackboneSpec) -> np.ndarray:
    """Two deterministic, image-like inputs (smooth gradients plus noise) in the network's range."""
    rng = np.random.default_rng(1234)
    size = spec.input_size
    ramp = np.linspace(-1.5, 1.5, size, dtype=np.float32)
    batch = np.empty((2, 3, size, size), dtype=np.float32)
    batch[0] = ramp[None, None, :] * np.array([1.0, 0.2, -0.8], dtype=np.float32)[:, None, None]
    batch[1] = rng.normal(0.0, 0.8, size=(3, size, size)).astype(np.float32)
    return batch


def export(spec: BackboneSpec, layer: str, model: torch.nn.Module | None = None) -> Path:
    """The cached, verified ONNX file for (spec, layer), exporting it first if needed."""
    target = model_path(spec, layer)
    if target.is_file():
        return target
    with _EXPORT_LOCK:
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        extractor = feature_extractor(model if model is not None else spec.load_model(), layer, spec.name).eval()
        sample = torch.from_numpy(_verification_batch(spec))
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".onnx")
        os.close(handle)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer chatter about constant folding; verified below
                torch.onnx.export(
                    extractor, (sample,), temporary, input_names=["pixels"], output_names=["features"],
                    dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                    opset_version=OPSET, dynamo=False,
                )
            extractor.eval()  # the exporter may leave the module in train mode
            with torch.no_grad():
                expected = extractor(sample).numpy()
            got = OnnxFeatureRunner(Path(temporary), threads=1).run(sample.numpy())
            difference = float(np.max(np.abs(expected - got))) if expected.shape == got.shape else float("inf")
            if not difference <= VERIFY_TOLERANCE:
                raise OnnxExportFailed(
                    f"ONNX copy of {spec.name}/{layer} differs from torch by {difference:.2e}"
                )
            os.replace(temporary, target)
            target.with_suffix(".json").write_text(json.dumps(
                {"backbone": spec.name, "layer": layer, "versions": _versions_key(), "max_abs_diff": difference}
            ))
        except OnnxExportFailed:
            raise
        except Exception as exc:
            raise OnnxExportFailed(f"exporting {spec.name}/{layer} to ONNX failed: {exc}") from exc
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    return target


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class OnnxFeatureRunner:
    """An onnxruntime session mapping (N, 3, H, W) float32 to (N, D) features. Releases the GIL."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads would steal the cores the image decoders need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.threads = options.intra_op_num_threads
        self._input = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self._input: batch})[0]
