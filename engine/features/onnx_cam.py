"""The ONNX feature network with its pre-pool map as a second output: class activation maps without torch.

The CPU edition has no PyTorch, only the verified ONNX copies of engine.features.onnx_backend. The
map a class activation map is made of is already computed inside such a copy, as the input of the
global average pooling at its end; this module derives a variant whose graph also outputs that
tensor (same nodes, same weights, one more output), so one onnxruntime pass gives the features and
the map they were pooled from. The variant is written once next to the cache's other copies, named
after its source (whose name already identifies the weights and the export).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from engine.features.backbones import BackboneSpec
from engine.features.onnx_backend import OnnxExportFailed, OnnxFeatureRunner, cache_dir, export

FEATURES_OUTPUT = "features"  # the output name onnx_backend gives every copy
MAP_OUTPUT = "feature_map"
CAM_FORMAT = 1  # bump when the derived graph changes meaning
# Between the pooling and the graph's output only these may stand: they change shape, not values.
_SHAPE_ONLY = {"Flatten", "Reshape", "Squeeze", "Identity"}
_DERIVE_LOCK = threading.Lock()


class OnnxCamUnavailable(OnnxExportFailed):
    """The feature graph does not end in a plain global average pooling (e.g. a normalization follows)."""


def pooled_map_name(model, features_output: str) -> str:
    """The name of the tensor the graph's global average pooling reads, walking back from
    ``features_output`` over shape-only nodes."""
    from onnx import helper, numpy_helper

    producers = {output: node for node in model.graph.node for output in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    name = features_output
    node = producers.get(name)
    while node is not None and node.op_type in _SHAPE_ONLY:
        name = node.input[0]
        node = producers.get(name)
    if node is None:
        raise OnnxCamUnavailable(f"nothing in the graph computes {name!r}")
    if node.op_type == "GlobalAveragePool":
        return node.input[0]
    if node.op_type == "ReduceMean":
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes")
        if axes is None and len(node.input) > 1:  # opset 18 moved axes to an input
            axes = constants.get(node.input[1])
        if axes is not None and sorted(int(a) % 4 for a in np.asarray(axes).ravel()) == [2, 3]:
            return node.input[0]
    raise OnnxCamUnavailable(
        f"the features come from {node.op_type}, not from a global average pooling over the image"
    )


def with_map_output(source: Path, target: Path, features_output: str = FEATURES_OUTPUT) -> None:
    """Write ``source``'s graph to ``target`` (atomically) with the pre-pool map as output ``MAP_OUTPUT``."""
    import onnx
    from onnx import TensorProto, helper

    try:
        model = onnx.load(str(source))
        map_name = pooled_map_name(model, features_output)
        model.graph.node.append(helper.make_node("Identity", [map_name], [MAP_OUTPUT]))
        map_type = helper.make_tensor_value_info(MAP_OUTPUT, TensorProto.FLOAT, ["batch", None, None, None])
        model.graph.output.append(map_type)
        onnx.checker.check_model(model)
    except (OnnxCamUnavailable, OSError):
        raise
    except Exception as exc:  # onnx's own errors for a damaged or foreign file
        raise OnnxCamUnavailable(f"cannot add the feature map to {source.name}: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".onnx")
    os.close(handle)
    try:
        onnx.save(model, temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def cam_model_path(spec: BackboneSpec, layer: str) -> Path:
    """The map-exposing variant of the (spec, layer) ONNX copy, derived on first use.
    OnnxExportFailed when there is no copy; OnnxCamUnavailable when its pooling cannot be split off."""
    source = export(spec, layer)
    target = cache_dir() / f"{source.stem}-map{CAM_FORMAT}.onnx"
    if target.is_file():
        return target
    with _DERIVE_LOCK:
        if not target.is_file():
            with_map_output(source, target)
    return target


class OnnxCamRunner:
    """onnxruntime on the map-exposing copy: ``run`` maps (N, 3, H, W) float32 to ((N, D), (N, D, h, w))."""

    def __init__(self, spec: BackboneSpec, layer: str, threads: int | None = None):
        self.path = cam_model_path(spec, layer)
        runner = OnnxFeatureRunner(self.path, threads)
        self.session = runner.session
        self._input = self.session.get_inputs()[0].name
        self.device = f"CPU, {runner.threads} threads (onnxruntime)"

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        features, maps = self.session.run([FEATURES_OUTPUT, MAP_OUTPUT], {self._input: batch})
        return features, maps
