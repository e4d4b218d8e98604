"""How `edge-ad calibrate` picks the image threshold from the scores of good (and defective) images.

Every rule uses the runtime's decision, a part is flagged when `score > threshold`:

- "mean+3std" (only good images, no target): mean + 3 standard deviations of the good scores, the rule
  training calibrates with (edge_ad.training.calibrate), with the same floor on the deviation.
- "target-fpr" F (F = 0, or MIN_FPR <= F < 1): a threshold whose false-positive rate on the good images
  is at most F, flagging as many as that allows: half-way between the (k+1)-th highest good score,
  k = floor(F * good), and the next higher score of any image (the margin threshold_below gives the
  recall rule, so a slightly different backend does not flip a part). Measuring a rate F needs at
  least ceil(1 / F) good images; with fewer no good image is flagged (the threshold is at or above
  the highest good score) and a warning says so. A rate below MIN_FPR would need over a billion good images and is refused.
- "target-recall" R (0 < R <= 1): the highest threshold that still flags R of the defective images:
  half-way between the ceil(R * bad)-th highest defective score and the next lower score of any image.
- "f1-max": the threshold of the best F1 on good + defective images (metrics.operating_point).

The image normalization is then centred on the threshold with the width training gives it, 6 standard
deviations of the good scores: (threshold - 3 std, threshold + 3 std). For "mean+3std" that is
training's (mean, mean + 6 std); for every rule the threshold maps to a normalized score of 0.5.
NumPy only (the runtime side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edge_ad.metrics import operating_point, threshold_below

METHODS = ("mean+3std", "target-fpr", "target-recall", "f1-max")
MIN_GOOD = 2                       # a standard deviation needs two scores (training's minimum too)
MIN_FPR = 1e-9                     # a smaller non-zero target needs over a billion good images to measure


@dataclass(frozen=True)
class Choice:
    """A threshold picked by a rule, the normalization centred on it, and what to tell the user."""

    method: str
    target: float | None
    threshold: float
    image_norm: tuple[float, float]
    warnings: list[str] = field(default_factory=list)


def choose(method: str, good: np.ndarray, bad: np.ndarray | None = None, target: float | None = None) -> Choice:
    """The image threshold by `method` (see the module's doc) from good scores and, for the rules that
    need them, defective scores. Raises ValueError for a missing input or a target out of range."""
    good = _scores(good, "good")
    bad = None if bad is None or len(bad) == 0 else _scores(bad, "defective")
    check_request(method, target, bad is not None)
    if len(good) < MIN_GOOD:
        raise ValueError(f"calibration needs at least {MIN_GOOD} good images, got {len(good)}")
    warnings: list[str] = []
    if method == "mean+3std":
        threshold = float(good.mean() + 3.0 * _spread(good))
    elif method == "target-fpr":
        threshold = _for_fpr(good, float(target), warnings, bad)
    elif method == "target-recall":
        threshold = _for_recall(good, bad, float(target), warnings)
    else:
        threshold = _for_f1(good, bad)
    half = 3.0 * _spread(good)
    return Choice(method, target, threshold, (threshold - half, threshold + half), warnings)


def check_request(method: str, target: float | None, has_bad: bool) -> None:
    """Refuse, before any image is scored, a method this module does not know, a target out of its
    range, a missing target, or a rule that needs defective images without them."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; one of {', '.join(METHODS)}")
    if method == "target-fpr":
        fpr = _target(target, 0.0, 1.0, method, high_open=True)
        if 0.0 < fpr < MIN_FPR:
            raise ValueError(f"--target-fpr {fpr!r} cannot be measured: it needs at least 1 / F good images, over a "
                             f"billion; give 0 (no good image flagged) or a rate of at least {MIN_FPR:g}")
    elif method == "target-recall":
        _target(target, 0.0, 1.0, method, low_open=True)
    if method in ("target-recall", "f1-max") and not has_bad:
        _needs(None, method)


def needed_good_images(fpr: float) -> float:
    """Good images needed to measure a false-positive rate of `fpr` at all (one false positive): a whole
    number, or math.inf for a rate so small that 1 / fpr overflows; 0 for fpr <= 0."""
    if not fpr > 0:
        return 0
    try:
        inverse = 1.0 / fpr
    except OverflowError:
        return math.inf
    return math.ceil(inverse - 1e-9) if math.isfinite(inverse) else math.inf


def _threshold_above(value: float, scores: np.ndarray) -> float:
    """A threshold t such that `score > t` flags exactly the scores above `value`: half-way between
    `value` and the lowest score above it, or `value` itself when none is above (nothing to flag)."""
    higher = scores[scores > value]
    return float((value + higher.min()) / 2.0) if higher.size else float(value)


def _for_fpr(good: np.ndarray, fpr: float, warnings: list[str], bad: np.ndarray | None = None) -> float:
    allowed = int(math.floor(fpr * len(good) + 1e-9))          # good images that may score above
    if fpr > 0 and allowed == 0:
        warnings.append(f"a false-positive rate of {fpr:g} cannot be measured on {len(good)} good images: it needs at "
                        f"least {needed_good_images(fpr)} (one false positive in {needed_good_images(fpr)}); the "
                        "threshold is above every good score (no good image flagged here), add good images for "
                        "a measured rate")
    at = float(np.sort(good)[::-1][allowed])                 # the (k+1)-th highest good score
    return _threshold_above(at, np.concatenate([good, bad]) if bad is not None else good)


def _for_recall(good: np.ndarray, bad: np.ndarray, recall: float, warnings: list[str]) -> float:
    k = max(1, int(math.ceil(recall * len(bad) - 1e-9)))       # defective images that must score above
    if recall < 1 and len(bad) < 1.0 / (1.0 - recall):
        warnings.append(f"a recall of {recall:g} on {len(bad)} defective images means flagging {k} of them; "
                        f"measuring it needs at least {math.ceil(1.0 / (1.0 - recall) - 1e-9)} defective images")
    value = float(np.sort(bad)[::-1][k - 1])
    return threshold_below(value, np.concatenate([good, bad]))


def _for_f1(good: np.ndarray, bad: np.ndarray) -> float:
    scores = np.concatenate([good, bad])
    labels = np.r_[np.zeros(len(good), np.int64), np.ones(len(bad), np.int64)]
    return float(operating_point(scores, labels, float(scores.max()))["f1_max_threshold"])


def _spread(good: np.ndarray) -> float:
    """The good scores' standard deviation (ddof 1), floored as training floors it."""
    mean = float(good.mean())
    return max(float(good.std(ddof=1)), 1e-6 * max(abs(mean), 1.0))


def _scores(values, what: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(scores).all():
        raise ValueError(f"the {what} scores contain NaN/inf: the model's output is not finite; check the bundle "
                         "with backend onnxruntime-cpu, or re-export it")
    return scores


def _needs(bad: np.ndarray | None, method: str) -> np.ndarray:
    if bad is None:
        flag = "--f1" if method == "f1-max" else f"--{method}"
        raise ValueError(f"{flag} needs defective images (--bad DIR) as well as good ones")
    return bad


def _target(value, low: float, high: float, name: str, *, low_open: bool = False, high_open: bool = False) -> float:
    """A target rate inside its range, else a ValueError naming the range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'above' if low_open else 'at least'} {low:g} and {'below' if high_open else 'at most'} {high:g}"
        raise ValueError(f"--{name} must be a number {span}, got {value!r}")
    return float(value)
