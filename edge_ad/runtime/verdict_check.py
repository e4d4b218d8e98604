"""Whether a backend keeps the bundle's verdicts: its scores on the bundle's verdict set (`verdicts.npz`,
written by the export: images the run judged, nearest the calibrated threshold, with their labels and the
FP32 graph's scores) against the FP32 ones: no verdict may change at the bundle's calibrated threshold,
and the set's image AUROC may not fall by more than AUROC_DROP (verdicts alone let a bf16 + INT8
configuration of SimpleNet keep every verdict and lose 0.14 of a synthetic category's test AUROC).

`backend="auto"` (edge_ad/runtime/auto_cpu.py) runs a reduced precision (OpenVINO's bf16 hint, the INT8
graph) only when this check passes on the machine it runs on: the same graph computes differently on
CPUs with and without AVX512-BF16, AMX or VNNI.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edge_ad.bundle import Bundle, BundleError
from edge_ad.metrics import image_auroc
from edge_ad.postprocess import HeatmapSpec
from edge_ad.runtime.backend import Backend

__all__ = ["VerdictSet", "read_verdict_set", "verdicts_kept"]

BATCH = 8
AUROC_DROP = 0.005          # the most a reduced precision may lower the set's image AUROC


class VerdictSet(NamedTuple):
    images: np.ndarray          # N x H x W x 3 uint8, prepared
    scores: np.ndarray          # N float64: the FP32 graph's image scores
    threshold: float            # the calibrated image threshold
    labels: np.ndarray | None = None     # N int8, 0 good / 1 defective (None: not recorded)


def read_verdict_set(bundle: Bundle) -> VerdictSet | None:
    """The bundle's verdict set, None when it has none (exported without the run's data, or before it
    existed); a BundleError when the file does not hold what meta.json says."""
    entry = bundle.meta.get("verdict_set")
    if not isinstance(entry, dict):
        return None
    path = bundle.file(str(entry.get("file", "")))
    try:
        with np.load(path, allow_pickle=False) as data:
            images, scores = data["images"], data["scores"]
            labels = data["labels"] if "labels" in data.files else None
    except (OSError, KeyError, ValueError) as err:
        raise BundleError(f"{path} cannot be read as the bundle's verdict set ({err}); re-export the bundle") from None
    h, w = bundle.meta["input"]["height"], bundle.meta["input"]["width"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3) or len(images) == 0:
        raise BundleError(f"{path}: images must be N x {h} x {w} x 3 uint8, got {images.shape} {images.dtype}; "
                          "re-export the bundle")
    if scores.shape != (len(images),) or not np.isfinite(scores).all():
        raise BundleError(f"{path}: scores must be {len(images)} finite numbers; re-export the bundle")
    if labels is not None and (labels.shape != (len(images),) or not np.isin(labels, (0, 1)).all()):
        raise BundleError(f"{path}: labels must be {len(images)} zeros and ones; re-export the bundle")
    return VerdictSet(images, scores.astype(np.float64), float(bundle.meta["calibration"]["image_threshold"]), labels)


def verdicts_kept(backend: Backend, spec: HeatmapSpec, check: VerdictSet) -> dict:
    """The backend's scores on the verdict set against the FP32 ones: {"kept": every score finite, no
    verdict changed and the set's AUROC (when it holds both classes) not lower by more than AUROC_DROP,
    "flips", "max_abs_diff", "auroc_fp32", "auroc"}."""
    raw = np.concatenate([np.asarray(backend.infer(check.images[i:i + BATCH]), np.float32)
                          for i in range(0, len(check.images), BATCH)])
    scores = np.asarray(spec.apply(raw)[1], np.float64)
    finite = bool(np.isfinite(scores).all())
    flips = int(np.sum((scores > check.threshold) != (check.scores > check.threshold))) if finite else len(scores)
    both = check.labels is not None and 0 < int(check.labels.sum()) < len(check.labels)
    before = image_auroc(check.labels, check.scores) if both else None
    after = image_auroc(check.labels, scores) if both and finite else None
    auroc_ok = before is None or after is not None and after >= before - AUROC_DROP
    return {"kept": finite and flips == 0 and auroc_ok, "flips": flips,
            "max_abs_diff": float(np.abs(scores - check.scores).max()) if finite else None,
            "auroc_fp32": before, "auroc": after}
