"""Writing a torch network as ONNX, and running it in torch for the checks that compare the ONNX copy
with torch (the backbone copies of engine.features.onnx_backend, the bundles of engine.ship)."""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
import torch
from torch import nn


def write_onnx(
    network: nn.Module, sample: np.ndarray, destination: str | os.PathLike | BinaryIO,
    input_name: str, output_name: str, opset: int,
) -> None:
    """Trace ``network`` on ``sample`` (N, 3, H, W) and write it as ONNX with a dynamic batch dimension
    (the legacy exporter: it needs no onnxscript). Leaves the network in eval mode."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter; callers verify the result
        torch.onnx.export(
            network, (torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)),), destination,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    network.eval()  # the exporter may switch training mode around


def to_onnx(network: nn.Module, input_size: int, input_name: str, output_name: str, opset: int) -> bytes:
    """``network`` as ONNX bytes, traced on a zero batch of ``input_size`` square images."""
    buffer = io.BytesIO()
    write_onnx(network, np.zeros((2, 3, input_size, input_size), dtype=np.float32), buffer,
               input_name, output_name, opset)
    return buffer.getvalue()


def run_network(network: nn.Module, batch: np.ndarray) -> np.ndarray:
    """The network's output for a float32 batch, in eval mode on the CPU: the reference an export is checked against."""
    network.eval()
    with torch.inference_mode():
        return network(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()
