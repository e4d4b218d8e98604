"""Threshold and score normalization from normal images alone (a validation split of train/good).

Image: threshold = mean + 3 std of the validation scores; normalized score = (s - mean) / (2 (thr -
mean)), so the threshold maps to 0.5 (clipped to [0, 1]). Pixels: threshold = the largest value of
the validation maps (no normal pixel is flagged), normalized the same way around the median pixel.

Nothing non-finite gets in: NaN or infinite scores or maps (a diverged model) and a calibration whose
numbers are not finite or whose normalization has no width are refused with `CalibrationError`,
naming the field, here and wherever a calibration is read back (`Calibration.from_dict`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """A calibration that cannot be used (non-finite, degenerate or malformed); names the field."""


@dataclass(frozen=True)
class Calibration:
    image_threshold: float
    image_norm: tuple[float, float]      # (lo, hi): (s - lo) / (hi - lo), threshold -> 0.5
    pixel_threshold: float
    pixel_norm: tuple[float, float]
    normal_images: int

    def validate(self, where: str = "calibration") -> None:
        """Every number finite, each normalization (lo, hi) with lo < hi, at least 2 normal images."""
        for name in ("image_threshold", "pixel_threshold"):
            _finite(f"{where}.{name}", getattr(self, name))
        for name in ("image_norm", "pixel_norm"):
            lo, hi = getattr(self, name)
            _finite(f"{where}.{name}[0]", lo)
            _finite(f"{where}.{name}[1]", hi)
            if not hi - lo > 0 or not math.isfinite(hi - lo):
                raise CalibrationError(f"{where}.{name} is ({lo}, {hi}): the normalization needs lo < hi "
                                       "with a finite width; the validation scores are degenerate, "
                                       "recalibrate (retrain) the model")
        if self.normal_images < 2:
            raise CalibrationError(f"{where}.normal_images is {self.normal_images}; a calibration needs at "
                                   "least 2 normal validation images")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "calibration") -> "Calibration":
        """Read back and check a stored calibration; any missing, mistyped or non-finite field is a
        CalibrationError naming it."""
        if not isinstance(d, dict):
            raise CalibrationError(f"{where} must be an object with image_threshold, image_norm, "
                                   f"pixel_threshold, pixel_norm and normal_images, got {type(d).__name__}")
        cal = cls(_number(d, "image_threshold", where), _pair(d, "image_norm", where),
                  _number(d, "pixel_threshold", where), _pair(d, "pixel_norm", where),
                  _integer(d, "normal_images", where))
        cal.validate(where)
        return cal


def _finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise CalibrationError(f"{name} is {value!r}, not a finite number: the calibration is broken "
                               "(NaN/inf scores from the model, or an edited file); recalibrate (retrain)")


def _number(d: dict, key: str, where: str) -> float:
    if key not in d:
        raise CalibrationError(f"{where}.{key} is missing")
    return _value(f"{where}.{key}", d[key])


def _value(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationError(f"{name} must be a number, got {value!r}")
    _finite(name, float(value))
    return float(value)


def _pair(d: dict, key: str, where: str) -> tuple[float, float]:
    if key not in d:
        raise CalibrationError(f"{where}.{key} is missing")
    value = d[key]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise CalibrationError(f"{where}.{key} must be a pair [lo, hi], got {value!r}")
    return _value(f"{where}.{key}[0]", value[0]), _value(f"{where}.{key}[1]", value[1])


def _integer(d: dict, key: str, where: str) -> int:
    value = _number(d, key, where)
    if value != int(value):
        raise CalibrationError(f"{where}.{key} must be a whole number, got {d[key]!r}")
    return int(value)


def calibrate(scores: np.ndarray, maps: np.ndarray) -> Calibration:
    """From image scores (N) and full-size maps (N x H x W) of normal validation images."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    maps = np.asarray(maps)
    if len(scores) < 2:
        raise CalibrationError("calibration needs at least 2 normal validation images")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise CalibrationError(f"calibration: the image scores of {bad.size} of {len(scores)} validation images "
                               f"are not finite (validation images {_list(bad)}: {_list(scores[bad])}); the model "
                               "outputs NaN/inf, so no threshold can be set. Training diverged: lower the "
                               "learning rate or the epochs, check the training images, and retrain")
    if maps.size == 0:
        raise CalibrationError("calibration: the validation maps are empty")
    finite_maps = np.isfinite(maps.reshape(len(maps), -1)).all(axis=1) if maps.ndim >= 2 else np.isfinite(maps)
    bad = np.flatnonzero(~finite_maps)
    if bad.size:
        raise CalibrationError(f"calibration: the pixel maps of {bad.size} of {len(maps)} validation images contain "
                               f"NaN/inf (validation images {_list(bad)}); the model's output is not finite, so no "
                               "pixel threshold can be set. Retrain (lower the learning rate, check the images)")
    with np.errstate(over="ignore", invalid="ignore"):         # an overflow is refused below, by name
        mean, std = float(scores.mean()), float(scores.std(ddof=1))
    if std == 0.0:
        log.warning("calibration: all %d validation images have the same score %g; the threshold sits just above "
                    "it (the model may not respond to its input)", len(scores), mean)
    with np.errstate(over="ignore", invalid="ignore"):
        threshold = mean + 3.0 * max(std, 1e-6 * max(abs(mean), 1.0))
        pixel_lo = float(np.median(maps))
        pixel_threshold = float(maps.max())
        pixel_span = max(pixel_threshold - pixel_lo, 1e-6 * max(abs(pixel_lo), 1.0))
        cal = Calibration(threshold, (mean, mean + 2 * (threshold - mean)), pixel_threshold,
                          (pixel_lo, pixel_lo + 2 * pixel_span), len(scores))
    cal.validate()
    return cal


def _list(values, limit: int = 8) -> str:
    values = list(np.asarray(values).tolist())
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")
