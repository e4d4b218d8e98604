"""`edge-ad calibrate`: set a bundle's image threshold on the line's own images.

The bundle runs (a Detector on the chosen backend, image scores only) on a folder of good images and,
optionally, one of defective images; a rule of edge_ad.runtime.threshold_rules picks the threshold;
the new calibration is written into meta.json atomically (edge_ad.bundle.replace_calibration), the
previous one appended to meta.json's calibration_history.

The pixel threshold and the heat-map normalization are kept as the bundle has them. They come from
training (the largest value of the validation maps, normalized around the median pixel): they shape
the heat map and the mask, not the verdict, and their rule, a maximum over every normal pixel, would
only move up with a larger line set of images (and the maps of every image would have to be kept,
where the verdict needs one score per image). Retrain to change them.

Calibrate with the same --roi/--tiles as the stream will use: they change the scores. The view is
recorded in the calibration (`view`), and a Detector warns once when it is used with another.

The calibration is written only into the model it was scored with: an export that replaced the model
meanwhile makes the write refuse (run calibrate again). A bundle that cannot be written is refused
before any image is scored (unless it is a dry run).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edge_ad.bundle import NAME, check_writable, read_bundle, replace_calibration
from edge_ad.runtime.calibrated_view import view_record
from edge_ad.imaging import IMAGE_SUFFIXES
from edge_ad.metrics import operating_point
from edge_ad.runtime.threshold_rules import Choice, check_request, choose
from edge_ad.runtime.tiling import DEFAULT_OVERLAP

DEFAULT_BATCH = 8                  # images per inference when the backend takes any batch


@dataclass(frozen=True)
class Outcome:
    """What a calibration did: the rule's choice, the scores it saw and the resulting calibration."""

    choice: Choice
    previous_threshold: float
    good_scores: np.ndarray
    bad_scores: np.ndarray
    calibration: dict
    written: bool

    @property
    def point(self) -> dict:
        return self.calibration["operating_point"]


def image_files(folder: str | Path, what: str) -> list[Path]:
    """The image files under `folder` (any depth, hidden entries skipped), sorted; a ValueError that
    names the folder when it is missing, unreadable, not a folder or holds no image."""
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"{what} folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{what} {folder} is not a folder; give a folder of images")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise ValueError(f"{what} folder {folder} cannot be read (permission denied)")
    found = []
    for root, dirs, files in os.walk(folder, onerror=_refuse_walk):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise ValueError(f"{what} folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(found)


def _refuse_walk(err: OSError) -> None:
    raise ValueError(f"cannot read the folder {err.filename}: {err.strerror or err}")


def score_files(detector, paths: list[Path], *, batch: int | None = None, roi=None, tiles=None,
                overlap: float = DEFAULT_OVERLAP) -> np.ndarray:
    """The image scores of `paths` (read from disk, in batches the backend takes)."""
    size = batch or detector.max_batch or DEFAULT_BATCH
    parts = [detector.scores(paths[i:i + size], roi=roi, tiles=tiles, overlap=overlap)
             for i in range(0, len(paths), size)]
    return np.concatenate(parts).astype(np.float64)


def recalibrate(bundle: str | Path, good: str | Path, bad: str | Path | None = None, *, method: str = "mean+3std",
                target: float | None = None, backend: str = "auto", batch: int | None = None, roi=None, tiles=None,
                overlap: float = DEFAULT_OVERLAP, write: bool = True,
                echo: Callable[[str], None] | None = None) -> Outcome:
    """Score the images, pick the threshold by `method` ("mean+3std", "target-fpr", "target-recall",
    "f1-max"; see threshold_rules) and, with `write`, make it the bundle's calibration. Bad inputs
    (folders, flags, images) raise ValueError before anything is written."""
    import edge_ad
    from edge_ad.runtime.registry import resolve

    echo = echo or (lambda line: None)
    check_request(method, target, bad is not None)          # flags, folders, then the bundle and the images
    good_files = image_files(good, "--good")
    bad_files = image_files(bad, "--bad") if bad is not None else []
    _refuse_shared(good_files, bad_files)
    view = view_record(roi, tiles, overlap)
    if write:
        check_writable(bundle)
    # auto on a CPU box (OpenVINO) may pick bf16 or INT8 by timing; a threshold is fitted on the FP32 scores
    # the bundle's verdict set holds, so that later loads check their precision against the same reference
    precision = "fp32" if backend == "auto" and resolve("auto").name == "openvino" else None
    with edge_ad.load(bundle, backend=backend, precision=precision) as detector:
        detector.view_warning = False                        # this calibration sets the view
        echo(f"scoring {len(good_files)} good images" + (f" and {len(bad_files)} defective ones" if bad_files else "")
             + f" on {detector.backend.name}")
        views = {"batch": batch, "roi": roi, "tiles": tiles, "overlap": overlap}
        good_scores = score_files(detector, good_files, **views)
        bad_scores = score_files(detector, bad_files, **views) if bad_files else np.zeros(0)
        previous, backend_name = detector.calibrated_threshold, detector.backend.name
        old = dict(detector.bundle.meta["calibration"])
        scored_files = detector.bundle.meta["files"]         # the model these scores belong to
    choice = choose(method, good_scores, bad_scores if bad_files else None, target)
    calibration = {**_calibration(choice, old, good_scores, bad_scores, backend_name), "view": view}
    if write:
        replace_calibration(bundle, calibration, replaced_at=calibration["calibrated_at"], scored_files=scored_files)
        read_bundle(bundle)                                  # what was written reads back, checksums verified
    return Outcome(choice, previous, good_scores, bad_scores, calibration, write)


def _refuse_shared(good: list[Path], bad: list[Path]) -> None:
    """An image in both folders (--bad test/ holding test/good, say) would be counted both ways."""
    shared = sorted({p.resolve() for p in good} & {p.resolve() for p in bad})
    if shared:
        raise ValueError(f"{len(shared)} image(s) are under both --good and --bad (e.g. {shared[0]}): give folders "
                         "that do not overlap (--bad must hold only defective images)")


def _calibration(choice: Choice, old: dict, good: np.ndarray, bad: np.ndarray, backend: str) -> dict:
    """The bundle calibration for a choice: the new image threshold and normalization, the old pixel
    ones, and how it was made (method, target, counts, backend, time, operating point here)."""
    scores = np.concatenate([good, bad])
    labels = np.r_[np.zeros(len(good), np.int64), np.ones(len(bad), np.int64)]
    cal = {"image_threshold": choice.threshold, "image_norm": list(choice.image_norm),
           "pixel_threshold": old["pixel_threshold"], "pixel_norm": list(old["pixel_norm"]),
           "normal_images": len(good), "method": choice.method, "target": choice.target,
           "good_images": len(good), "bad_images": len(bad),
           "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "operating_point": operating_point(scores, labels, choice.threshold)}
    if NAME.fullmatch(backend):
        cal["backend"] = backend
    return cal


def summary_lines(outcome: Outcome, bundle: str | Path) -> list[str]:
    """What a person needs to read after a calibration: the threshold, the operating point reached on
    these images (with counts), and where it went."""
    c, point = outcome.choice, outcome.point
    n_good, n_bad = len(outcome.good_scores), len(outcome.bad_scores)
    how = c.method + (f" {c.target:g}" if c.target is not None else "")
    lines = [f"image threshold {c.threshold:.6g} (was {outcome.previous_threshold:.6g}) by {how} on {n_good} good"
             + (f" and {n_bad} defective" if n_bad else "") + " images"]
    flagged_good = int((outcome.good_scores > c.threshold).sum())
    reached = [f"false-positive rate {_rate(point['false_positive_rate'])} ({flagged_good} of {n_good} good flagged)"]
    if n_bad:
        flagged_bad = int((outcome.bad_scores > c.threshold).sum())
        reached += [f"recall {_rate(point['recall'])} ({flagged_bad} of {n_bad} defective flagged)",
                    f"precision {_rate(point['precision'])}", f"F1 {_rate(point['f1'])}"]
        if point["f1_max"] is not None:
            reached.append(f"F1-max {point['f1_max']:.4f} at threshold {point['f1_max_threshold']:.6g}")
    lines.append("on these images: " + ", ".join(reached))
    lines.append("pixel threshold and heat-map normalization: the bundle's, unchanged")
    lines.append(f"wrote the calibration into {bundle} (the previous one is in meta.json's calibration_history)"
                 if outcome.written else f"dry run: {bundle} is unchanged")
    return lines


def _rate(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
