"""Anomaly-detection metrics with the field's definitions; arguments in scikit-learn's order.

- `image_auroc(labels, scores)`: area under the ROC curve of image scores.
- `pixel_auroc(masks, maps)`: the same over every pixel of every test image.
- `aupro(masks, maps, fpr_limit=0.3)`: area under the per-region-overlap curve up to a false
  positive rate limit, divided by the limit (the MVTec AD benchmark's definition: each connected
  ground-truth region counts equally, whatever its size).
- `f1_max(labels, scores)`: best F1 over all thresholds, and the threshold that gives it.
- `operating_point(scores, labels, threshold)`: recall, false-positive rate, precision and F1 where
  the runtime flags a part (`score > threshold`), with F1-max and a threshold in that same rule.

All are exact (every distinct score is a threshold; ties handled as scikit-learn does), vectorized
NumPy, with OpenCV for the connected components. Higher scores mean more anomalous.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["image_auroc", "pixel_auroc", "aupro", "f1_max", "operating_point", "threshold_below"]


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of image scores; labels 1 = anomalous, 0 = normal."""
    y, s = _binary_and_scores(labels, scores, "labels", "scores")
    return _auroc(y, s)


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over all pixels; masks nonzero = anomalous pixel, maps same shape as masks."""
    y, s = _binary_and_scores(masks, maps, "masks", "maps")
    return _auroc(y, s)


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalized area under the PRO curve up to `fpr_limit` (MVTec AD's AUPRO, 8-connected regions)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks, maps = np.asarray(masks), np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape or masks.ndim not in (2, 3):
        raise ValueError(f"masks and maps must both be (N, H, W) or (H, W), got {masks.shape} and {maps.shape}")
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    _check_finite(maps, "maps")
    fpr_weight, pro_weight = _pixel_weights(masks != 0)
    order = np.argsort(-maps.ravel(), kind="mergesort")
    scores = maps.ravel()[order]
    fpr = np.cumsum(fpr_weight.ravel()[order])
    pro = np.cumsum(pro_weight.ravel()[order])
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]  # one point per distinct threshold
    fpr = np.r_[0.0, fpr[last_of_tie]]
    pro = np.r_[0.0, pro[last_of_tie]]
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over thresholds (predict anomalous when score >= threshold) and that threshold."""
    y, s = _binary_and_scores(labels, scores, "labels", "scores")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    predicted = (np.arange(1, len(y) + 1))[last_of_tie]
    precision = tp / predicted
    recall = tp / y.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s[last_of_tie][best])


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """What a threshold does on labelled parts, with the runtime's rule: a part is flagged when
    `score > threshold`. Note the order: scores first (labels 0 = good, 1 = defective; any other
    label value is refused, which also catches swapped arguments).

    Keys, each a float, or None where it is undefined on these parts:
    - recall = flagged defective / defective (None: no defective parts);
    - false_positive_rate = flagged good / good (None: no good parts);
    - precision = flagged defective / flagged (None: nothing flagged);
    - f1 = 2 TP / (2 TP + FP + FN) (None: no defective parts; 0 when defective parts exist and none
      is flagged);
    - f1_max, f1_max_threshold: the best F1 over all thresholds and a threshold that gives it in the
      same `score > threshold` rule (half-way between the lowest flagged score and the next lower
      score; just below the lowest score when every part is flagged), so it can be deployed as is
      (None for both unless good and defective parts are both present)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary_labels(labels, len(s))
    _check_finite(s, "scores")
    if not s.size:
        raise ValueError("operating_point needs at least one scored part")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) \
            or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    flagged = s > float(threshold)
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    bad, good = int(y.sum()), int((~y).sum())
    best, best_threshold = None, None
    if bad and good:
        best, cut = f1_max(y, s)
        best_threshold = threshold_below(cut, s)
    return {"recall": tp / bad if bad else None,
            "false_positive_rate": fp / good if good else None,
            "precision": tp / (tp + fp) if tp + fp else None,
            "f1": 2 * tp / (2 * tp + fp + (bad - tp)) if bad else None,
            "f1_max": best, "f1_max_threshold": best_threshold}


def threshold_below(value: float, scores: np.ndarray) -> float:
    """A threshold t such that `score > t` flags exactly the scores >= `value`: half-way between
    `value` and the highest score below it (a margin on both sides, so a slightly different backend
    does not flip a part), or, when no score is below, `value` minus 1e-6 of max(|value|, 1)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lower = s[s < value]
    if lower.size:
        return float((value + lower.max()) / 2.0)
    return float(value - 1e-6 * max(abs(value), 1.0))


def _binary_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Labels as a boolean array (True = defective); only 0/1 (or booleans) of length n are taken."""
    y = np.asarray(labels).reshape(-1)
    if len(y) != n:
        raise ValueError(f"scores and labels must have the same length, got {n} and {len(y)}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (defective); were scores and labels swapped? "
                         "operating_point takes (scores, labels, threshold)")
    return y.astype(bool)


def _binary_and_scores(truth: np.ndarray, scores: np.ndarray, truth_name: str,
                       score_name: str) -> tuple[np.ndarray, np.ndarray]:
    truth, scores = np.asarray(truth), np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape:
        raise ValueError(f"{truth_name} and {score_name} must have the same shape, "
                         f"got {truth.shape} and {scores.shape}")
    _check_finite(scores, score_name)
    y = truth.ravel() != 0
    if y.all() or not y.any():
        raise ValueError(f"{truth_name} must contain both normal (0) and anomalous (nonzero) "
                         "entries for the metric to be defined")
    return y, scores.ravel()


def _check_finite(values: np.ndarray, name: str) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney U / (P * N), ties counted one half (average ranks)."""
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    ends = np.r_[starts[1:], len(s_sorted)]
    avg_rank = (starts + 1 + ends) / 2.0                  # mean of ranks starts+1 .. ends
    ranks = np.repeat(avg_rank, ends - starts)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    u = ranks[y_sorted].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _pixel_weights(anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel increments of the FPR and of the mean per-region overlap as a pixel turns positive."""
    n_normal = int((~anomalous).sum())
    if n_normal == 0 or not anomalous.any():
        raise ValueError("masks must contain both normal and anomalous pixels for AUPRO")
    fpr_weight = (~anomalous).astype(np.float64) / n_normal
    labelled = [cv2.connectedComponents(m.astype(np.uint8), connectivity=8) for m in anomalous]
    n_regions = sum(count - 1 for count, _ in labelled)
    pro_weight = np.zeros(anomalous.shape, dtype=np.float64)
    for i, (count, labels) in enumerate(labelled):
        if count > 1:
            sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
            per_label = np.r_[0.0, 1.0 / (n_regions * sizes[1:])]
            pro_weight[i] = per_label[labels]
    return fpr_weight, pro_weight


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit]; x non-decreasing, interpolated at the limit."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit and inside.sum() < len(x):
        j = int(np.argmax(~inside))                       # first point past the limit
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.r_[xs, limit], np.r_[ys, y_limit]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))
