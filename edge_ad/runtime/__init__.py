"""The runtime: load a bundle and run it, with no PyTorch anywhere on this path.

backend="auto": TensorRT when it imports and a CUDA GPU is present (not implemented yet: see the
TensorRT issue), else ONNX Runtime with the CUDA provider when it works, else ONNX Runtime on the CPU.
"""

from __future__ import annotations

from pathlib import Path

from edge_ad.bundle import read_bundle
from edge_ad.runtime.detector import Detector
from edge_ad.runtime.result import Result

__all__ = ["Detector", "Result", "load"]


def load(bundle: str | Path, backend: str = "auto", *, color: str = "BGR", threads: int | None = None) -> Detector:
    """Open a bundle (checking its format and checksums) and build a Detector on the chosen backend."""
    b = read_bundle(bundle)
    if backend in ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda"):
        from edge_ad.runtime.onnxruntime import OrtBackend

        device = {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda"}.get(backend, "auto")
        return Detector(b, OrtBackend(b.file("model.onnx"), device=device, threads=threads), color=color)
    raise ValueError(f"unknown backend {backend!r}; use 'auto', 'onnxruntime', 'onnxruntime-cpu' or "
                     "'onnxruntime-cuda' (TensorRT comes with the TensorRT issue)")
