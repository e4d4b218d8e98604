"""The bundle's verdict set (`verdicts.npz`): images the run judged, with the FP32 graph's scores, so the
target can check a reduced precision before it runs one.

OpenVINO's default bfloat16 hint and the INT8 graph change scores by amounts that depend on the CPU they run
on (AVX512-BF16, AMX, VNNI), which the export machine may not have; `backend="auto"`
(edge_ad/runtime/auto_cpu.py) therefore runs each reduced precision it considers on these images at load
and keeps it only when no verdict changes at the calibrated threshold. The images are the export's check
images (the run's validation images, test split and good training images not calibrated on: the INT8
check's), prepared (uint8 at the model's input size); the COUNT of them whose FP32 scores lie nearest the
calibrated threshold are kept, the ones a precision change could flip. At 288 px that is 8 MB before
compression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .int8 import graph_scores

__all__ = ["COUNT", "VERDICT_FILE", "write_verdict_set"]

COUNT = 32
VERDICT_FILE = "verdicts.npz"


def write_verdict_set(folder: Path, graph_file: str, input_name: str, images: np.ndarray,
                      extras: dict[str, np.ndarray], spec, threshold: float) -> dict:
    """Score `images` with the FP32 graph (ONNX Runtime, CPU), keep the COUNT nearest the threshold and
    write them with their scores to `folder/verdicts.npz`; returns meta.json's `verdict_set` entry."""
    _, scores = graph_scores(folder / graph_file, input_name, images, extras, spec)
    keep = np.sort(np.argsort(np.abs(scores - threshold), kind="stable")[:COUNT])
    np.savez_compressed(folder / VERDICT_FILE, images=images[keep], scores=scores[keep].astype(np.float64))
    flagged = int(np.sum(scores[keep] > threshold))
    return {"file": VERDICT_FILE, "images": int(len(keep)), "of": int(len(images)), "flagged": flagged,
            "threshold": float(threshold), "nearest_margin": float(np.abs(scores[keep] - threshold).min()),
            "picked": f"the {COUNT} check images whose FP32 scores lie nearest the calibrated threshold"}
