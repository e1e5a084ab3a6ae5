"""Backbone ONNX + linear classifier -> ONE ONNX network, with the ``onnx`` library (no torch).

The export bundle's ``model.onnx`` for a feature model (logreg, svm, probe) is the verified ONNX
copy of the backbone's feature extractor (engine.features.onnx_backend; the very graph Sortlab computed the
features with on a CPU) followed by the classifier as a few ONNX operators:

    x = features / max(||features||, MIN_NORM)   only for a head on unit-length rows (``unit_norm``)
    scores = x @ W + b                 (standardization folded into W and b: ``folded_linear``)
    softmax(scores)                    several classes, uncalibrated (logistic regression)
    [1 - s, s], s = sigmoid(scores)    two classes, uncalibrated
    p = sigmoid(-(a * scores + c))     calibrated SVM (Platt), then [1 - p, p] for two classes,
                                       or p / sum(p) (uniform where the sum is 0) for several

exactly as ``LinearPredictor.predict_proba`` computes it, in float32. This is how the CPU
edition, which has no torch, exports; the export's verification step checks the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.models.classifiers import MIN_NORM, LinearPredictor

BACKBONE_INPUT = "pixels"  # names engine.features.onnx_backend gives the feature extractor's graph
BACKBONE_OUTPUT = "features"


def folded_linear(predictor: LinearPredictor) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) with ((x - mean) / scale) @ coef.T + intercept == x @ weight.T + bias (float64)."""
    coef = np.asarray(predictor.coef, dtype=np.float64)
    mean = np.asarray(predictor.mean, dtype=np.float64)
    scale = np.asarray(predictor.scale, dtype=np.float64)
    weight = coef / scale[None, :]
    bias = np.asarray(predictor.intercept, dtype=np.float64) - weight @ mean
    return weight, bias


def _head_nodes(predictor: LinearPredictor, features: str, output: str):
    """(nodes, initializers) computing class probabilities from ``features`` into ``output``."""
    from onnx import helper, numpy_helper

    weight, bias = folded_linear(predictor)
    n_scores = weight.shape[0]
    binary = n_scores == 1
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), "head_weight"),
        numpy_helper.from_array(bias.astype(np.float32), "head_bias"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "head_one"),
    ]
    nodes = []
    if predictor.scales_rows:  # x / max(||x||, MIN_NORM), as engine.models.classifiers.unit_rows
        inits.append(numpy_helper.from_array(np.array([MIN_NORM], dtype=np.float32), "head_min_norm"))
        nodes += [
            helper.make_node("ReduceL2", [features], ["head_norm"], axes=[1], keepdims=1),
            helper.make_node("Max", ["head_norm", "head_min_norm"], ["head_safe_norm"]),
            helper.make_node("Div", [features, "head_safe_norm"], ["head_unit"]),
        ]
        features = "head_unit"
    nodes += [
        helper.make_node("MatMul", [features, "head_weight"], ["head_product"]),
        helper.make_node("Add", ["head_product", "head_bias"], ["head_scores"]),
    ]

    def two_columns(positive: str) -> None:  # [1 - p, p]
        nodes.append(helper.make_node("Sub", ["head_one", positive], ["head_negative"]))
        nodes.append(helper.make_node("Concat", ["head_negative", positive], [output], axis=1))

    if predictor.calib_a is not None:
        inits += [
            numpy_helper.from_array(np.asarray(predictor.calib_a, dtype=np.float32).reshape(-1), "head_calib_a"),
            numpy_helper.from_array(np.asarray(predictor.calib_b, dtype=np.float32).reshape(-1), "head_calib_b"),
        ]
        nodes += [
            helper.make_node("Mul", ["head_scores", "head_calib_a"], ["calib_scaled"]),
            helper.make_node("Add", ["calib_scaled", "head_calib_b"], ["calib_shifted"]),
            helper.make_node("Neg", ["calib_shifted"], ["calib_negated"]),
            helper.make_node("Sigmoid", ["calib_negated"], ["calib_p"]),
        ]
        if binary:
            two_columns("calib_p")
        else:
            inits += [
                numpy_helper.from_array(np.array([1], dtype=np.int64), "head_sum_axes"),
                numpy_helper.from_array(np.array([0.0], dtype=np.float32), "head_zero"),
                numpy_helper.from_array(np.array([1e-30], dtype=np.float32), "head_tiny"),
                numpy_helper.from_array(np.full((1, n_scores), 1.0 / n_scores, dtype=np.float32), "head_uniform"),
            ]
            nodes += [
                helper.make_node("ReduceSum", ["calib_p", "head_sum_axes"], ["calib_total"], keepdims=1),
                helper.make_node("Greater", ["calib_total", "head_zero"], ["calib_nonzero"]),
                helper.make_node("Max", ["calib_total", "head_tiny"], ["calib_safe_total"]),
                helper.make_node("Div", ["calib_p", "calib_safe_total"], ["calib_normalized"]),
                helper.make_node("Where", ["calib_nonzero", "calib_normalized", "head_uniform"], [output]),
            ]
    elif binary:
        nodes.append(helper.make_node("Sigmoid", ["head_scores"], ["head_p"]))
        two_columns("head_p")
    else:
        nodes.append(helper.make_node("Softmax", ["head_scores"], [output], axis=1))
    return nodes, inits


def compose(
    backbone_onnx: str | Path | bytes, predictor: LinearPredictor, input_name: str = "images",
    output_name: str = "probabilities",
) -> bytes:
    """ONE ONNX network: the backbone feature extractor's graph followed by the classifier head.

    ``backbone_onnx``: a file (or its bytes) whose graph maps ``pixels`` (N, 3, H, W) to
    ``features`` (N, D), as engine.features.onnx_backend writes them. Returns the serialized model, checked
    with ``onnx.checker``; its input is ``input_name`` and its output ``output_name`` (N, classes).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(backbone_onnx) if isinstance(backbone_onnx, bytes) else onnx.load(str(backbone_onnx))
    graph = model.graph
    inputs = [value.name for value in graph.input]
    outputs = [value.name for value in graph.output]
    if inputs != [BACKBONE_INPUT] or outputs != [BACKBONE_OUTPUT]:
        raise ValueError(f"Not a Sortlab feature extractor graph (inputs {inputs}, outputs {outputs}).")
    dim = graph.output[0].type.tensor_type.shape.dim[1]
    if dim.HasField("dim_value") and dim.dim_value != predictor.n_features:
        raise ValueError(f"The classifier expects {predictor.n_features} features, the network gives {dim.dim_value}.")

    for node in graph.node:  # rename the image input everywhere it is read
        for index, name in enumerate(node.input):
            if name == BACKBONE_INPUT:
                node.input[index] = input_name
    graph.input[0].name = input_name
    nodes, inits = _head_nodes(predictor, BACKBONE_OUTPUT, output_name)
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    n_classes = len(predictor.classes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_classes]))
    graph.name = "sortlab_features_then_linear"
    onnx.checker.check_model(model)
    return model.SerializeToString()
