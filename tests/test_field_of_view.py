"""Issue 18, item 3: the whole field of view. The fit recorded in the bundle (squash, letterbox, crop),
a region of interest per image and per source, and tiling for frames much larger than the model input.

Most checks run a toy bundle through the real ONNX Runtime: its graph's anomaly map is the brightness
of the model input (the channel mean), so where a bright spot lands in the heat map says exactly
where the pipeline put it. The tiling claim itself runs a trained tiny MKD bundle.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edge_ad
from edge_ad.bundle import BundleError, read_bundle, write_bundle
from edge_ad.cli import main
from edge_ad.regions import RoiError, TilingError, ViewError, parse_roi, parse_tiles
from edge_ad.runtime.backend import BaseBackend
from edge_ad.runtime.detector import Detector
from edge_ad.runtime.preprocess import DEFAULT_FIT, FITS, Geometry, prepare
from edge_ad.runtime.result import Result
from edge_ad.runtime.tiling import plan_view, tile_boxes
from edge_ad.stream import IterableSource

SIDE = 32
DARK, BRIGHT = 20, 250


# A toy bundle: anomaly map = brightness -----------------------------------------------------------------------

def brightness_graph(side: int) -> onnx.ModelProto:
    """uint8 N x side x side x 3 -> the channel mean, N x 1 x side x side."""
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("ReduceMean", ["t"], ["raw_map"], axes=[1], keepdims=1)]
    graph = helper.make_graph(nodes, "brightness",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", side, side, 3])],
                              [helper.make_tensor_value_info("raw_map", TensorProto.FLOAT, ["batch", 1, side, side])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def brightness_bundle(out: Path, geometry: dict, side: int = SIDE) -> Path:
    meta = {"model": "toy", "config": {},
            "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "RGB", "height": side,
                      "width": side},
            "outputs": [{"name": "raw_map", "dtype": "float32", "shape": ["batch", 1, side, side]}],
            "geometry": geometry,
            "heatmap": {"output_size": [side, side], "smooth": "box", "sigma": 0.0, "window": 1,
                        "align_corners": False, "score_from": "raw"},
            "calibration": {"image_threshold": 128.0, "image_norm": [0.0, 255.0], "pixel_threshold": 128.0,
                            "pixel_norm": [0.0, 255.0], "normal_images": 4},
            "metrics": None, "engines": {}}
    return write_bundle(out, meta, lambda folder: onnx.save(brightness_graph(side), str(folder / "model.onnx"))).path


@pytest.fixture(scope="module")
def toy_detectors(tmp_path_factory) -> dict[str, Detector]:
    root = tmp_path_factory.mktemp("toy")
    out = {}
    for fit in FITS:
        geometry = {"resize": [SIDE + 4, SIDE + 4], "crop": [SIDE, SIDE], "fit": fit}
        out[fit] = edge_ad.load(brightness_bundle(root / fit, geometry), backend="onnxruntime-cpu", color="RGB")
    return out


def frame_with_spot(h: int = 240, w: int = 320, y: int = 40, x: int = 250, size: int = 24) -> np.ndarray:
    frame = np.full((h, w, 3), DARK, np.uint8)
    frame[y:y + size, x:x + size] = BRIGHT
    return frame


# The fit ----------------------------------------------------------------------------------------------------

def test_the_fit_is_recorded_and_a_geometry_without_one_means_crop() -> None:
    old = Geometry.from_dict({"resize": [72, 72], "crop": [64, 64]})
    assert old.fit == "crop"
    for fit in FITS:
        g = Geometry((72, 72), (64, 64), fit)
        assert g.to_dict()["fit"] == fit and Geometry.from_dict(g.to_dict()) == g
    assert Geometry.for_model(64, 72).fit == DEFAULT_FIT != "crop"     # new runs inspect every pixel
    with pytest.raises(ValueError, match="squash, letterbox, crop"):
        Geometry((72, 72), (64, 64), "fisheye")


def test_crop_prepares_as_before_and_squash_and_letterbox_keep_every_pixel() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (120, 320, 3), np.uint8)
    old = cv2.resize(frame, (72, 72), interpolation=cv2.INTER_AREA)[4:68, 4:68]     # resize, then centre crop
    assert np.array_equal(prepare(frame, Geometry((72, 72), (64, 64))), old)
    squash = prepare(frame, Geometry((72, 72), (64, 64), "squash"))
    assert np.array_equal(squash, cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA))
    letterbox = Geometry((72, 72), (64, 64), "letterbox")
    boxed = prepare(frame, letterbox)
    top, left, h, w = letterbox.letterbox(120, 320)
    assert (top, left, h, w) == (20, 0, 24, 64)                            # aspect 8:3 kept
    assert not boxed[:top].any() and not boxed[top + h:].any()             # padded black
    assert np.array_equal(boxed[top:top + h], cv2.resize(frame, (64, 24), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("fit", FITS)
def test_the_heat_map_comes_back_where_the_pixels_were(toy_detectors, fit) -> None:
    """A bright spot lands at its own place in the heat map, whatever the fit; squash and letterbox
    inspect every pixel (no zero border, no letterbox padding in the map), crop leaves its border out."""
    result = toy_detectors[fit].predict(frame_with_spot())
    heat = result.heatmap
    assert heat.shape == (240, 320)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 40 - 4 <= y < 40 + 24 + 4 and 250 - 4 <= x < 250 + 24 + 4, (y, x)
    assert result.mask[40 + 12, 250 + 12] == 1 and result.mask[200, 40] == 0
    borders = [heat[:3].min(), heat[-3:].min(), heat[:, :3].min(), heat[:, -3:].min()]
    if fit == "crop":
        assert max(borders) == 0.0                                       # the strips it never sees
    else:
        assert min(borders) >= 0.5 * DARK / 255                          # seen: the dark frame's level, not 0


def test_old_bundles_load_as_crop_and_an_unknown_fit_is_refused(tmp_path) -> None:
    old = brightness_bundle(tmp_path / "old", {"resize": [SIDE + 4, SIDE + 4], "crop": [SIDE, SIDE]})
    assert edge_ad.load(old, backend="onnxruntime-cpu").geometry.fit == "crop"
    meta = json.loads((old / "meta.json").read_text())
    meta["geometry"]["fit"] = "fisheye"
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"geometry\.fit.*'squash', 'letterbox', 'crop'"):
        read_bundle(old)


# Regions of interest ---------------------------------------------------------------------------------------

def test_a_roi_is_all_the_model_sees_and_its_maps_come_back_at_full_size(toy_detectors) -> None:
    det = toy_detectors["squash"]
    frame = frame_with_spot(y=40, x=250)
    frame[150:180, 20:50] = BRIGHT                          # a second spot, outside the ROI
    roi = (0, 100, 160, 140)                                # x, y, w, h: the lower left, holding that spot
    inside = det.predict(frame[100:240, 0:160])
    result = det.predict(frame, roi=roi)
    assert result.roi == roi and result.heatmap.shape == (240, 320)
    assert result.score == pytest.approx(inside.score)
    assert np.allclose(result.heatmap[100:240, 0:160], inside.heatmap, atol=1e-6)
    outside = np.ones((240, 320), bool)
    outside[100:240, 0:160] = False
    assert not result.heatmap[outside].any() and not result.mask[outside].any()
    assert result.mask[165, 35] == 1
    # the spot outside the ROI: the frame's own maximum, not seen
    assert det.predict(frame, roi="0,0,160,90").score < det.predict(frame).score


def test_rois_are_checked_against_each_frame_with_a_clear_error(toy_detectors) -> None:
    det = toy_detectors["squash"]
    with pytest.raises(RoiError, match=r"image 1: region of interest 200,0,200,50 .*past the 320x240 frame"):
        det.predict([frame_with_spot(), frame_with_spot()], roi=[None, (200, 0, 200, 50)])
    with pytest.raises(RoiError, match="four whole numbers"):
        det.predict(frame_with_spot(), roi="10,10,50")
    with pytest.raises(RoiError, match="2 regions of interest for 3 images"):
        det.predict([frame_with_spot()] * 3, roi=[None, (0, 0, 5, 5)])
    assert parse_roi(" 1, 2,3 ,4") == (1, 2, 3, 4)
    with pytest.raises(RoiError, match="width and height >= 1"):
        parse_roi((0, 0, 0, 4))


def test_a_stream_has_a_roi_per_source_and_a_roi_that_does_not_fit_fails_only_its_source(toy_detectors) -> None:
    det = toy_detectors["squash"]
    frames = [frame_with_spot() for _ in range(3)]
    stream = det.stream([IterableSource(frames, "cam1", color="RGB"), IterableSource(frames, "cam2", color="RGB"),
                         IterableSource(frames, "cam3", color="RGB")],
                        roi=[(0, 100, 160, 140), None, (300, 0, 100, 10)])
    items = list(stream)
    by_source = {name: [i for i in items if i.frame.source == name] for name in ("cam1", "cam2", "cam3")}
    assert len(by_source["cam1"]) == len(by_source["cam2"]) == 3 and not by_source["cam3"]
    assert all(not i.result.heatmap[:100].any() and i.result.roi == (0, 100, 160, 140) for i in by_source["cam1"])
    assert all(i.result.heatmap[:100].any() for i in by_source["cam2"])
    cam3 = stream.summary()["sources"]["cam3"]
    assert cam3["state"] == "failed" and "300,0,100,10" in cam3["reason"] and "320x240" in cam3["reason"]


def test_the_cli_refuses_a_malformed_roi_or_tiles(tiny_bundle, capsys) -> None:
    for flag, value, message in (("--roi", "1,2,3", "four whole numbers"), ("--tiles", "2by2", "ROWSxCOLS")):
        assert main(["stream", str(tiny_bundle), "--source", "0", flag, value]) == 2
        assert message in capsys.readouterr().err
    assert main(["stream", str(tiny_bundle), "--source", "0", "--source", "1", "--roi", "0,0,8,8", "--roi", "full",
                 "--roi", "0,0,4,4"]) == 2
    assert "--roi was given 3 times for 2 --source(s)" in capsys.readouterr().err


# Tiling ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h, w, rows, cols, overlap", [(240, 320, 2, 3, 0.1), (1000, 700, 4, 4, 0.25),
                                                        (97, 53, 3, 2, 0.0), (64, 64, 1, 1, 0.1)])
def test_tiles_cover_the_area_with_the_overlap_asked(h, w, rows, cols, overlap) -> None:
    boxes = tile_boxes(h, w, rows, cols, overlap)
    assert len(boxes) == rows * cols and len({(bh, bw) for _, _, bh, bw in boxes}) == 1
    covered = np.zeros((h, w), int)
    for top, left, bh, bw in boxes:
        assert top >= 0 and left >= 0 and top + bh <= h and left + bw <= w
        covered[top:top + bh, left:left + bw] += 1
    assert covered.min() >= 1
    _, _, th, tw = boxes[0]
    if rows > 1:
        assert boxes[0][0] + th - boxes[cols][0] >= overlap * th - 1      # neighbours share the overlap
    if cols > 1:
        assert boxes[0][1] + tw - boxes[1][1] >= overlap * tw - 1
    assert parse_tiles(f"{rows}x{cols}") == (rows, cols)


def test_tiles_are_stitched_by_maximum_and_the_score_is_the_highest_tile(toy_detectors) -> None:
    det = toy_detectors["squash"]
    frame = frame_with_spot(480, 640, y=420, x=20)          # near the lower left corner
    frame[200:260, 300:340] = 140                            # a dimmer patch across tiles
    tiled = det.predict(frame, tiles="2x3", overlap=0.2)
    boxes = [box for box, _ in tiled.parts]
    assert len(boxes) == 6 and boxes == [b for b in det.views([(480, 640)], tiles=(2, 3), overlap=0.2)[0].boxes]
    singles = det.predict([frame[t:t + h, l:l + w] for t, l, h, w in boxes])
    assert tiled.score == pytest.approx(max(r.score for r in singles))
    want = np.zeros((480, 640), np.float32)
    for (t, l, h, w), single in zip(boxes, singles):
        np.maximum(want[t:t + h, l:l + w], single.heatmap, out=want[t:t + h, l:l + w])
    assert np.allclose(tiled.heatmap, want, atol=1e-6)


class Recording(BaseBackend):
    """The real ONNX Runtime backend, taking at most `max_batch` images a call, recording each call's size."""

    def __init__(self, inner, max_batch: int) -> None:
        self.inner, self.max_batch, self.name, self.calls = inner, max_batch, inner.name, []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        assert len(batch) <= self.max_batch
        self.calls.append(len(batch))
        return self.inner.infer(batch)


def test_the_tiles_of_every_image_go_through_one_batch_in_chunks_of_the_engine_max(toy_detectors) -> None:
    det = toy_detectors["letterbox"]
    recording = Recording(det.backend, max_batch=4)
    chunked = Detector(det.bundle, recording, color="RGB")
    frames = [frame_with_spot(y=10 + 50 * i) for i in range(3)]
    results = chunked.predict(frames, tiles=(2, 3), roi=(0, 0, 300, 200))
    assert recording.calls == [4, 4, 4, 4, 2]                            # 3 images x 6 tiles = 18 rows
    want = det.predict(frames, tiles=(2, 3), roi=(0, 0, 300, 200))
    for got, ref in zip(results, want):
        assert got.score == pytest.approx(ref.score) and np.allclose(got.heatmap, ref.heatmap)
    assert np.allclose(chunked.scores(frames, tiles=(2, 3), roi=(0, 0, 300, 200)), [r.score for r in want])


def test_a_small_defect_near_a_corner_is_found_with_tiles_and_missed_without(tiny_trained) -> None:
    """A large frame: an 8 x 8 grid of the category's normal parts (2048 px square), with a small foreign
    object (56 px, a striped patch: 2.7% of the frame's side) near one corner. The whole frame shrunk to
    the 64 px model input leaves it under 2 px: not flagged. Tiled 8x8 (one part per tile, no overlap:
    a tile across two parts would be a view the model never saw), it is ~14 px in its tile: flagged, and
    the heat map peaks on it. The same frame without it is not flagged either way, so the tiles find the
    defect, not the tiling. Every corner, two patterns."""
    trained = tiny_trained("mkd")
    det = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu", color="RGB")
    parts = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
             for p in sorted((Path(trained["data"]) / "train" / "good").glob("*.png"))]
    n = 8
    frame = np.concatenate([np.concatenate([parts[(r * n + c) % len(parts)] for c in range(n)], axis=1)
                            for r in range(n)], axis=0)
    size, margin = 56, 16
    tiles = {"tiles": (n, n), "overlap": 0.0}
    assert not det.predict(frame).is_anomalous and not det.predict(frame, **tiles).is_anomalous
    for pattern in ("stripes", "checks"):
        patch = np.zeros((size, size, 3), np.uint8)
        patch[..., 0] = 255
        if pattern == "stripes":
            patch[::6] = 255
        else:
            patch[(np.add.outer(np.arange(size), np.arange(size)) // 7) % 2 == 0] = (0, 255, 0)
        for y in (margin, frame.shape[0] - margin - size):
            for x in (margin, frame.shape[1] - margin - size):
                bad = frame.copy()
                bad[y:y + size, x:x + size] = patch
                whole, tiled = det.predict(bad), det.predict(bad, **tiles)
                where = f"{pattern} at ({x}, {y}): whole {whole.score:.1f}, tiled {tiled.score:.1f}, " \
                        f"threshold {det.threshold:.1f}"
                assert tiled.is_anomalous and not whole.is_anomalous, where
                py, px = np.unravel_index(np.argmax(tiled.heatmap), tiled.heatmap.shape)
                assert abs(py - (y + size / 2)) < 64 and abs(px - (x + size / 2)) < 64, (where, py, px)


# Training records the fit and agrees with the runtime ----------------------------------------------------------

def test_a_letterbox_run_trains_exports_and_matches_the_runtime(tmp_path, assert_runtime_matches_training) -> None:
    """The conveyor category is 4:3: letterboxing pads it. Training prepares its images with the run's
    geometry, the bundle records it, and the runtime computes the same maps from the same pixels."""
    from edge_ad.data.synthetic import Counts, make_category
    from edge_ad.training.run import TrainConfig, train
    from edge_ad_export.exporter import export_run

    data = make_category(tmp_path / "data", "conveyor", counts=Counts(train=8, test_good=2, test_per_defect=1), seed=5)
    train(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4, fit="letterbox",
                      model_kwargs={"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32}))
    bundle = export_run(tmp_path / "run", tmp_path / "bundle").path
    assert read_bundle(bundle).meta["geometry"]["fit"] == "letterbox"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["geometry"]["fit"] == "letterbox"
    assert_runtime_matches_training(tmp_path / "run", bundle, data)
    result = edge_ad.load(bundle, backend="onnxruntime-cpu").predict(np.full((240, 320, 3), 90, np.uint8))
    assert result.heatmap.shape == (240, 320)


# Review: every pixel of the ROI is seen under every fit; view errors per image; ASCII digits only ----------

COVERAGE_FRAMES = [(480, 640), (37, 53), (1000, 17), (64, 64), (9, 7)]
COVERAGE_GRIDS = [(1, 1), (1, 4), (3, 4), (2, 2), (5, 3), (16, 16)]
COVERAGE_GEOMETRIES = [((72, 72), (64, 64)), ((256, 256), (224, 224)), ((100, 90), (60, 50))]


def _seen(view, geometry: Geometry) -> np.ndarray:
    """The pixels of the image that some model input of `view` shows (what Result stitches)."""
    parts = tuple((box, np.ones(geometry.crop, np.float32)) for box in view.boxes)
    result = Result(0.0, 0.0, False, parts[0][1], view.size, geometry, (0.0, 1.0), 0.5, parts=parts)
    _ = result.heatmap
    return result._seen


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("resize, crop", COVERAGE_GEOMETRIES)
def test_tiles_leave_no_seam_unseen_and_see_nothing_outside_the_roi(fit, resize, crop) -> None:
    """Under "crop" the tiles grow so their centres meet; only the frame's own border strip (the
    untiled crop fit's) may stay unseen, and nothing outside the ROI is painted."""
    geometry = Geometry(resize, crop, fit)
    checked = 0
    for (h, w), (rows, cols), overlap in itertools.product(COVERAGE_FRAMES, COVERAGE_GRIDS, (0.0, 0.1, 0.3)):
        for roi in (None, (w // 5, h // 5, max(cols, w // 2), max(rows, h // 2))):
            if rows > h or cols > w or (roi and (roi[0] + roi[2] > w or roi[1] + roi[3] > h)):
                continue
            view = plan_view((h, w), roi, (rows, cols), overlap, geometry=geometry)
            x, y, rw, rh = roi or (0, 0, w, h)
            inside = np.zeros((h, w), bool)
            inside[y:y + rh, x:x + rw] = True
            top, left, bh, bw = geometry.region(h, w)
            reachable = np.zeros((h, w), bool)
            reachable[top:top + bh, left:left + bw] = True
            seen = _seen(view, geometry)
            where = f"{fit} {crop} frame {h}x{w} tiles {rows}x{cols} overlap {overlap} roi {roi}"
            assert not (inside & reachable & ~seen).any(), f"unseen pixels in the ROI: {where}"
            assert not (seen & ~inside).any(), f"pixels outside the ROI painted: {where}"
            assert all(0 <= t and 0 <= l and t + bh <= h and l + bw <= w for t, l, bh, bw in view.boxes), where
            checked += 1
    assert checked > 100


def test_crop_tiles_of_the_review_case_have_no_gap_and_one_tile_is_the_whole_frame() -> None:
    geometry = Geometry((72, 72), (64, 64), "crop")
    for overlap in (0.0, 0.1):
        seen = _seen(plan_view((480, 640), None, "1x4", overlap, geometry=geometry), geometry)
        assert seen[100:380, 40:600].all()
    assert plan_view((480, 640), None, None, geometry=geometry).whole


def test_an_image_smaller_than_the_tile_grid_is_a_view_error_naming_its_size_and_the_tiles() -> None:
    with pytest.raises(ViewError, match=r"1x1 image.*tiles 16x16"):
        plan_view((1, 1), None, "16x16")
    with pytest.raises(TilingError, match=r"the 3x2 region of interest of the 640x480 image.*tiles 4x4"):
        plan_view((480, 640), (10, 10, 3, 2), (4, 4))
    assert issubclass(RoiError, ViewError) and issubclass(ViewError, ValueError)


def test_a_tile_blown_up_past_the_limit_is_warned_about_once(caplog) -> None:
    geometry = Geometry((72, 72), (61, 61), "squash")          # a model input size no other test uses
    with caplog.at_level(logging.WARNING, logger="edge_ad.runtime.tiling"):
        for _ in range(3):
            plan_view((480, 640), (1, 2, 5, 7), None, geometry=geometry)
        plan_view((480, 640), (1, 2, 300, 200), None, geometry=geometry)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "5x7" in warned[0] and "enlarged" in warned[0]


@pytest.mark.parametrize("text", ["１,2,3,4", "1,2,٣,4"])
def test_a_roi_takes_ascii_digits_only(text) -> None:
    with pytest.raises(RoiError):
        parse_roi(text)


@pytest.mark.parametrize("text", ["٣x٣", "２x2"])
def test_tiles_take_ascii_digits_only(text) -> None:
    with pytest.raises(ValueError, match="ROWSxCOLS"):
        parse_tiles(text)
