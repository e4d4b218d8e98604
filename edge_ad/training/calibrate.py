"""Threshold and score normalization from normal images alone (a validation split of train/good).

Image: threshold = mean + 3 std of the validation scores; normalized score = (s - mean) / (2 (thr -
mean)), so the threshold maps to 0.5 (clipped to [0, 1]). Pixels: threshold = the largest value of
the validation maps (no normal pixel is flagged), normalized the same way around the median pixel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    image_threshold: float
    image_norm: tuple[float, float]      # (lo, hi): (s - lo) / (hi - lo), threshold -> 0.5
    pixel_threshold: float
    pixel_norm: tuple[float, float]
    normal_images: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(float(d["image_threshold"]), tuple(d["image_norm"]), float(d["pixel_threshold"]),
                   tuple(d["pixel_norm"]), int(d["normal_images"]))


def calibrate(scores: np.ndarray, maps: np.ndarray) -> Calibration:
    """From image scores (N) and full-size maps (N x H x W) of normal validation images."""
    scores = np.asarray(scores, np.float64)
    if len(scores) < 2:
        raise ValueError("calibration needs at least 2 normal validation images")
    mean, std = float(scores.mean()), float(scores.std(ddof=1))
    threshold = mean + 3.0 * max(std, 1e-6 * max(abs(mean), 1.0))
    pixel_lo = float(np.median(maps))
    pixel_threshold = float(maps.max())
    pixel_span = max(pixel_threshold - pixel_lo, 1e-6)
    return Calibration(threshold, (mean, mean + 2 * (threshold - mean)), pixel_threshold,
                       (pixel_lo, pixel_lo + 2 * pixel_span), len(scores))
