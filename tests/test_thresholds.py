"""Thresholds on the line: metrics.operating_point, the calibration rules, and the threshold in use
(threshold / sensitivity) of edge_ad.load and Detector on a real tiny bundle."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import edge_ad
from edge_ad.metrics import f1_max, operating_point
from edge_ad.runtime.threshold_rules import check_request, choose, needed_good_images
from edge_ad.runtime.thresholds import norm_for, threshold_in_use

# -------------------------------------------------------------------------------------- operating_point


def test_operating_point_hand_computed() -> None:
    # flagged at 0.5: {.9 (bad), .7 (good)} -> TP 1, FP 1, FN 1 -> recall .5, FPR .5, precision .5, F1 .5;
    # F1-max .8 flags {.9, .7, .4}: deployed as half-way between .4 and the next lower score .1
    point = operating_point([0.9, 0.7, 0.4, 0.1], [1, 0, 1, 0], 0.5)
    assert point == pytest.approx({"recall": 0.5, "false_positive_rate": 0.5, "precision": 0.5, "f1": 0.5,
                                   "f1_max": 0.8, "f1_max_threshold": 0.25})


def test_a_score_equal_to_the_threshold_is_not_flagged() -> None:
    point = operating_point([0.9, 0.7, 0.4, 0.1], [1, 0, 1, 0], 0.7)     # only .9 is above
    assert point["recall"] == 0.5 and point["false_positive_rate"] == 0.0
    assert point["precision"] == 1.0 and point["f1"] == pytest.approx(2 / 3)


def test_operating_point_degenerate_cases_are_none_not_nan() -> None:
    only_good = operating_point([0.2, 0.6], [0, 0], 0.5)
    assert only_good == {"recall": None, "false_positive_rate": 0.5, "precision": 0.0, "f1": None,
                         "f1_max": None, "f1_max_threshold": None}
    only_bad = operating_point([0.2, 0.6], [1, 1], 0.5)
    assert only_bad["false_positive_rate"] is None and only_bad["recall"] == 0.5 and only_bad["f1_max"] is None
    nothing_flagged = operating_point([0.2, 0.6], [0, 1], 0.9)
    assert nothing_flagged["precision"] is None and nothing_flagged["f1"] == 0.0 and nothing_flagged["recall"] == 0.0


def test_f1_max_threshold_below_every_score_still_flags_them_all() -> None:
    # the best cut flags every part (F1 .8): the threshold goes just below the lowest score
    point = operating_point([0.3, 0.5, 0.1], [1, 0, 1], 0.4)
    assert point["f1_max"] == pytest.approx(0.8)
    assert 0.1 - 1e-5 < point["f1_max_threshold"] < 0.1
    assert operating_point([0.3, 0.5, 0.1], [1, 0, 1], point["f1_max_threshold"])["f1"] == pytest.approx(0.8)


@pytest.mark.parametrize("seed", range(4))
def test_f1_max_threshold_deploys_the_f1_max(seed) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 120)
    scores = np.round(rng.standard_normal(120) + labels, 1)              # many ties
    point = operating_point(scores, labels, 0.0)
    assert point["f1_max"] == pytest.approx(f1_max(labels, scores)[0])
    assert operating_point(scores, labels, point["f1_max_threshold"])["f1"] == pytest.approx(point["f1_max"])


def test_operating_point_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="swapped"):
        operating_point([0, 1, 0], [0.2, 0.7, 0.1], 0.5)                 # labels and scores the wrong way round
    with pytest.raises(ValueError, match="finite"):
        operating_point([0.2, 0.7], [0, 1], math.nan)
    with pytest.raises(ValueError, match="NaN"):
        operating_point([0.2, math.inf], [0, 1], 0.5)
    with pytest.raises(ValueError, match="same length"):
        operating_point([0.2, 0.7], [0, 1, 1], 0.5)
    with pytest.raises(ValueError, match="at least one"):
        operating_point([], [], 0.5)

# ------------------------------------------------------------------------------------------ the rules


def test_target_fpr_meets_it_with_a_margin_half_way_to_the_next_score() -> None:
    good = np.arange(100.0)[::-1]
    choice = choose("target-fpr", good, target=0.05)
    assert choice.threshold == 94.5 and not choice.warnings                # flags 95..99: 5 of 100, margin 0.5
    assert (good > choice.threshold).mean() <= 0.05 < (good > choice.threshold - 1).mean()
    exact = choose("target-fpr", good, target=0.0)
    assert exact.threshold == 99.0 and not exact.warnings                  # FPR 0 needs no count; nothing above
    with_bad = choose("target-fpr", good, np.array([94.2, 120.0]), target=0.05)
    assert with_bad.threshold == pytest.approx(94.1)                      # the next score of any image: 94.2
    ties = choose("target-fpr", np.array([5.0, 3.0, 3.0, 1.0]), target=0.25)
    assert ties.threshold == 4.0                                          # flags only 5: 1 of 4


def test_an_absurd_target_fpr_is_refused_up_front_and_the_count_never_overflows() -> None:
    for tiny in (1e-320, 1e-12):
        with pytest.raises(ValueError, match="cannot be measured.*give 0"):
            check_request("target-fpr", tiny, False)
    check_request("target-fpr", 1e-9, False)                               # a billion images: allowed
    assert needed_good_images(1e-320) == math.inf and needed_good_images(5e-324) == math.inf
    assert needed_good_images(0.0) == 0 and needed_good_images(0.3) == 4


def test_target_fpr_warns_with_how_many_good_images_it_needs() -> None:
    choice = choose("target-fpr", np.linspace(0, 1, 20), target=0.01)
    assert choice.threshold == 1.0                                         # the top: nothing above it
    assert needed_good_images(0.01) == 100 and "at least 100" in choice.warnings[0]


def test_target_recall_keeps_the_threshold_as_high_as_it_can() -> None:
    good, bad = np.arange(5.0), np.array([5.0, 6.0, 7.0, 8.0])
    choice = choose("target-recall", good, bad, target=0.75)               # 3 of 4 above: 6, 7, 8
    assert choice.threshold == 5.5 and not choice.warnings
    few = choose("target-recall", good, bad, target=0.9)                   # 90% of 4 is all 4
    assert few.threshold == 4.5 and "at least 10 defective images" in few.warnings[0]


def test_f1_rule_and_norm_centred_on_the_threshold() -> None:
    good, bad = np.array([0.1, 0.2, 0.3, 0.45]), np.array([0.4, 0.8, 0.9])
    choice = choose("f1-max", good, bad)
    labels = np.r_[np.zeros(4), np.ones(3)].astype(int)
    point = operating_point(np.r_[good, bad], labels, choice.threshold)
    assert point["f1"] == pytest.approx(point["f1_max"])
    lo, hi = choice.image_norm
    assert (lo + hi) / 2 == pytest.approx(choice.threshold)
    assert hi - lo == pytest.approx(6 * good.std(ddof=1))


def test_mean_plus_3_std_is_trainings_rule() -> None:
    from edge_ad.training.calibrate import calibrate

    good = np.random.default_rng(0).normal(1.0, 0.2, 30)
    trained = calibrate(good, np.zeros((30, 4, 4)))
    choice = choose("mean+3std", good)
    assert choice.threshold == pytest.approx(trained.image_threshold, rel=1e-12)
    assert choice.image_norm == pytest.approx(trained.image_norm, rel=1e-12)


@pytest.mark.parametrize("method, target, has_bad, message", [
    ("target-recall", 0.9, False, "--target-recall needs defective images"),
    ("f1-max", None, False, "--f1 needs defective images"),
    ("target-fpr", 1.0, False, "below 1"),
    ("target-fpr", None, False, "got None"),
    ("target-recall", 0.0, True, "above 0"),
    ("median", None, False, "unknown calibration method"),
])
def test_a_request_that_cannot_work_is_refused_before_scoring(method, target, has_bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_request(method, target, has_bad)


def test_fewer_than_two_good_images_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 good images"):
        choose("mean+3std", np.array([1.0]))

# ------------------------------------------------------------------------------ the threshold in use


def test_sensitivity_maps_onto_the_normalized_score() -> None:
    assert threshold_in_use(1.0, (0.0, 2.0)) == 1.0
    assert threshold_in_use(1.0, (0.0, 2.0), sensitivity=0.5) == 1.0     # the calibrated threshold
    assert threshold_in_use(1.0, (0.0, 2.0), sensitivity=1.0) == 0.0     # flags n > 0
    assert threshold_in_use(1.0, (0.0, 2.0), sensitivity=0.0) == 2.0     # flags n > 1
    assert threshold_in_use(1.0, (0.0, 2.0), sensitivity=0.75) == 0.5
    assert threshold_in_use(1.0, (0.0, 2.0), threshold=-3) == -3.0
    assert norm_for(1.5, 1.0, (0.0, 2.0)) == (0.5, 2.5) and norm_for(1.0, 1.0, (0.0, 3.0)) == (0.0, 3.0)


@pytest.mark.parametrize("far", [1e30, -1e30, sys.float_info.max, -sys.float_info.max])
def test_a_threshold_far_out_keeps_a_usable_normalization(far) -> None:
    lo, hi = norm_for(far, 1.0, (0.0, 2.0))               # the width 2 is lost in rounding at 1e30
    assert math.isfinite(lo) and math.isfinite(hi) and lo < hi
    assert np.clip((0.5 - lo) / (hi - lo), 0, 1) == (0.0 if far > 0 else 1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 1.0, "sensitivity": 0.5}, "not both"),
    ({"threshold": math.nan}, "finite number"),
    ({"threshold": "0.3"}, "finite number"),
    ({"threshold": True}, "finite number"),
    ({"sensitivity": 1.5}, "from 0 to 1"),
    ({"sensitivity": -0.1}, "from 0 to 1"),
])
def test_a_bad_threshold_or_sensitivity_is_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        threshold_in_use(1.0, (0.0, 2.0), **kwargs)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(6)]


def test_load_with_a_threshold_changes_verdicts_and_normalized_scores(tiny_bundle, frames) -> None:
    with edge_ad.load(tiny_bundle, backend="onnxruntime-cpu") as det:
        scores = det.scores(frames)
        calibrated = det.threshold
        t = float(np.median(scores))
    with edge_ad.load(tiny_bundle, backend="onnxruntime-cpu", threshold=t) as det:
        assert det.threshold == t and det.calibrated_threshold == calibrated
        lo, hi = det.image_norm
        assert hi - lo == pytest.approx(det.calibrated_norm[1] - det.calibrated_norm[0])
        results = det.predict(frames)
        assert [r.is_anomalous for r in results] == [bool(s > t) for s in scores]
        assert 0 < sum(r.is_anomalous for r in results) < len(frames)
        for r in results:                                   # 0.5 at the threshold in use, same width
            want = min(max(0.5 + (r.score - t) / (hi - lo), 0.0), 1.0)
            assert r.normalized_score == pytest.approx(want, abs=1e-6)
            assert (r.normalized_score > 0.5) == r.is_anomalous or r.normalized_score in (0.0, 1.0)


def test_set_threshold_sensitivity_and_the_old_attribute(tiny_bundle, frames) -> None:
    with edge_ad.load(tiny_bundle, backend="onnxruntime-cpu", sensitivity=0.5) as det:
        calibrated = det.calibrated_threshold
        assert det.threshold == calibrated
        assert det.set_threshold(sensitivity=1.0) < calibrated < det.set_threshold(sensitivity=0.0)
        det.threshold = -1e9                                 # the attribute users assigned before still works
        assert all(r.is_anomalous for r in det.predict(frames))
        assert det.set_threshold() == calibrated and det.image_norm == det.calibrated_norm
        with pytest.raises(ValueError, match="not both"):
            det.set_threshold(1.0, sensitivity=0.5)
        assert det.threshold == calibrated                   # a refused call changes nothing


def test_load_refuses_a_bad_threshold_before_opening_a_backend(tiny_bundle) -> None:
    # "tensorrt" cannot open on a CPU machine: the threshold's error comes first all the same
    with pytest.raises(ValueError, match="not both"):
        edge_ad.load(tiny_bundle, backend="tensorrt", threshold=0.1, sensitivity=0.5)
    with pytest.raises(ValueError, match="from 0 to 1"):
        edge_ad.load(tiny_bundle, backend="tensorrt", sensitivity=2)
