"""The bundle's verdict set (`verdicts.npz`): images the run judged, with the FP32 graph's scores, so the
target can check a reduced precision before it runs one.

OpenVINO's default bfloat16 hint and the INT8 graph change scores by amounts that depend on the CPU they run
on (AVX512-BF16, AMX, VNNI), which the export machine may not have; `backend="auto"`
(edge_ad/runtime/auto_cpu.py) therefore runs each reduced precision it considers on these images at load
and keeps it only when no verdict changes at the calibrated threshold. The images are the export's check
images (the run's validation images, test split and good training images not calibrated on: the INT8
check's), prepared (uint8 at the model's input size), with their labels (0 good, 1 defective); the COUNT
of them whose FP32 scores lie nearest the calibrated threshold are kept, the ones a precision change could
flip or reorder. The target also compares their image AUROC (a reduced precision kept SimpleNet's verdicts
on a synthetic category and lost 0.13 of its AUROC). At 288 px, 64 images are 16 MB before compression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .int8 import graph_scores

__all__ = ["COUNT", "VERDICT_FILE", "write_verdict_set"]

COUNT = 64
VERDICT_FILE = "verdicts.npz"


def write_verdict_set(folder: Path, graph_file: str, input_name: str, images: np.ndarray, labels: np.ndarray,
                      extras: dict[str, np.ndarray], spec, threshold: float) -> dict:
    """Score `images` (labels: 0 good, 1 defective) with the FP32 graph (ONNX Runtime, CPU), keep the COUNT
    nearest the threshold and write them with their labels and scores to `folder/verdicts.npz`; returns
    meta.json's `verdict_set` entry."""
    _, scores = graph_scores(folder / graph_file, input_name, images, extras, spec)
    keep = np.sort(np.argsort(np.abs(scores - threshold), kind="stable")[:COUNT])
    np.savez_compressed(folder / VERDICT_FILE, images=images[keep], scores=scores[keep].astype(np.float64),
                        labels=np.asarray(labels)[keep].astype(np.int8))
    flagged = int(np.sum(scores[keep] > threshold))
    return {"file": VERDICT_FILE, "images": int(len(keep)), "of": int(len(images)), "flagged": flagged,
            "defective": int(np.sum(np.asarray(labels)[keep] > 0)),
            "threshold": float(threshold), "nearest_margin": float(np.abs(scores[keep] - threshold).min()),
            "picked": f"the {COUNT} check images whose FP32 scores lie nearest the calibrated threshold"}
