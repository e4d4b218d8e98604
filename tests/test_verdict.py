"""The verdict a user gets: calibration thresholds, the decision, the normalized score, the mask and the
heat map, each against values computed by hand or by an independent reference (issue 15)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

import edge_ad
from edge_ad.runtime.preprocess import Geometry, prepare
from edge_ad.runtime.result import Result
from edge_ad.training.calibrate import calibrate


# ------------------------------------------------------------------------------------ calibrate


def test_image_threshold_is_mean_plus_three_sample_std() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    cal = calibrate(scores, np.zeros((4, 2, 2)))
    std = np.sqrt(((scores - 2.5) ** 2).sum() / 3)           # 1.2909944, sample std (ddof = 1)
    assert cal.image_threshold == pytest.approx(2.5 + 3 * std, abs=1e-12)
    assert cal.image_threshold == pytest.approx(6.372983346207417, abs=1e-12)
    lo, hi = cal.image_norm                                    # threshold maps to exactly 0.5
    assert lo == pytest.approx(2.5) and (cal.image_threshold - lo) / (hi - lo) == pytest.approx(0.5, abs=1e-12)
    assert cal.normal_images == 4


def test_pixel_threshold_is_the_largest_normal_pixel_and_norm_centres_on_the_median() -> None:
    maps = np.arange(2 * 3 * 3, dtype=np.float64).reshape(2, 3, 3)   # 0..17: median 8.5, max 17
    cal = calibrate(np.array([0.0, 1.0]), maps)
    assert cal.pixel_threshold == 17.0
    assert cal.pixel_norm == pytest.approx((8.5, 8.5 + 2 * (17.0 - 8.5)))


def test_constant_scores_still_give_a_threshold_above_them() -> None:
    cal = calibrate(np.full(5, 2.0), np.zeros((5, 2, 2)))
    assert cal.image_threshold > 2.0 and cal.image_threshold == pytest.approx(2.0 + 3 * 2e-6)


@pytest.mark.parametrize("level", [0.5, 5.0])
def test_constant_inputs_get_a_floor_relative_to_their_level_but_at_least_one(level) -> None:
    """All scores (pixels) equal: threshold (span) = level + 3 x (1e-6 x max(|level|, 1))."""
    floor = 1e-6 * max(abs(level), 1.0)
    cal = calibrate(np.full(4, level), np.full((4, 2, 2), level))
    assert cal.image_threshold == pytest.approx(level + 3 * floor, abs=1e-15)
    assert cal.pixel_threshold == level
    assert cal.pixel_norm == pytest.approx((level, level + 2 * floor), abs=1e-15)


def test_calibration_is_immutable() -> None:
    import dataclasses

    cal = calibrate(np.array([1.0, 2.0]), np.zeros((2, 2, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.image_threshold = 0.0


def test_normalization_needs_lo_below_hi_of_any_sign() -> None:
    from edge_ad.training.calibrate import Calibration, CalibrationError

    Calibration(-1.0, (-5.0, -1.0), -1.0, (-5.0, -1.0), 2).validate()        # negative scores are fine
    with pytest.raises(CalibrationError, match=r"image_norm is \(1.0, 0.5\)"):
        Calibration(1.0, (1.0, 0.5), 1.0, (0.0, 1.0), 2).validate()


@pytest.mark.parametrize("norm", [5, {"lo": 0.0, "hi": 1.0}, "ab", [0.0]])
def test_stored_normalization_must_be_a_pair(norm) -> None:
    from edge_ad.training.calibrate import Calibration, CalibrationError

    d = Calibration(1.0, (0.0, 2.0), 1.0, (0.0, 2.0), 4).to_dict() | {"image_norm": norm}
    with pytest.raises(CalibrationError, match=r"image_norm must be a pair|image_norm\[0\] must be a number"):
        Calibration.from_dict(d)


def test_empty_validation_maps_are_refused_by_name() -> None:
    from edge_ad.training.calibrate import CalibrationError

    with pytest.raises(CalibrationError, match="validation maps are empty"):
        calibrate(np.array([1.0, 2.0]), np.zeros((0,)))


def test_non_finite_maps_name_the_images_for_flat_and_2d_maps() -> None:
    """A NaN pixel in image 1 of N x P maps names image 1 (not the pixel's flat index)."""
    from edge_ad.training.calibrate import CalibrationError

    maps = np.zeros((3, 5))
    maps[1, 3] = np.nan
    with pytest.raises(CalibrationError, match=r"1 of 3 validation images contain NaN/inf \(validation images 1\)"):
        calibrate(np.zeros(3) + [0, 1, 2], maps)


@pytest.mark.parametrize("count, listed, tail", [(8, 8, False), (10, 8, True)])
def test_non_finite_scores_list_at_most_eight_images(count, listed, tail) -> None:
    from edge_ad.training.calibrate import CalibrationError

    scores = np.full(count + 2, np.nan)
    scores[:2] = [1.0, 2.0]
    with pytest.raises(CalibrationError) as err:
        calibrate(scores, np.zeros((count + 2, 2, 2)))
    names = str(err.value).split("(validation images ")[1].split(":")[0].split(", ... (")[0]
    assert names.split(", ") == [str(i) for i in range(2, 2 + listed)]
    assert (f"({count} in all)" in str(err.value)) is tail


# ------------------------------------------------------------------------------------- decision


def _frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(n)]


def test_decision_is_score_above_threshold_and_threshold_normalizes_to_half(tiny_bundle) -> None:
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    frames = _frames(6, seed=1)
    scores = np.array([r.score for r in det.predict(frames)])
    order = np.argsort(scores)
    det.threshold = float((scores[order[2]] + scores[order[3]]) / 2)      # three below, three above
    det.image_norm = (det.threshold - 1.0, det.threshold + 1.0)
    results = det.predict(frames)
    assert [r.is_anomalous for r in results] == [bool(s > det.threshold) for s in scores]
    assert sum(r.is_anomalous for r in results) == 3
    for r, s in zip(results, scores):
        assert r.normalized_score == pytest.approx(float(np.clip((s - det.threshold + 1.0) / 2.0, 0, 1)), abs=1e-6)
    det.threshold = float(scores[order[4]])           # a score equal to the threshold is not anomalous
    det.image_norm = (det.threshold - 1.0, det.threshold + 1.0)
    at = det.predict(frames[order[4]])
    assert not at.is_anomalous and at.normalized_score == pytest.approx(0.5, abs=1e-6)


def test_runtime_heatmap_is_the_declared_smoothing_of_the_raw_map(tiny_bundle) -> None:
    """Maps and scores against float64 bilinear + scipy Gaussian on the backend's own raw maps."""
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    spec = det.heatmap_spec
    assert spec.smooth == "gaussian"
    prepared = np.stack([prepare(f[:, :, ::-1], det.geometry) for f in _frames(3, seed=2)])
    raw = det.infer(prepared)[:, 0].astype(np.float64)
    size = spec.output_size
    up = F.interpolate(torch.from_numpy(raw)[:, None], size=size, mode="bilinear",
                       align_corners=spec.align_corners)[:, 0].numpy()
    want = ndi.gaussian_filter(up, sigma=(0, spec.sigma, spec.sigma), mode="reflect", truncate=4.0)
    maps, scores = det.heatmaps(prepared)
    spread = float(np.ptp(want))
    np.testing.assert_allclose(maps, want, rtol=0, atol=1e-5 * spread)
    assert spec.score_from == "raw"                     # SimpleNet: the image score is the raw map's max
    np.testing.assert_allclose(scores, raw.reshape(3, -1).max(axis=1), rtol=0, atol=1e-6 * spread)
    assert np.abs(up - want).max() > 1e-2 * spread        # the smoothing is not a no-op on these maps


# ----------------------------------------------------------------------------------- mask, map


def _result_with_square(pixel_threshold: float = 1.0) -> tuple[Result, np.ndarray]:
    """A 64 x 64 crop map that is 2.0 inside a 16 x 16 square and 0 elsewhere, shown on a 64 x 64 image."""
    crop = np.zeros((64, 64), np.float32)
    crop[20:36, 30:46] = 2.0
    truth = np.zeros((64, 64), np.uint8)
    truth[20:36, 30:46] = 1
    geometry = Geometry(resize=(64, 64), crop=(64, 64))
    return Result(score=2.0, normalized_score=1.0, is_anomalous=True, crop_map=crop, image_size=(64, 64),
                  geometry=geometry, pixel_norm=(0.0, 2.0), pixel_threshold=pixel_threshold), truth


def test_mask_marks_the_pixels_above_the_pixel_threshold() -> None:
    result, truth = _result_with_square()
    mask = result.mask
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    overlap = (mask & truth).sum() / (mask | truth).sum()
    assert overlap == 1.0
    assert result.heatmap[28, 38] == pytest.approx(1.0) and result.heatmap[5, 5] == 0.0


def test_pixel_threshold_above_every_value_gives_an_empty_mask() -> None:
    result, _ = _result_with_square(pixel_threshold=3.0)
    assert result.mask.sum() == 0


def test_edge_ad_stream_flags_exactly_the_frames_above_the_bundle_threshold(tiny_bundle, tmp_path) -> None:
    """Through the CLI: a copy of the bundle whose calibrated threshold sits between the scores of a
    folder's images; the events file flags exactly those above it, with the normalized scores."""
    import json
    import shutil

    import cv2

    from edge_ad.bundle import add_file, read_bundle
    from edge_ad.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle, symlinks=True)
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = _frames(6, seed=3)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:02d}.png"), frame)
    scores = np.array([r.score for r in edge_ad.load(bundle, "onnxruntime-cpu").predict(frames)])
    threshold = float(np.sort(scores)[2:4].mean())

    def calibrate_between(meta: dict) -> None:
        meta["calibration"].update(image_threshold=threshold, image_norm=[threshold - 1.0, threshold + 1.0])

    add_file(read_bundle(bundle), "verdict-note.txt", b"threshold set by the test\n", calibrate_between)
    events = tmp_path / "events.jsonl"
    assert main(["stream", str(bundle), "--source", str(folder), "--events", str(events), "--events-frames", "all",
                 "--backend", "onnxruntime-cpu"]) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    got = {e["frame"]: e for e in lines if e["event"] in ("frame", "anomaly")}
    assert len(got) == 6
    for i, s in enumerate(scores):
        assert got[i]["anomalous"] is bool(s > threshold) and (got[i]["event"] == "anomaly") is bool(s > threshold)
        assert got[i]["normalized_score"] == pytest.approx(float(np.clip((s - threshold + 1.0) / 2.0, 0, 1)), abs=1e-5)
    assert sum(e["anomalous"] for e in got.values()) == 3


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_batches_beyond_the_engine_maximum_run_in_chunks_with_the_same_results(tiny_bundle, limit) -> None:
    """A backend with a profile maximum (TensorRT's) gets at most that many images per run; results in
    order, equal to one unchunked run (here the real ONNX Runtime backend, given a maximum)."""
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    prepared = np.stack([prepare(f[:, :, ::-1], det.geometry) for f in _frames(8, seed=4)])
    want_maps, want_scores = det.heatmaps(prepared)
    seen: list[int] = []
    infer = det.backend.infer
    det.backend.infer = lambda batch: (seen.append(len(batch)), infer(batch))[1]
    det.backend.max_batch = limit
    maps, scores = det.heatmaps(prepared)
    assert max(seen) <= limit and sum(seen) == 8
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(maps, want_maps)


@pytest.mark.parametrize("color", ["BGR", "RGB"])
def test_overlay_blends_the_jet_heatmap_and_labels_in_the_callers_colour_order(color) -> None:
    result, _ = _result_with_square()
    image = np.full((64, 64, 3), (10, 120, 240), np.uint8)
    out = result.overlay(image, color=color, alpha=0.5)
    jet = cv2.applyColorMap((result.heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    jet = jet if color == "BGR" else jet[:, :, ::-1]
    want = cv2.addWeighted(image, 0.5, jet, 0.5, 0)
    np.testing.assert_array_equal(out[40:, :], want[40:, :])          # below the label: the blend exactly
    red = (0, 0, 255) if color == "BGR" else (255, 0, 0)                 # "ANOMALY 1.00", in red
    assert (out[:30] == red).all(axis=2).sum() > 20 and not (want[:30] == red).all(axis=2).any()


def test_calibration_warns_when_every_validation_score_is_the_same(caplog) -> None:
    import logging

    with caplog.at_level(logging.WARNING):
        calibrate(np.full(4, 1.5), np.zeros((4, 2, 2)))
    assert "same score" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        calibrate(np.array([1.0, 2.0]), np.zeros((2, 2, 2)))
    assert "same score" not in caplog.text


# ------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("color", ["HSV", 5, None, ""])
def test_an_unknown_colour_order_is_refused(tiny_bundle, color) -> None:
    with pytest.raises(ValueError, match="must be 'BGR'"):
        edge_ad.load(tiny_bundle, backend="onnxruntime-cpu", color=color)
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    if color is not None:                                     # None in predict() means "the detector's"
        with pytest.raises(ValueError, match="must be 'BGR'"):
            det.predict(_frames(1, 0)[0], color=color)
    with pytest.raises(ValueError, match=r"color\[1\] must be 'BGR'"):
        det.predict(_frames(2, 0), color=["RGB", color])


@pytest.mark.parametrize("images, kind", [(b"\x89PNG", "bytes"), ({"a": 1}, "dict")])
def test_images_that_are_not_a_list_are_refused_by_type(tiny_bundle, images, kind) -> None:
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    with pytest.raises(TypeError, match=f"expected a list, got {kind}"):
        det.predict(images)


def test_heatmap_mask_and_overlay_of_an_offset_crop_against_an_independent_reference() -> None:
    """A crop in the middle of a wider frame, a normalization with lo != 0: the heat map is
    clip((map - lo) / (hi - lo)) resized into the crop's place and 0 around it, the mask is the map
    against the pixel threshold in the same units, and the overlay is the JET blend with a red label."""
    rng = np.random.default_rng(3)
    crop = rng.uniform(-1.0, 5.0, (32, 32)).astype(np.float32)
    geometry = Geometry(resize=(48, 64), crop=(32, 32))               # offset (8, 16) in the resized frame
    lo, hi, thr = 1.0, 4.0, 3.0
    result = Result(score=9.0, normalized_score=0.9, is_anomalous=True, crop_map=crop, image_size=(96, 128),
                    geometry=geometry, pixel_norm=(lo, hi), pixel_threshold=thr)
    want = np.zeros((96, 128), np.float32)
    norm = np.clip((crop.astype(np.float64) - lo) / (hi - lo), 0, 1).astype(np.float32)
    want[16:80, 32:96] = cv2.resize(norm, (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(result.heatmap, want, atol=1e-6)
    assert result.heatmap[:16].max() == 0 and result.heatmap[:, :32].max() == 0
    np.testing.assert_array_equal(result.mask, (want >= (thr - lo) / (hi - lo)).astype(np.uint8))
    frame = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    jet = cv2.applyColorMap((want * 255).astype(np.uint8), cv2.COLORMAP_JET)
    blend = cv2.addWeighted(frame, 0.55, jet, 0.45, 0)
    shown = result.overlay(frame)
    below = np.s_[40:, :]                                                 # away from the label
    assert np.abs(shown[below].astype(int) - blend[below].astype(int)).max() <= 1
    label = np.abs(shown[:32, :200].astype(int) - blend[:32, :200].astype(int)).sum(axis=2) > 0
    drawn = shown[:32, :200][label]
    assert label.sum() > 50 and np.median(drawn[:, 2]) > 150 and np.median(drawn[:, 1]) < 100   # red, in BGR
    calm = Result(score=0.0, normalized_score=0.1, is_anomalous=False, crop_map=crop, image_size=(96, 128),
                  geometry=geometry, pixel_norm=(lo, hi), pixel_threshold=thr).overlay(frame)
    mark = np.abs(calm[:32, :200].astype(int) - blend[:32, :200].astype(int)).sum(axis=2) > 0
    assert np.median(calm[:32, :200][mark][:, 1]) > 150                                        # green
    assert np.array_equal(result.overlay(frame[:, :, ::-1].copy(), color="RGB")[below], shown[:, :, ::-1][below])
    for alpha in (-0.01, 1.01):
        with pytest.raises(ValueError, match="alpha"):
            result.overlay(frame, alpha=alpha)
    assert np.abs(result.overlay(frame, alpha=1.0)[below].astype(int) - jet[below].astype(int)).max() <= 1


def test_a_pixel_exactly_at_the_pixel_threshold_is_in_the_mask() -> None:
    result, truth = _result_with_square(pixel_threshold=2.0)        # the square's value, normalized: 1.0 >= 1.0
    assert np.array_equal(result.mask, truth)


def test_normalized_score_is_clipped_to_0_and_1_and_4d_arrays_are_refused(tiny_bundle) -> None:
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    lo, hi = det.image_norm
    frame = _frames(1, 4)[0]
    raw = det.predict(frame).score
    det.image_norm = (raw - 10.0, raw - 9.0)                        # the score lies far above hi
    assert det.predict(frame).normalized_score == 1.0
    det.image_norm = (raw + 9.0, raw + 10.0)                        # far below lo
    assert det.predict(frame).normalized_score == 0.0
    with pytest.raises(ValueError, match="4-D array"):
        det.predict(np.zeros((2, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("image", [np.zeros((64, 64, 3), np.float32), np.zeros((64, 64), np.uint8),
                                   np.zeros((64, 64, 4), np.uint8), [[0]]])
def test_overlay_refuses_what_is_not_an_hxwx3_uint8_frame(image) -> None:
    result, _ = _result_with_square()
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        result.overlay(image)
