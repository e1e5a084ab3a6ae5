"""The CPU fast path: an ONNX copy of a backbone's feature extractor, run with onnxruntime.

Eager PyTorch runs EfficientNet-Lite0 at 7-20 images/s on a 2-core laptop; onnxruntime runs the
same graph at 65-150 images/s with the same numbers out. The copy is exported once per
(backbone, layer, weights, library versions), checked against torch right after export, written
atomically, and cached under the user cache folder (``SORTLAB_CACHE_DIR`` overrides it).

Shipped copies: the packaged app carries verified copies of the bundled backbones in
``engine/onnx_models`` (``SORTLAB_ONNX_MODELS`` overrides the folder), made at build time with
``python -m engine.features.onnx_backend ship FOLDER``. They are named by backbone, layer and the SHA-256 of
the weights file, so a copy is used only with exactly the weights it was made from, and they are
preferred to exporting. They are what lets the CPU edition (no PyTorch) compute features at all.
Exporting runs in PyTorch (engine.torch.onnx_export), reached only once ``torch_available()``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from engine.features.backbones import BackboneSpec, get_backbone, list_backbones
from engine.runtime.edition import require_torch, torch_available

log = logging.getLogger(__name__)

CACHE_ENV = "SORTLAB_CACHE_DIR"
SHIPPED_ENV = "SORTLAB_ONNX_MODELS"
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


def shipped_dir() -> Path:
    """Where the app's own verified ONNX copies are (next to this module unless overridden)."""
    override = os.environ.get(SHIPPED_ENV)
    return Path(override) if override else Path(__file__).with_name("onnx_models")


def shipped_name(spec: BackboneSpec, layer: str) -> str:
    return f"{spec.name}-{layer}-{spec.weights_fingerprint()}.onnx"


def shipped_path(spec: BackboneSpec, layer: str) -> Path | None:
    """The shipped copy for exactly these weights and layer, or None."""
    candidate = shipped_dir() / shipped_name(spec, layer)
    return candidate if candidate.is_file() else None


def _versions_key() -> str:
    """The library versions an exported copy depends on (only asked for when torch is here).
    Torch's version comes from its installed metadata: importing torch to ask would stall every
    thread for up to a second while its libraries load, even when the copy is already made."""
    from importlib.metadata import version

    import onnxruntime

    return f"torch{version('torch')}-ort{onnxruntime.__version__}-fmt{EXPORT_FORMAT}-opset{OPSET}"


def model_path(spec: BackboneSpec, layer: str) -> Path:
    digest = hashlib.sha256(f"{spec.weights_fingerprint()}|{_versions_key()}".encode()).hexdigest()[:16]
    return cache_dir() / f"{spec.name}-{layer}-{digest}.onnx"


def largest_difference(expected: np.ndarray, got: np.ndarray) -> float:
    """How far an ONNX copy's output is from torch's on the same batch (inf when the shapes differ)."""
    return float(np.max(np.abs(expected - got))) if expected.shape == got.shape else float("inf")


def verification_batch(spec: BackboneSpec) -> np.ndarray:
    """Two deterministic, image-like inputs (smooth gradients plus noise) in the network's range."""
    rng = np.random.default_rng(1234)
    size = spec.input_size
    ramp = np.linspace(-1.5, 1.5, size, dtype=np.float32)
    batch = np.empty((2, 3, size, size), dtype=np.float32)
    batch[0] = ramp[None, None, :] * np.array([1.0, 0.2, -0.8], dtype=np.float32)[:, None, None]
    batch[1] = rng.normal(0.0, 0.8, size=(3, size, size)).astype(np.float32)
    return batch


def export(spec: BackboneSpec, layer: str, model=None) -> Path:
    """The verified ONNX file for (spec, layer): the shipped copy, else the cached one, exporting it
    from torch first if needed (OnnxExportFailed when neither exists and torch is not here)."""
    shipped = shipped_path(spec, layer)
    if shipped is not None:
        return shipped
    if not torch_available():
        raise OnnxExportFailed(
            f"no ONNX copy of {spec.title} ({layer} layer) ships with this edition and PyTorch, "
            "which would make one, is not installed"
        )
    target = model_path(spec, layer)
    if target.is_file():
        return target
    with _EXPORT_LOCK:
        if target.is_file():
            return target
        _export_verified(spec, layer, target, model)
    return target


def _export_verified(spec: BackboneSpec, layer: str, target: Path, model=None) -> float:
    """Export (spec, layer) from torch to ``target`` atomically after checking it against torch;
    returns the largest difference seen. Writes ``target.json`` with the check's details."""
    from engine.torch.extractors import load_feature_extractor
    from engine.torch.onnx_export import run_network, write_onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    extractor = load_feature_extractor(spec, layer, model)
    sample = verification_batch(spec)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".onnx")
    os.close(handle)
    try:
        write_onnx(extractor, sample, temporary, "pixels", "features", OPSET)
        expected = run_network(extractor, sample)
        got = OnnxFeatureRunner(Path(temporary), threads=1).run(sample)
        difference = largest_difference(expected, got)
        if not difference <= VERIFY_TOLERANCE:
            raise OnnxExportFailed(
                f"ONNX copy of {spec.name}/{layer} differs from torch by {difference:.2e}"
            )
        os.replace(temporary, target)
        target.with_suffix(".json").write_text(json.dumps(
            {"backbone": spec.name, "layer": layer, "versions": _versions_key(), "max_abs_diff": difference,
             "weights_sha256_16": spec.weights_fingerprint()}
        ))
    except OnnxExportFailed:
        raise
    except Exception as exc:
        raise OnnxExportFailed(f"exporting {spec.name}/{layer} to ONNX failed: {exc}") from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return difference


def ship(spec: BackboneSpec, layer: str, folder: Path) -> Path:
    """Write a verified copy of (spec, layer) into ``folder`` under its shipped name (needs torch)."""
    require_torch("Making ONNX copies of backbones")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / shipped_name(spec, layer)
    if not target.is_file():
        cached = model_path(spec, layer)
        if cached.is_file():  # verified when it was made
            shutil.copyfile(cached, target)
            if cached.with_suffix(".json").is_file():
                shutil.copyfile(cached.with_suffix(".json"), target.with_suffix(".json"))
        else:
            _export_verified(spec, layer, target)
    return target


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class OnnxFeatureRunner:
    """An onnxruntime session mapping (N, 3, H, W) float32 to (N, D) features. Releases the GIL.
    ``model`` is the ONNX file, or the model itself as bytes (a copy made for one job)."""

    def __init__(self, model: Path | bytes, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads would steal the cores the image decoders need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.threads = options.intra_op_num_threads
        self._input = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self._input: batch})[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.features.onnx_backend ship FOLDER [--backbone NAME ...] [--layer NAME ...]``:
    the build step that makes the shipped copies (packaging/build.sh)."""
    parser = argparse.ArgumentParser(prog="python -m engine.features.onnx_backend")
    sub = parser.add_subparsers(dest="command", required=True)
    ship_parser = sub.add_parser("ship", help="write verified ONNX copies of bundled backbones into FOLDER")
    ship_parser.add_argument("folder", type=Path)
    ship_parser.add_argument("--backbone", action="append", dest="backbones",
                             help="backbone name (repeatable; default: every EfficientNet-Lite)")
    ship_parser.add_argument("--layer", action="append", dest="layers",
                             help="layer name (repeatable; default: every layer of each backbone)")
    args = parser.parse_args(argv)
    names = args.backbones or [s.name for s in list_backbones(available_only=True) if s.family == "efficientnet_lite"]
    for name in names:
        spec = get_backbone(name)
        for layer in args.layers or spec.layers:
            path = ship(spec, spec.layer(layer).name, args.folder)
            print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
