"""PyTorch modules -> ONNX graphs with a dynamic batch axis, checked with onnx.checker.

`export_onnx` writes the single-graph models' graph: uint8 NHWC RGB frames in, the raw anomaly map
out. `export_graph` is the general form, used for each part of the diffusion models.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 17                 # LayerNormalization native; inside what the TensorRT ONNX parser supports
INPUT = "images"
OUTPUT = "raw_map"


def export_graph(module: nn.Module, path: Path, inputs: dict[str, torch.Tensor], outputs: list[str], *,
                 batched: set[str] | None = None, opset: int = OPSET) -> None:
    """Export `module(*inputs.values())` with the given input/output names; axis 0 of every output and
    of the inputs in `batched` (default: all) is the dynamic `batch` axis.

    Uses torch's TorchScript-based exporter (dynamo=False): it handles timm's TF-"same" padding and
    the models here without extra dependencies.
    """
    module = module.eval()
    batched = set(inputs) if batched is None else batched
    axes = {name: {0: "batch"} for name in [*batched, *outputs]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the deprecation notice of the TorchScript exporter
        torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=False, opset_version=opset,
                          input_names=list(inputs), output_names=outputs, do_constant_folding=True,
                          dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(str(path)))


def export_onnx(model: nn.Module, path: Path, height: int, width: int, *, opset: int = OPSET,
                extras: dict[str, torch.Tensor] | None = None) -> None:
    """Export `model` (uint8 N x H x W x 3 in, N x 1 x h x w out) with a dynamic batch axis.

    `extras` are further inputs of fixed shape after the images (SPR's noise), named by their keys.
    """
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    export_graph(model, path, {INPUT: example, **(extras or {})}, [OUTPUT], batched={INPUT}, opset=opset)
