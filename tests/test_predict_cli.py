"""`edge-ad predict`: files, folders and globs in; overlays, results.csv and results.jsonl out; bad files
skipped and reported; a real bundle on ONNX Runtime (the session's tiny SimpleNet)."""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad.cli import main
from edge_ad.runtime.overlays import GAP, render_panel
from edge_ad.runtime.predict_files import collect_images, entry_problem, overlay_names, printable

H, W = 200, 256               # no display scaling at this size: an overlay's left half is the original


def _image(seed: int, defect: bool = False) -> np.ndarray:
    """A textured BGR image; `defect` paints a bright blob the model should score higher."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(60, 120, (H, W, 3), dtype=np.uint8), (5, 5), 0)
    if defect:
        cv2.circle(image, (W // 2, H // 2), 30, (255, 255, 255), -1)
    return image


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """in/a/x.png, in/b/x.png (same name), in/b/deep/y.jpg, a text file, a hidden folder, a corrupt file."""
    root = tmp_path / "in"
    _write(root / "a" / "x.png", _image(0))
    _write(root / "b" / "x.png", _image(1, defect=True))
    _write(root / "b" / "deep" / "y.jpg", _image(2))
    (root / "b" / "notes.txt").write_text("not an image")
    _write(root / ".cache" / "hidden.png", _image(3))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)     # a PNG signature, then nothing
    return tmp_path


def _rows(out: Path) -> tuple[list[dict], list[dict]]:
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    return table, lines


def _predict(bundle, *args: str) -> int:
    return main(["predict", str(bundle), *args, "--backend", "onnxruntime-cpu"])


def test_files_folders_and_globs_give_overlays_and_results(tiny_bundle, tree, capsys) -> None:
    out = tree / "out"
    status = _predict(tiny_bundle, str(tree / "in"), str(tree / "broken.png"), str(tree / "in" / "**" / "x.png"),
                      "--out", str(out))
    assert status == 2                                   # one image could not be read
    table, lines = _rows(out)
    paths = [Path(r["path"]) for r in table]
    # the folder recursively (no text file, no hidden folder), then the named file; the glob's files were seen already
    assert paths == [tree / "in/a/x.png", tree / "in/b/deep/y.jpg", tree / "in/b/x.png", tree / "broken.png"]
    assert [r["path"] for r in lines] == [r["path"] for r in table]
    broken = table[3]
    assert broken["verdict"] == "" and broken["overlay"] == "" and "corrupt" in broken["error"]
    assert lines[3]["score"] is None and lines[3]["error"] == broken["error"]
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    want = det.predict(paths[:3])                        # Detector.predict takes paths too
    for row, line, result in zip(table, lines, want):
        assert float(row["score"]) == pytest.approx(result.score, rel=1e-5)
        assert line["normalized_score"] == pytest.approx(result.normalized_score, abs=1e-6)
        assert row["verdict"] == ("anomalous" if result.is_anomalous else "normal") and row["error"] == ""
    overlays = [r["overlay"] for r in table[:3]]
    # named by their path below the folder all inputs share (broken.png's): same-named files kept apart
    assert overlays == ["overlays/in__a__x.png", "overlays/in__b__deep__y.png", "overlays/in__b__x.png"]
    for row, path in zip(table[:3], paths):
        panel = cv2.imread(str(out / row["overlay"]))
        assert panel.shape[1] == 2 * W + GAP and panel.shape[0] > H            # caption over original | heat map
        assert np.array_equal(panel[-H:, :W], cv2.imread(str(path)))           # the original, untouched
        assert not np.array_equal(panel[-H:, W + GAP:], panel[-H:, :W])        # the heat map over it
    summary = capsys.readouterr()
    assert "predicted 3 of 4 images" in summary.out and "1 failed" in summary.out
    assert "broken.png" in summary.err


def test_predict_takes_a_path_and_scores_as_an_array(tiny_bundle, tree) -> None:
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    path = tree / "in" / "b" / "x.png"
    by_path, by_array = det.predict(str(path)), det.predict(cv2.imread(str(path)))
    assert by_path.score == pytest.approx(by_array.score, rel=1e-6)
    assert by_path.heatmap.shape == (H, W)


def test_odd_names_survive_csv_and_jsonl_and_all_read_exits_0(tiny_bundle, tmp_path) -> None:
    names = ["comma, and \"quotes\".png", "line\nbreak.png", "=HYPERLINK(1).png", "café ü.png"]
    for i, name in enumerate(names):
        _write(tmp_path / "in" / name, _image(10 + i))
    out = tmp_path / "out"
    assert _predict(tiny_bundle, str(tmp_path / "in"), "--out", str(out)) == 0
    table, lines = _rows(out)
    got = sorted(Path(r["path"]).name for r in lines)
    assert got == sorted(names)                                             # JSON keeps every name exactly
    by_name = {Path(r["path"]).name: r for r in lines}
    for row in table:                                                       # the CSV too, formulas defused
        name = row["path"].lstrip("'").rsplit("/", 1)[-1]
        assert name in by_name and row["overlay"] == by_name[name]["overlay"]
        assert row["path"].startswith("'") == row["path"].lstrip("'").startswith("=")
    assert len({r["overlay"] for r in lines}) == len(names)
    assert all((out / r["overlay"]).is_file() and "\n" not in r["overlay"] for r in lines)


def test_batches_give_the_same_results_and_rerun_needs_overwrite(tiny_bundle, tree, capsys) -> None:
    first, second = tree / "one", tree / "two"
    assert _predict(tiny_bundle, str(tree / "in"), "--out", str(first), "--batch", "1") == 0
    assert _predict(tiny_bundle, str(tree / "in"), "--out", str(second), "--batch", "8") == 0
    one, two = _rows(first)[1], _rows(second)[1]
    assert [r["score"] for r in one] == pytest.approx([r["score"] for r in two], rel=1e-5)
    capsys.readouterr()
    assert _predict(tiny_bundle, str(tree / "in" / "a"), "--out", str(first)) == 2     # earlier results: refused
    assert "--overwrite" in capsys.readouterr().err
    assert len(_rows(first)[1]) == 3                                         # untouched
    assert _predict(tiny_bundle, str(tree / "in" / "a"), "--out", str(first), "--overwrite") == 0
    assert len(_rows(first)[1]) == 1 and sorted(p.name for p in (first / "overlays").iterdir()) == ["x.png"]


def test_nothing_to_read_fails_before_anything_is_written(tiny_bundle, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert _predict(tiny_bundle, str(tmp_path / "missing.png"), "--out", str(out)) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert _predict(tiny_bundle, str(tmp_path / "*.png"), "--out", str(out)) == 2
    assert "matches no file" in capsys.readouterr().err
    assert not out.exists()
    assert _predict(tiny_bundle, str(tmp_path), "--out", str(out), "--threshold", "1", "--sensitivity", "0.5") == 2


def test_the_output_folder_is_never_read_back(tmp_path) -> None:
    _write(tmp_path / "a.png", _image(0))
    _write(tmp_path / "out" / "overlays" / "a.png", _image(1))
    assert collect_images([str(tmp_path)], exclude=tmp_path / "out") == [tmp_path / "a.png"]


def test_overlay_names_are_distinct_and_plain() -> None:
    names = overlay_names([Path("/d/a/x.png"), Path("/d/b/x.png"), Path("/d/a/x.jpg"), Path("/d/a/X.png"),
                           Path("/d/a/we ird;name.png")])
    assert names == ["a__x.png", "b__x.png", "a__x-2.png", "a__X-3.png", "a__we_ird_name.png"]


def test_the_mask_is_outlined_and_the_caption_drawn() -> None:
    image = np.full((240, 240, 3), 90, np.uint8)
    heat = np.zeros((240, 240), np.float32)
    mask = np.zeros((240, 240), np.uint8)
    mask[80:160, 100:180] = 1
    heat[mask == 1] = 1.0
    panel = render_panel(image, heat, mask, [("ANOMALY", (0, 0, 255))])
    body = panel[-240:, 240 + GAP:]
    white = np.all(body == 255, axis=2)
    ys, xs = np.nonzero(white)
    assert white.sum() > 4 * 60                                     # the outline of the 80 x 80 region
    assert ys.min() >= 76 and ys.max() <= 163 and xs.min() >= 96 and xs.max() <= 183
    assert not white[110:130, 130:150].any()                        # its inside is the heat map, not filled
    caption = panel[:-240]
    assert (np.all(caption == (0, 0, 255), axis=2)).any()           # red caption text


def _takes_operating_point() -> bool:
    return "threshold" in inspect.signature(edge_ad.runtime.load).parameters


@pytest.mark.skipif(not _takes_operating_point(), reason="edge_ad.load has no threshold/sensitivity keywords yet")
def test_threshold_decides_the_verdicts(tiny_bundle, tree) -> None:
    shutil.rmtree(tree / "in" / ".cache")
    for value, verdict in (("-1e30", "anomalous"), ("1e30", "normal")):
        out = tree / f"out{verdict}"
        assert _predict(tiny_bundle, str(tree / "in"), "--out", str(out), f"--threshold={value}") == 0
        assert {r["verdict"] for r in _rows(out)[0]} == {verdict}


def test_roi_and_tiles_reach_the_detector_and_a_roi_that_misses_is_one_error_row(tiny_bundle, tmp_path) -> None:
    big, small = _image(5), cv2.resize(_image(6), (120, 90))
    _write(tmp_path / "in" / "big.png", big)
    _write(tmp_path / "in" / "small.png", small)
    out = tmp_path / "out"
    code = _predict(tiny_bundle, str(tmp_path / "in"), "--out", str(out), "--roi", "10,20,200,150", "--tiles", "1x2")
    assert code == 2                                        # small.png: the ROI does not fit it
    table = {Path(r["path"]).name: r for r in _rows(out)[0]}
    assert "region of interest" in table["small.png"]["error"] and not table["big.png"]["error"]
    with edge_ad.load(tiny_bundle, backend="onnxruntime-cpu") as detector:
        want = detector.predict(big, roi=(10, 20, 200, 150), tiles="1x2")
        whole = detector.predict(big)
    assert float(table["big.png"]["score"]) == pytest.approx(want.score, rel=1e-5)
    assert want.score != pytest.approx(whole.score, rel=1e-5)   # the options changed what was scored


def test_hostile_entries_and_a_too_small_image_get_error_rows_and_the_rest_go_on(tiny_bundle, tmp_path) -> None:
    """A link loop, a dangling link, a FIFO (never opened: it would hang), an image smaller than the
    tile grid: each its own error row; a name that is not UTF-8 is written as \\xNN in both files."""
    folder = tmp_path / "in"
    _write(folder / "good.png", _image(20))
    _write(folder / "tiny.png", np.zeros((1, 1, 3), np.uint8))
    os.rename(folder / "good.png", os.fsdecode(bytes(folder) + b"/bad\xffname.png"))
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "dangling.png").symlink_to("missing.png")
    os.mkfifo(folder / "fifo.png")
    out = tmp_path / "out"
    assert _predict(tiny_bundle, str(folder), "--out", str(out), "--tiles", "16x16") == 2
    table, lines = _rows(out)
    assert [Path(r["path"]).name for r in lines] == ["bad\\xffname.png", "dangling.png", "fifo.png", "loop.png",
                                                      "tiny.png"]
    assert [Path(r["path"]).name for r in table] == [Path(r["path"]).name for r in lines]
    errors = {Path(r["path"]).name: r["error"] for r in lines}
    assert errors["bad\\xffname.png"] is None and lines[0]["verdict"] in ("normal", "anomalous")
    assert "symbolic link loop" in errors["loop.png"]
    assert "link to a missing file" in errors["dangling.png"]
    assert "FIFO" in errors["fifo.png"]
    assert "1x1 image" in errors["tiny.png"] and "tiles 16x16" in errors["tiny.png"]


def test_a_loop_named_on_the_command_line_is_collected_not_a_crash(tmp_path) -> None:
    (tmp_path / "loop.png").symlink_to("loop.png")
    assert collect_images([str(tmp_path / "loop.png"), str(tmp_path)]) == [tmp_path / "loop.png"]
    assert "loop" in entry_problem(tmp_path / "loop.png")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root lists any folder")
def test_a_folder_that_cannot_be_listed_is_an_error_row(tmp_path) -> None:
    locked = tmp_path / "in" / "locked"
    locked.mkdir(parents=True)
    _write(tmp_path / "in" / "a.png", _image(21))
    locked.chmod(0)
    try:
        found = collect_images([str(tmp_path / "in")])
        assert locked in found and "cannot be listed" in entry_problem(locked)
    finally:
        locked.chmod(0o755)


def test_a_roi_error_says_region_of_interest_once(tiny_bundle, tmp_path) -> None:
    _write(tmp_path / "in" / "small.png", cv2.resize(_image(7), (40, 30)))
    out = tmp_path / "out"
    assert _predict(tiny_bundle, str(tmp_path / "in"), "--out", str(out), "--roi", "10,10,100,100") == 2
    error = _rows(out)[1][0]["error"]
    assert error.count("region of interest") == 1, error


def test_printable_escapes_the_bytes_of_a_name_that_is_not_utf8() -> None:
    assert printable(os.fsdecode(b"bad\xffname.png")) == "bad\\xffname.png"
    assert printable("café ü.png") == "café ü.png"
    assert printable("\ud800") == "\\ud800"                       # a surrogate no file name decodes to
