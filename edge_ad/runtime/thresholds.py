"""The image threshold a Detector uses: the bundle's calibrated one, a raw threshold, or a sensitivity.

A part is flagged when its image score is above the threshold in use (`score > threshold`).

- `threshold=T`: T in the model's raw score units (what Result.score reports), any finite number.
- `sensitivity=S`, 0..1, higher flags more: T = calibrated + (0.5 - S) * (hi - lo), where (lo, hi) is
  the bundle's `image_norm`. For every bundle edge_ad calibrates, the calibrated threshold sits at the
  middle of (lo, hi), so on the calibrated normalized score n = (score - lo) / (hi - lo) a part is
  flagged when n > 1 - S: S = 0.5 is the calibrated threshold exactly, S = 1 flags every part above the
  middle of the good parts' scores (n > 0), S = 0 only those beyond the top of the normalization (n > 1,
  6 standard deviations of the good scores above their mean for a mean + 3 std calibration).
- neither: the calibrated threshold.

The normalized score follows the threshold in use: the normalization keeps its width and is shifted by
(threshold in use - calibrated threshold), so `normalized_score` at the threshold in use is what the
calibrated threshold's was (0.5 for every bundle edge_ad calibrates) and a part is flagged exactly when
its normalized score is above it (up to the clipping to [0, 1]; a threshold so far out that the width
is lost in rounding, such as 1e30, gets the narrowest normalization around it: 0 below, 1 above). The pixel threshold (the mask) is the
bundle's whatever the image threshold.
"""

from __future__ import annotations

import math
import sys

__all__ = ["check_sensitivity", "check_threshold", "norm_for", "threshold_in_use"]


def check_threshold(value) -> float:
    """A raw threshold: a finite real number (not a bool), else a ValueError saying what to give."""
    if isinstance(value, bool) or not _real(value) or not math.isfinite(float(value)):
        raise ValueError(f"threshold must be a finite number in the model's score units (see Result.score), "
                         f"got {value!r}")
    return float(value)


def check_sensitivity(value) -> float:
    """A sensitivity: a number from 0 to 1 (0.5 = the calibrated threshold), else a ValueError."""
    if isinstance(value, bool) or not _real(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"sensitivity must be a number from 0 to 1 (0.5 = the calibrated threshold, higher flags "
                         f"more), got {value!r}")
    return float(value)


def threshold_in_use(calibrated: float, norm: tuple[float, float], threshold=None, sensitivity=None) -> float:
    """The raw threshold for a `threshold` or a `sensitivity` (at most one; neither: `calibrated`),
    given the bundle's calibrated threshold and image normalization (lo, hi)."""
    if threshold is not None and sensitivity is not None:
        raise ValueError(f"give a threshold or a sensitivity, not both (got threshold={threshold!r}, "
                         f"sensitivity={sensitivity!r})")
    if threshold is not None:
        return check_threshold(threshold)
    if sensitivity is not None:
        lo, hi = norm
        return float(calibrated + (0.5 - check_sensitivity(sensitivity)) * (hi - lo))
    return float(calibrated)


def norm_for(threshold: float, calibrated: float, norm: tuple[float, float]) -> tuple[float, float]:
    """The image normalization for the threshold in use: the calibrated one shifted by (threshold -
    calibrated), the same width, so the threshold in use maps where the calibrated one did."""
    lo, hi = norm
    if threshold == calibrated:
        return float(lo), float(hi)
    shift = threshold - calibrated
    lo, hi = float(lo + shift), float(hi + shift)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        # a threshold so far out (1e30) that the width is lost: the narrowest normalization around it,
        # so a part's normalized score is 0 or 1 by its side of the threshold (never a division by 0)
        big = sys.float_info.max
        lo = max(math.nextafter(threshold, -math.inf), -big)
        hi = min(math.nextafter(threshold, math.inf), big)
        lo = min(lo, math.nextafter(hi, -math.inf))
    return lo, hi


def _real(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes, complex))
