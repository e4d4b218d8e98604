"""The bundle's verdict set (`verdicts.npz`): images the run judged, with the FP32 graph's scores, so the
target can check a reduced precision before it runs one.

OpenVINO's default bfloat16 hint and the INT8 graph change scores by amounts that depend on the CPU they run
on (AVX512-BF16, AMX, VNNI), which the export machine may not have; `backend="auto"`
(edge_ad/runtime/auto_cpu.py) therefore runs each reduced precision it considers on these images at load
and keeps it only when no verdict changes at the calibrated threshold. The images are the export's check
images (the run's validation images, test split and good training images not calibrated on: the INT8
check's), prepared (uint8 at the model's input size), with their labels (0 good, 1 defective). COUNT of
them are kept, the ones a precision change could flip or reorder: the COUNT / 2 of each label whose FP32
scores lie nearest the calibrated threshold, the rest filled with the nearest of either, so that the set
holds both labels whenever the run has both: the target also compares the set's image AUROC (a reduced
precision kept SimpleNet's verdicts on a synthetic category and lost 0.14 of its AUROC). At 288 px, 64
images are 16 MB before compression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .int8 import graph_scores

__all__ = ["COUNT", "VERDICT_FILE", "nearest_of_each", "write_verdict_set"]

COUNT = 64
VERDICT_FILE = "verdicts.npz"


def write_verdict_set(folder: Path, graph_file: str, input_name: str, images: np.ndarray, labels: np.ndarray,
                      extras: dict[str, np.ndarray], spec, threshold: float) -> dict:
    """Score `images` (labels: 0 good, 1 defective) with the FP32 graph (ONNX Runtime, CPU), keep the COUNT
    nearest the threshold and write them with their labels and scores to `folder/verdicts.npz`; returns
    meta.json's `verdict_set` entry."""
    _, scores = graph_scores(folder / graph_file, input_name, images, extras, spec)
    keep = nearest_of_each(np.abs(scores - threshold), np.asarray(labels), COUNT)
    np.savez_compressed(folder / VERDICT_FILE, images=images[keep], scores=scores[keep].astype(np.float64),
                        labels=np.asarray(labels)[keep].astype(np.int8))
    flagged = int(np.sum(scores[keep] > threshold))
    return {"file": VERDICT_FILE, "images": int(len(keep)), "of": int(len(images)), "flagged": flagged,
            "defective": int(np.sum(np.asarray(labels)[keep] > 0)),
            "threshold": float(threshold), "nearest_margin": float(np.abs(scores[keep] - threshold).min()),
            "picked": f"the {COUNT} check images whose FP32 scores lie nearest the calibrated threshold"}


def nearest_of_each(distance: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of up to `count` items: the `count` // 2 of each label with the smallest `distance`,
    then the nearest of the others until `count`."""
    order = np.argsort(distance, kind="stable")
    chosen = [i for label in (0, 1) for i in order[labels[order] == label][:count // 2]]
    taken = set(chosen)
    chosen += [i for i in order if i not in taken][:count - len(chosen)]
    return np.sort(np.asarray(chosen, dtype=np.int64))
