"""Which graph of a bundle a backend runs, and at which arithmetic precision (`edge_ad.load(precision=)`).

- None: the backend's own default: the FP32 graph on ONNX Runtime and torch, the mixed FP16 graph on
  TensorRT, and OpenVINO's default inference-precision hint (bfloat16 on CPUs that have it: not FP32,
  so it is recorded beside every timing).
- "fp32": the FP32 graph computed in FP32 (OpenVINO's f32 hint).
- "bf16", "fp16": OpenVINO's inference-precision hint on the FP32 graph (other backends refuse).
- "int8": the bundle's Q/DQ INT8 graph (`edge-ad export --int8`, listed in meta.json's `int8`), on
  ONNX Runtime, OpenVINO (its float parts at the f32 hint), and TensorRT's explicit quantization
  (unverified there).
- "int8+bf16": the INT8 graph with its float parts at OpenVINO's bf16 hint (OpenVINO on CPUs that
  compute in bf16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_ad.bundle import BundleError

if TYPE_CHECKING:
    from pathlib import Path

    from edge_ad.bundle import Bundle

__all__ = ["INT8", "PRECISIONS", "check_precision", "graph_for"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8+bf16")
INT8 = ("int8", "int8+bf16")              # the precisions that run the INT8 graph


def check_precision(precision: str | None, backend: str, allowed: tuple[str, ...]) -> None:
    """A ValueError that says what to use when `backend` cannot run `precision` (None always passes)."""
    if precision is None:
        return
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (or left out), got {precision!r}")
    if precision not in allowed:
        raise ValueError(f"backend {backend!r} runs precision {' or '.join(allowed)}, not {precision!r}: leave "
                         "precision out for its default, or pick a backend that takes it (bf16/fp16 hints: "
                         "backend='openvino')")


def graph_for(bundle: "Bundle", graph: str, precision: str | None) -> "Path":
    """The file to run for the bundle's FP32 `graph` ("model.onnx", or a diffusion part's graph): its INT8
    twin for precision "int8" or "int8+bf16", else the FP32 graph itself. A bundle with no INT8 graph at all is a
    BundleError; a part the export left in FP32 (its twin not listed) runs in FP32."""
    if precision not in INT8:
        return bundle.file(graph)
    twins = bundle.meta.get("int8") or {}
    if not twins:
        raise BundleError(f"{bundle.path} has no INT8 graph for {graph}: re-export it with `edge-ad export RUN "
                          f"--int8` (calibrated on the run's good images), or load it without precision={precision!r}")
    return bundle.file(twins.get(graph, graph))
