"""PyTorch vs ONNX Runtime on the same uint8 images: the exported graph must compute the same maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .onnx import INPUT

TOLERANCE = 1e-4          # max |a - b| / max |b| of the raw maps, FP32


class ParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes; the bundle is not written."""


def relative_max_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def check_parity(reference: nn.Module, onnx_path: Path, images: np.ndarray,
                 extras: dict[str, np.ndarray] | None = None) -> dict:
    """Run both on `images` (N x H x W x 3 uint8) and the graph's other inputs; raise ParityError beyond TOLERANCE."""
    import onnxruntime as ort

    extras = extras or {}
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(images), *map(torch.from_numpy, extras.values())).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT: images, **extras})[0]
    if got.shape != expected.shape:
        raise ParityError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
    error = relative_max_error(got, expected)
    if not error < TOLERANCE:
        raise ParityError(f"ONNX Runtime and PyTorch differ: relative max error {error:.2e} >= {TOLERANCE}")
    return {"relative_max_error": error, "images": len(images)}
