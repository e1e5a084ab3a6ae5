"""What runs on a Dask worker: one onnxruntime session per worker (a ``WorkerPlugin``) and the task that
decodes a chunk of images and runs them through it.

Workers need no Sortlab: the client ships this module by value with cloudpickle, and the plugin carries
the ONNX network and Sortlab's own ``preprocess_bytes`` (engine.features.preprocess, with the image
decoder it calls) as cloudpickle bytes (engine.cluster.session). A worker needs Python, ``distributed``, onnxruntime,
numpy and Pillow, nothing else. Preprocessing is Sortlab's own code, so a worker's pixels are the
very pixels the local pipeline feeds the same ONNX graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from distributed import WorkerPlugin, get_worker


@dataclass(frozen=True)
class Preprocessing:
    """The fields of a BackboneSpec that engine.features.preprocess reads (plain data, cheap to ship)."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, spec) -> Preprocessing:
        return cls(spec.input_size, spec.resize_size, spec.interpolation, tuple(spec.mean), tuple(spec.std))


@dataclass
class ChunkResult:
    """One chunk's answer: the keys that decoded (in chunk order), their output rows, and (key, reason)
    for each that did not."""

    keys: list
    outputs: np.ndarray
    failed: list[tuple[object, str]]
    worker: str = ""


class OnnxSessionPlugin(WorkerPlugin):
    """Holds one onnxruntime session of ``model`` (ONNX bytes) on each worker, made at setup (also on a
    worker that joins or restarts later). ``name`` keys it in ``worker.plugins``. Worker threads share
    the session (onnxruntime sessions are thread-safe); each call runs on its calling thread alone,
    as Sortlab's local feature runner does. ``preprocess_code``: cloudpickle bytes of
    ``preprocess_bytes(data, spec, out)``, loaded at setup."""

    def __init__(self, name: str, model: bytes, output: str, preprocessing: Preprocessing, preprocess_code: bytes,
                 batch_size: int = 8):
        self.name = name
        self.model = model
        self.output = output
        self.preprocessing = preprocessing
        self.preprocess_code = preprocess_code
        self.batch_size = batch_size
        self.session = None
        self.input = None
        self.preprocess = None

    def setup(self, worker=None) -> None:
        import cloudpickle
        import onnxruntime as ort

        self.preprocess = cloudpickle.loads(self.preprocess_code)

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def teardown(self, worker=None) -> None:
        self.session = self.preprocess = None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: pixels})[0]


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc) or exc.__class__.__name__


def run_chunk(plugin_name: str, items: list[tuple[object, bytes | str]]) -> ChunkResult:
    """The task: decode ``items`` ((key, image bytes) or (key, reason the client could not read it)),
    preprocess them as Sortlab does, and run them through the worker's session in batches."""
    worker = get_worker()
    plugin = worker.plugins[plugin_name]
    prep = plugin.preprocessing
    size = prep.input_size
    pixels = np.empty((len(items), 3, size, size), dtype=np.float32)
    keys: list = []
    failed: list[tuple[object, str]] = []
    for key, data in items:
        if isinstance(data, str):  # the client could not read the file: reported as locally
            failed.append((key, data))
            continue
        try:
            plugin.preprocess(data, prep, out=pixels[len(keys)])
        except Exception as exc:  # ImageDecodeError (shipped by value) or anything Pillow raised
            failed.append((key, _reason(exc)))
            continue
        keys.append(key)
    outputs = [plugin.run(pixels[start : start + plugin.batch_size])
               for start in range(0, len(keys), plugin.batch_size)]
    rows = np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)
    return ChunkResult(keys, np.asarray(rows, dtype=np.float32), failed, worker.address)
