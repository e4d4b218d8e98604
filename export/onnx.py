"""PyTorch model -> ONNX graph that takes uint8 NHWC RGB frames and returns the raw anomaly map."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 17                 # LayerNormalization native; inside what the TensorRT ONNX parser supports
INPUT = "images"
OUTPUT = "raw_map"


def export_onnx(model: nn.Module, path: Path, height: int, width: int, *, opset: int = OPSET) -> None:
    """Export `model` (uint8 N x H x W x 3 in, N x 1 x h x w out) with a dynamic batch axis.

    Uses torch's TorchScript-based exporter (dynamo=False): it handles timm's TF-"same" padding and
    the models here without extra dependencies; the result is checked with onnx.checker.
    """
    model = model.eval()
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the deprecation notice of the TorchScript exporter
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT], do_constant_folding=True,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(path)))
