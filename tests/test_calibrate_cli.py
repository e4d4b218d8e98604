"""`edge-ad calibrate` end to end on a real tiny bundle (a copy per test), and `stream --threshold`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import edge_ad
import edge_ad.bundle as bundle_module
from edge_ad.bundle import read_bundle
from edge_ad.cli import main


@pytest.fixture(scope="module")
def line_images(tmp_path_factory) -> dict[str, Path]:
    """Good and defective images of the tiny bundle's category, as a line would collect them: good/
    (30 images) and bad/ (one folder per defect type), and the whole test/ folder (both)."""
    from edge_ad.data.synthetic import Counts, make_category

    root = tmp_path_factory.mktemp("line")
    data = make_category(root / "data", "conveyor", counts=Counts(train=1, test_good=30, test_per_defect=2), seed=11)
    bad = root / "bad"
    for defect in (data / "test").iterdir():
        if defect.name != "good":
            shutil.copytree(defect, bad / defect.name)
    return {"good": data / "test" / "good", "bad": bad, "test": data / "test"}


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the session's tiny bundle (its links kept), safe to rewrite."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy, symlinks=True)
    return copy


def _error(err: str) -> str:
    """The one error line of a refused command (log and progress lines aside)."""
    [line] = [line for line in err.splitlines() if line.startswith("edge-ad calibrate: error:")]
    return line


def _good_scores(bundle: Path, folder: Path) -> np.ndarray:
    with edge_ad.load(bundle, backend="onnxruntime-cpu") as det:
        return det.scores(sorted(folder.glob("*.png")))


def test_target_fpr_is_met_written_and_the_history_kept(bundle, line_images, capsys) -> None:
    before = read_bundle(bundle).meta
    code = main(["calibrate", str(bundle), "--good", str(line_images["good"]), "--bad", str(line_images["bad"]),
                 "--target-fpr", "0.1", "--backend", "onnxruntime-cpu"])
    out = capsys.readouterr().out
    assert code == 0
    meta = read_bundle(bundle).meta                           # checksums verify after the rewrite
    cal = meta["calibration"]
    assert cal["method"] == "target-fpr" and cal["target"] == 0.1
    assert cal["good_images"] == 30 and cal["bad_images"] == len(list(line_images["bad"].rglob("*.png")))
    assert cal["pixel_threshold"] == before["calibration"]["pixel_threshold"]       # the pixel calibration is kept
    assert meta["files"] == before["files"]
    [old] = meta["calibration_history"]
    assert old["method"] == "training" and old["image_threshold"] == before["calibration"]["image_threshold"]
    assert old["replaced_at"] == cal["calibrated_at"]
    scores = _good_scores(bundle, line_images["good"])
    flagged = int((scores > cal["image_threshold"]).sum())
    assert flagged == 3                                       # 10% of 30: the smallest threshold that meets it
    assert cal["operating_point"]["false_positive_rate"] == pytest.approx(0.1)
    assert "false-positive rate 0.1000 (3 of 30 good flagged)" in out and "recall" in out
    with edge_ad.load(bundle, backend="onnxruntime-cpu") as det:     # the runtime uses the new threshold
        assert det.threshold == cal["image_threshold"]
        assert det.predict(str(sorted(line_images["good"].glob("*.png"))[0])).normalized_score >= 0


def test_a_second_calibration_appends_to_the_history(bundle, line_images, capsys) -> None:
    assert main(["calibrate", str(bundle), "--good", str(line_images["good"]), "--f1", "--bad",
                 str(line_images["bad"]), "--backend", "onnxruntime-cpu"]) == 0
    assert main(["calibrate", str(bundle), "--good", str(line_images["good"]), "--backend", "onnxruntime-cpu"]) == 0
    meta = read_bundle(bundle).meta
    assert [h["method"] for h in meta["calibration_history"]] == ["training", "f1-max"]
    assert meta["calibration"]["method"] == "mean+3std" and meta["calibration"]["target"] is None
    scores = _good_scores(bundle, line_images["good"])
    assert meta["calibration"]["image_threshold"] == pytest.approx(scores.mean() + 3 * scores.std(ddof=1), rel=1e-6)


def test_an_interrupted_rewrite_leaves_the_old_calibration(bundle, line_images, monkeypatch, capsys) -> None:
    meta_file = Path(os.path.realpath(bundle / "meta.json"))
    before = meta_file.read_bytes()
    real_replace = os.replace

    def crash_on_meta(src, dst, *args, **kwargs):
        if Path(dst).name == "meta.json":
            raise OSError(5, "Input/output error (simulated crash)", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(bundle_module.os, "replace", crash_on_meta)
    code = main(["calibrate", str(bundle), "--good", str(line_images["good"]), "--target-fpr", "0.2",
                 "--backend", "onnxruntime-cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "calibration is unchanged" in _error(err)
    assert meta_file.read_bytes() == before
    assert read_bundle(bundle).meta["calibration"].get("method") is None
    assert not [p.name for p in meta_file.parent.iterdir() if p.name.endswith(".partial")]


def test_dry_run_writes_nothing(bundle, line_images, capsys) -> None:
    before = Path(os.path.realpath(bundle / "meta.json")).read_bytes()
    assert main(["calibrate", str(bundle), "--good", str(line_images["good"]), "--target-fpr", "0.01",
                 "--dry-run", "--backend", "onnxruntime-cpu"]) == 0
    captured = capsys.readouterr()
    assert "dry run" in captured.out
    assert "needs at least 100" in captured.err               # 30 good images cannot measure 1%
    assert Path(os.path.realpath(bundle / "meta.json")).read_bytes() == before


@pytest.mark.parametrize("flags, message", [
    (["--target-recall", "0.9"], "--target-recall needs defective images (--bad DIR)"),
    (["--f1"], "--f1 needs defective images"),
    (["--target-fpr", "1"], "--target-fpr must be a number at least 0 and below 1"),
    (["--target-fpr", "1e-320"], "--target-fpr 1e-320 cannot be measured"),
    (["--bad", "{test}"], "under both --good and --bad"),
    (["--bad", "{missing}"], "--bad folder"),
    (["--bad", "{empty}"], "holds no image"),
])
def test_wrong_flags_and_folders_are_one_line_and_exit_2(bundle, line_images, tmp_path, capsys, flags,
                                                         message) -> None:
    (tmp_path / "empty").mkdir()
    places = {"test": line_images["test"], "missing": tmp_path / "nowhere", "empty": tmp_path / "empty"}
    flags = [f.format(**places) for f in flags]
    before = Path(os.path.realpath(bundle / "meta.json")).read_bytes()
    code = main(["calibrate", str(bundle), "--good", str(line_images["good"]), *flags, "--backend", "onnxruntime-cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message in _error(err), err
    assert Path(os.path.realpath(bundle / "meta.json")).read_bytes() == before


def test_exclusive_targets_are_refused_by_the_parser(bundle, line_images, capsys) -> None:
    code = main(["calibrate", str(bundle), "--good", str(line_images["good"]), "--target-fpr", "0.1", "--f1"])
    assert code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_stream_threshold_changes_verdicts(tiny_bundle, line_images, capsys) -> None:
    def anomalous(*flags: str) -> int:
        assert main(["stream", str(tiny_bundle), "--source", str(line_images["good"]), "--backend", "onnxruntime-cpu",
                     *flags]) == 0
        out = capsys.readouterr().out
        return json.loads(out[:out.index("\n}\n") + 2])["anomalous"]

    assert anomalous("--threshold=-1e9") == 30
    assert anomalous("--threshold", "1e9") == 0
    with edge_ad.load(tiny_bundle, backend="onnxruntime-cpu") as det:
        scores = det.scores(sorted(line_images["good"].glob("*.png")))
        lo, hi = det.calibrated_norm
        for sensitivity in (0.0, 0.9):                 # threshold = calibrated + (0.5 - S) * (hi - lo)
            want = int((scores > det.calibrated_threshold + (0.5 - sensitivity) * (hi - lo)).sum())
            assert anomalous("--sensitivity", str(sensitivity)) == want
    assert main(["stream", str(tiny_bundle), "--source", "0", "--threshold", "1", "--sensitivity", "0.5"]) == 2


def test_the_history_is_checked_and_older_bundles_need_none(bundle) -> None:
    from edge_ad.bundle import BundleError, validate_meta

    meta = read_bundle(bundle).meta
    assert "calibration_history" not in meta                  # an exported bundle has none, and loads
    broken = {**meta, "calibration_history": [{**meta["calibration"], "image_norm": [1.0, 1.0]}]}
    with pytest.raises(BundleError, match=r"calibration_history\[0\]\.image_norm must have lo < hi"):
        validate_meta(broken, str(bundle))
    with pytest.raises(BundleError, match="calibration_history must be a list"):
        validate_meta({**meta, "calibration_history": {"a": 1}}, str(bundle))
    validate_meta({**meta, "calibration": {**meta["calibration"], "method": "guess"}}, str(bundle))   # a later one's
    with pytest.raises(BundleError, match="calibration.method must be a method name"):
        validate_meta({**meta, "calibration": {**meta["calibration"], "method": ["guess"]}}, str(bundle))


def test_calibrate_refuses_to_write_a_model_an_export_replaced_while_it_scored(bundle, line_images) -> None:
    from edge_ad.bundle import BundleError, write_bundle
    from edge_ad.runtime.recalibrate import recalibrate

    def reexport(line: str) -> None:
        if line.startswith("scoring"):                   # another shell exports a new model meanwhile
            old = read_bundle(bundle).meta
            meta = {k: v for k, v in old.items() if k not in ("files", "format_version", "edge_ad_version")}

            def fill(folder: Path) -> None:
                for name in old["files"]:
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(bundle / name, folder / name)
                (folder / "parity.json").write_text('{"new": "model"}')

            write_bundle(bundle, meta, fill, overwrite=True)

    with pytest.raises(BundleError, match="re-exported while calibrating.*run calibrate again"):
        recalibrate(bundle, line_images["good"], method="target-fpr", target=0.1, backend="onnxruntime-cpu",
                    echo=reexport)
    meta = read_bundle(bundle).meta
    assert "method" not in meta["calibration"] and "calibration_history" not in meta


def test_a_read_only_bundle_is_refused_before_any_image_is_scored(bundle, line_images) -> None:
    from edge_ad.bundle import BundleError
    from edge_ad.runtime.recalibrate import recalibrate

    meta_file = Path(os.path.realpath(bundle / "meta.json"))
    meta_file.chmod(0o444)
    lines: list[str] = []
    with pytest.raises(BundleError, match="write-protected"):
        recalibrate(bundle, line_images["good"], backend="onnxruntime-cpu", echo=lines.append)
    assert lines == [] and meta_file.stat().st_mode & 0o777 == 0o444
    dry = recalibrate(bundle, line_images["good"], backend="onnxruntime-cpu", write=False)
    assert not dry.written


def test_the_view_is_recorded_and_another_view_is_warned_about_once(bundle, line_images, caplog) -> None:
    from edge_ad.runtime.recalibrate import recalibrate

    images = sorted(line_images["good"].glob("*.png"))
    with edge_ad.load(bundle, backend="onnxruntime-cpu") as det:       # an exported bundle: view unknown, no warning
        det.scores(images[:1], tiles="2x2")
    assert "differs from the one the threshold was calibrated" not in caplog.text
    recalibrate(bundle, line_images["good"], backend="onnxruntime-cpu", tiles="1x2", overlap=0.2)
    view = read_bundle(bundle).meta["calibration"]["view"]
    assert view == {"roi": None, "tiles": [1, 2], "overlap": 0.2}
    caplog.clear()
    with edge_ad.load(bundle, backend="onnxruntime-cpu") as det:
        det.scores(images[:1], tiles=(1, 2), overlap=0.2)              # the calibrated view: silent
        assert "calibrated" not in caplog.text
        det.scores(images[:2])                                         # untiled: one warning ...
        det.predict(str(images[0]), roi="0,0,40,40")                   # ... not one per call
    warnings = [r for r in caplog.records if "differs from the one the threshold was calibrated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "the whole frame, untiled" in warnings[0].getMessage() and "tiles 1x2 (overlap 0.2)" in warnings[0].getMessage()
