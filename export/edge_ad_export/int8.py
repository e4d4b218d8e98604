"""The INT8 graph of a single-graph bundle (`edge-ad export RUN --int8`): explicit Q/DQ, checked on verdicts.

Why this tool: NVIDIA Model Optimizer's ONNX PTQ is the first choice for TensorRT, but its `onnx` extra
pins onnx 1.21 and onnxruntime-gpu 1.24 (this project runs onnx 1.23 / onnxruntime 1.31) and pulls
cupy; ONNX Runtime's static quantization is already installed wherever the export runs, writes the same
explicit QuantizeLinear/DequantizeLinear form that TensorRT's explicit quantization and OpenVINO read,
and was used here. The ModelOpt route was not measured in this version.

1. Calibration: the graph runs on ONNX Runtime over the run's good training images (up to 64), one at
   a time, recording activation ranges (MinMax).
2. Q/DQ: Conv, MatMul and Gemm of the pretrained backbone only (`backbone_nodes`), activations uint8 asymmetric, weights int8 per output channel
   (U8S8, the fast form on x86 CPUs with VNNI). The shape arithmetic and the post-processing ops stay
   FP32: quantizing every op let ONNX Runtime 1.31 shrink SimpleNet's 8 x 8 map to 7 x 7 ("same"-padding
   maths quantized).
3. Check: on the check images (the run's test split where it has one, its validation images, good
   training images not used for calibration) the INT8 graph must give finite maps of the FP32 graph's
   shape, and the same verdict as FP32 on every image at the calibrated image threshold; else the export
   stops (ParityError) and no bundle is written. Relative error and score order are reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .parity import ParityError

__all__ = ["QUANTIZED_OPS", "backbone_nodes", "int8_name", "quantize_int8", "check_int8", "write_int8"]

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_IMAGES = 64


def int8_name(graph_file: str) -> str:
    """model.onnx -> model.int8.onnx."""
    return graph_file[:-len(".onnx")] + ".int8.onnx"


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over prepared images, one image per feed."""

    def __init__(self, name: str, images: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        self._feeds = iter([{name: images[i:i + 1], **extras} for i in range(len(images))])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)

    def rewind(self) -> None:              # the MinMax calibrator reads once; here for the protocol's sake
        pass


def backbone_nodes(model) -> list[str]:
    """The quantizable nodes of the model's pretrained feature extractor (ONNX names under `/backbone/`), or
    [] where the model has none (then every Conv/MatMul/Gemm is quantized). The heads after it, which turn
    features into the anomaly score, stay FP32: on SimpleNet quantizing its discriminator too moved every
    test score up and flipped 14 of 45 verdicts; the backbone alone is where the arithmetic is."""
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and "/backbone/" in n.name]


def quantize_int8(src: Path, dst: Path, input_name: str, images: np.ndarray, extras: dict[str, np.ndarray]) -> dict:
    """Write the Q/DQ INT8 graph of `src` to `dst`, calibrated on `images`; returns what was done."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    pre = dst.with_name(dst.name + ".pre.onnx")
    nodes = backbone_nodes(onnx.load(str(src)))
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), _Reader(input_name, images, extras), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=nodes or None,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        pre.unlink(missing_ok=True)
        for leftover in dst.parent.glob("augmented_model*.onnx"):
            leftover.unlink()
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "activations": "uint8 asymmetric",
            "weights": "int8 per channel", "ops": list(QUANTIZED_OPS), "calibration": "MinMax",
            "scope": f"the backbone's {len(nodes)} nodes" if nodes else "every node of those types",
            "calibration_images": int(len(images)), "quantize_nodes": ops.count("QuantizeLinear"),
            "dequantize_nodes": ops.count("DequantizeLinear")}


def _image_scores(session, input_name: str, images: np.ndarray, extras: dict, spec) -> tuple[np.ndarray, np.ndarray]:
    """(raw maps, image scores as the runtime computes them: the bundle's heat-map post-processing)."""
    raw = np.concatenate([session.run(None, {input_name: images[i:i + 8], **extras})[0]
                          for i in range(0, len(images), 8)])
    _, scores = spec.apply(raw.astype(np.float32))
    return raw, np.asarray(scores, dtype=np.float64)


def check_int8(fp32: Path, int8: Path, input_name: str, images: np.ndarray, extras: dict, spec,
               threshold: float) -> dict:
    """INT8 vs FP32 on ONNX Runtime's CPU provider over `images`: shape, finiteness, error, score order and
    the verdicts at `threshold` (score > threshold = anomalous)."""
    import onnxruntime as ort

    runs = [_image_scores(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]), input_name, images,
                          extras, spec) for p in (fp32, int8)]
    (raw32, s32), (raw8, s8) = runs
    flips = int(np.sum((s32 > threshold) != (s8 > threshold))) if raw8.shape == raw32.shape else len(images)
    spread = float(np.ptp(s32)) or 1.0
    order = np.argsort(s32, kind="stable"), np.argsort(s8, kind="stable")
    return {"images": int(len(images)), "shape_same": raw8.shape == raw32.shape,
            "finite": bool(np.isfinite(raw8).all()),
            "map_relative_max_error": float(np.abs(raw8 - raw32).max() / (np.abs(raw32).max() or 1.0))
            if raw8.shape == raw32.shape else None,
            "score_max_abs_diff": float(np.abs(s8 - s32).max()), "score_spread": spread,
            "scores_rank_same": bool(np.array_equal(*order)), "threshold": float(threshold),
            "verdict_flips": flips, "flagged_fp32": int(np.sum(s32 > threshold)),
            "flagged_int8": int(np.sum(s8 > threshold))}


def write_int8(folder: Path, graph_file: str, input_name: str, calibration_images: np.ndarray,
               check_images: np.ndarray, extras: dict[str, np.ndarray], spec, threshold: float) -> dict:
    """Write and check `folder/<graph>.int8.onnx`; returns the report, or raises ParityError (the export then
    writes no bundle) when the INT8 graph is not finite, changes the map's shape or changes a verdict."""
    start = time.perf_counter()
    src, dst = folder / graph_file, folder / int8_name(graph_file)
    report = quantize_int8(src, dst, input_name, calibration_images[:CALIBRATION_IMAGES], extras)
    report["check"] = check = check_int8(src, dst, input_name, check_images, extras, spec, threshold)
    report["seconds"] = round(time.perf_counter() - start, 2)
    if not check["shape_same"] or not check["finite"]:
        raise ParityError(f"{dst.name}: the INT8 graph gives {'non-finite maps' if check['shape_same'] else 'maps of another shape'}"
                          " than the FP32 graph; export without --int8")
    if check["verdict_flips"]:
        raise ParityError(f"{dst.name}: the INT8 graph changes {check['verdict_flips']} of {check['images']} verdicts "
                          f"at the calibrated threshold {threshold:.4g} (FP32 flags {check['flagged_fp32']}, INT8 "
                          f"{check['flagged_int8']}); export without --int8, or with more good training images "
                          "to calibrate on")
    return report
