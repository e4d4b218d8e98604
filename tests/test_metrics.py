"""Metrics on hand-computed cases, against scikit-learn, and AUPRO against a brute-force sweep."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from sklearn.metrics import precision_recall_curve, roc_auc_score

from edge_ad.metrics import aupro, f1_max, image_auroc, pixel_auroc


def test_image_auroc_hand_computed() -> None:
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    # pairs (neg, pos): (.1,.35) win, (.1,.8) win, (.4,.35) loss, (.4,.8) win -> 3/4
    assert image_auroc([0, 1, 0, 1], [0.1, 0.35, 0.4, 0.8]) == 0.75
    # a tie between a negative and a positive counts one half
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.standard_normal(300) + labels, 1)  # rounding makes many ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    masks = rng.random((4, 16, 16)) > 0.8
    maps = np.round(rng.standard_normal((4, 16, 16)) + masks, 1)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_f1_max_hand_computed() -> None:
    # threshold .7 -> predicted {.9,.7}: tp 1, fp 1 -> P .5 R .5; threshold .9 -> P 1 R .5 -> F1 2/3;
    # threshold .4 -> predicted {.9,.7,.4}: tp 2 -> P 2/3, R 1 -> F1 .8 (the best)
    f1, threshold = f1_max([1, 0, 1, 0], [0.9, 0.7, 0.4, 0.1])
    assert f1 == pytest.approx(0.8)
    assert threshold == 0.4


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_sklearn(seed) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.standard_normal(200) + labels, 1)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best = int(np.argmax(f1[:-1]))
    ours, threshold = f1_max(labels, scores)
    assert ours == pytest.approx(f1[best], abs=1e-12)
    assert threshold == pytest.approx(thresholds[best])


def test_aupro_hand_computed() -> None:
    # One region of two pixels, six normal pixels. Curve (fpr, pro): (0, .5) at .9, (1/6, .5) at .6,
    # (2/6, .5) at .5, (2/6, 1) at .4: up to 0.3 the overlap is .5 all the way -> AUPRO .5.
    masks = np.array([[[0, 0, 1, 1], [0, 0, 0, 0]]])
    maps = np.array([[[0.1, 0.2, 0.9, 0.4], [0.3, 0.5, 0.6, 0.0]]])
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.5)
    # up to 0.4: .5 * 1/3 + 1.0 * (0.4 - 1/3) = 0.2333.. -> / 0.4
    assert aupro(masks, maps, fpr_limit=0.4) == pytest.approx((0.5 / 3 + (0.4 - 1 / 3)) / 0.4)


def test_aupro_regions_count_equally() -> None:
    """A found small region and a missed big one weigh the same, whatever their sizes.

    Operating points: threshold 1 -> (fpr 0, pro .5); threshold 0 -> (1, 1). Linear between them,
    pro(.3) = .65, area (.5 + .65) / 2 * .3, normalized by .3 -> .575.
    """
    masks = np.zeros((1, 20, 20), np.uint8)
    masks[0, 1:3, 1:3] = 1            # small region, found
    masks[0, 10:19, 10:19] = 1        # big region, missed
    maps = np.zeros((1, 20, 20))
    maps[0, 1:3, 1:3] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.575)
    masks[0, 10:19, 10:19] = 0        # without the missed region the same map is perfect
    assert aupro(masks, maps) == pytest.approx(1.0)  # the pixel metric is dominated by the big region


def brute_force_aupro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """Independent reference: sweep every threshold, label regions with scipy, integrate."""
    regions = []
    for mask, amap in zip(masks, maps):
        labels, count = ndi.label(mask, structure=np.ones((3, 3)))
        regions += [(labels == k, amap) for k in range(1, count + 1)]
    normal = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = (maps[normal] >= t).mean()
        pro = np.mean([(amap[region] >= t).mean() for region, amap in regions])
        points.append((fpr, pro))
    fprs, pros = np.array(points).T
    keep = fprs <= limit
    x, y = list(fprs[keep]), list(pros[keep])
    if x[-1] < limit:
        j = int(np.argmax(~keep))
        y.append(np.interp(limit, fprs[j - 1:j + 1], pros[j - 1:j + 1]))
        x.append(limit)
    return float(np.trapezoid(y, x) / limit)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed, limit) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 24, 24), np.uint8)
    for i in range(3):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, 20, 2)
            masks[i, y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = 1
    maps = np.round(rng.standard_normal(masks.shape) + 1.5 * masks, 2)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(brute_force_aupro(masks, maps, limit), abs=1e-9)


@pytest.mark.parametrize("call, words", [
    (lambda: image_auroc([1, 1], [0.1, 0.2]), "both normal"),
    (lambda: image_auroc([0, 1], [0.1]), "same shape"),
    (lambda: image_auroc([0, 1], [0.1, np.nan]), "NaN"),
    (lambda: aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4))), "both normal and anomalous"),
    (lambda: aupro(np.ones((1, 4, 4)), np.zeros((1, 4, 5))), "must both be"),
    (lambda: aupro(np.ones((1, 4, 4)), np.zeros((1, 4, 4)), fpr_limit=0), "fpr_limit"),
    (lambda: f1_max([0, 0], [0.1, 0.2]), "both normal"),
])
def test_bad_input(call, words) -> None:
    with pytest.raises(ValueError, match=words):
        call()


def test_aupro_regions_are_8_connected() -> None:
    """Pixels that touch only at a corner are one region (MVTec AD's definition), not two.

    One region of four pixels (an L of three and one diagonal neighbour), only the diagonal pixel
    found: threshold 1 -> (fpr 0, pro 1/4); threshold 0 -> (1, 1); pro(.3) = .475; AUPRO
    (.25 + .475) / 2 = .3625. Counted 4-connected, the found pixel would be a region of its own:
    pro 1/2 at fpr 0 and AUPRO .575.
    """
    masks = np.zeros((1, 8, 8), np.uint8)
    masks[0, 2, 2:4] = 1
    masks[0, 3, 2] = 1
    masks[0, 1, 4] = 1                # touches (2, 3) at a corner only
    maps = np.zeros((1, 8, 8))
    maps[0, 1, 4] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.3625)


def test_f1_max_counts_the_lowest_scores_as_one_tie() -> None:
    """The three lowest scores tie: flagging them all (P 3/4, R 1, F1 6/7) beats the top one alone
    (P 1, R 1/3, F1 1/2); the last tie group must be a candidate threshold."""
    labels = np.array([1, 1, 0, 1])
    scores = np.array([0.9, 0.2, 0.2, 0.2])
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(6 / 7) and threshold == pytest.approx(0.2)


def test_aupro_interpolates_the_curve_at_the_limit() -> None:
    """Operating points (0, 0), (0.5, 1), (1, 1): up to fpr 0.2 the PRO rises linearly to 0.4: area
    0.04, normalized by 0.2 -> 0.2. Without interpolation at the limit it would be 0."""
    masks = np.array([[[1, 0, 0]]])
    maps = np.array([[[0.5, 0.5, 0.0]]])        # the defect ties with one normal pixel
    assert aupro(masks, maps, fpr_limit=0.2) == pytest.approx(0.2)


# ------------------------------------------------------------- edges found by mutation testing


def test_area_is_interpolated_at_the_limit_by_hand() -> None:
    from edge_ad.metrics import _area_up_to

    x, y = np.array([0.0, 0.2, 0.5]), np.array([0.0, 0.4, 1.0])
    # y(0.3) = 0.4 + 0.6 * 0.1 / 0.3 = 0.6; area = 0.2 * 0.4 / 2 + 0.1 * (0.4 + 0.6) / 2 = 0.09
    assert _area_up_to(x, y, 0.3) == pytest.approx(0.09, abs=1e-12)
    # a curve that ends before the limit is not extended
    assert _area_up_to(np.array([0.0, 0.1]), np.array([0.0, 1.0]), 0.3) == pytest.approx(0.05, abs=1e-12)


def test_aupro_takes_a_single_2d_image_and_one_normal_pixel_and_checks_its_limit() -> None:
    mask = np.ones((4, 4), bool)
    mask[0, 0] = False                                              # exactly one normal pixel
    score = np.where(mask, 1.0, 0.0)
    assert aupro(mask, score) == pytest.approx(1.0)                 # perfect separation, one 2-D image
    assert aupro(mask[None], score[None], fpr_limit=1.0) == pytest.approx(1.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fpr_limit"):
            aupro(mask, score, fpr_limit=bad)


def test_f1_counts_a_single_true_positive() -> None:
    f1, threshold = f1_max(np.array([1, 0, 0]), np.array([0.9, 0.2, 0.1]))
    assert f1 == pytest.approx(1.0) and threshold == pytest.approx(0.9)
