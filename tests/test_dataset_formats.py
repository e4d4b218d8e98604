"""The dataset layouts users have, each built in its real folder and file names from tiny synthetic
images: detection, counts, labels, merged masks, the calibration split and a wrong-layout error each;
and a model trained from good images only (CLI), exported and run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ad.data import FORMATS, DataSource, DatasetError, detect_format, load_source
from edge_ad.training.data import train_val_parts

H, W = 24, 32
TINY = {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32}    # SimpleNet, seconds on a CPU


def _image(path: Path, value: int = 128) -> Path:
    """A tiny image: `value` plus seeded noise (calibration needs scores that differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(path.as_posix().encode()))
    assert cv2.imwrite(str(path), np.clip(value + rng.integers(0, 15, (H, W, 3)), 0, 255).astype(np.uint8))
    return path


def _mask(path: Path, box: tuple[int, int, int, int], value: int = 255) -> Path:
    """A mask with `value` in the box (y0, y1, x0, x1) and 0 elsewhere."""
    mask = np.zeros((H, W), np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)
    return path


def _load(path: Path, fmt: str | None = None, category: str | None = None):
    return load_source(DataSource(path=str(path), format=fmt, category=category))


def _item(dataset, name: str) -> dict:
    return dataset[next(i for i, s in enumerate(dataset.samples) if s.path.name == name)]


# MVTec AD -------------------------------------------------------------------------------------------------

def _mvtec(root: Path, *, test: bool = True) -> Path:
    for i in range(4):
        _image(root / "train/good" / f"{i:03d}.png")
    if test:
        _image(root / "test/good/000.png")
        _image(root / "test/crack/000.png", 200)
        _mask(root / "ground_truth/crack/000_mask.png", (2, 6, 3, 9))
    return root


def test_mvtec_detected_with_masks(tmp_path) -> None:
    splits, source = _load(_mvtec(tmp_path / "bottle"))
    assert detect_format(tmp_path / "bottle") == "mvtec" and source.format == "mvtec"
    assert len(splits.train) == 4 and splits.val is None
    assert sorted(splits.test.labels.tolist()) == [0, 1] and splits.test.defects == ["crack", "good"]
    assert _item(splits.test, "000.png")["mask"] is not None


def test_mvtec_without_test_folder_trains_from_good_only(tmp_path) -> None:
    splits, _ = _load(_mvtec(tmp_path / "line", test=False))
    assert len(splits.train) == 4 and len(splits.test) == 0


def test_wrong_format_says_which_layout_it_looks_like(tmp_path) -> None:
    with pytest.raises(DatasetError, match="looks like MVTec AD .*--format mvtec"):
        _load(_mvtec(tmp_path / "bottle"), "mvtec2")


# MVTec AD 2 -----------------------------------------------------------------------------------------------

def _mvtec2(root: Path) -> Path:
    for i in range(3):
        _image(root / "train/good" / f"{i:03d}_regular.png")
    for i in range(2):
        _image(root / "validation/good" / f"{i:03d}_regular.png")
    _image(root / "test_public/good/000_regular.png")
    _image(root / "test_public/good/000_overexposed.png")
    _image(root / "test_public/bad/000_regular.png", 220)
    _image(root / "test_public/bad/001_shift_1.png", 30)
    _mask(root / "test_public/ground_truth/bad/000_regular_mask.png", (0, 4, 0, 4))
    _mask(root / "test_public/ground_truth/bad/001_shift_1_mask.png", (10, 20, 10, 30))
    _image(root / "test_private/000_regular.png")          # unlabelled: not used
    return root


def test_mvtec2_layout_and_its_validation_split(tmp_path) -> None:
    splits, source = _load(_mvtec2(tmp_path / "can"))
    assert source.format == "mvtec2" and len(splits.train) == 3
    assert splits.test.labels.tolist() == [1, 1, 0, 0] and set(splits.test.defects) == {"good", "bad"}
    assert _item(splits.test, "001_shift_1.png")["mask"].sum() == 10 * 20
    assert _item(splits.test, "000_overexposed.png")["mask"].sum() == 0
    train, val = train_val_parts(splits.train, splits.val, 0.1, 0)
    assert (len(train), len(val), val.source) == (3, 2, "validation")    # all of train/good trains
    assert all(s.path.parent.parent.name == "validation" for s in val.samples("v").samples)


def test_mvtec2_run_calibrates_on_its_validation_images(tmp_path) -> None:
    from edge_ad.training.run import TrainConfig, train

    train(TrainConfig(data=str(_mvtec2(tmp_path / "can")), out=str(tmp_path / "run"), epochs=1, batch_size=4,
                      model_kwargs=TINY))
    info = json.loads((tmp_path / "run/run.json").read_text())
    assert (info["train_images"], info["val_images"], info["calibration"]["normal_images"]) == (3, 2, 2)
    assert info["calibration_images"] == {"can": "validation"} and info["metrics"]["image_auroc"] is not None


def test_mvtec2_named_as_mvtec_is_refused(tmp_path) -> None:
    with pytest.raises(DatasetError, match="looks like MVTec AD 2.*--format mvtec2"):
        _load(_mvtec2(tmp_path / "can"), "mvtec")


def test_mvtec2_mask_must_be_named_for_its_image(tmp_path) -> None:
    root = _mvtec2(tmp_path / "can")
    (root / "test_public/ground_truth/bad/000_regular_mask.png").rename(root / "test_public/ground_truth/bad/0.png")
    with pytest.raises(DatasetError, match="misnamed mask"):
        _load(root)


# MVTec LOCO -----------------------------------------------------------------------------------------------

def _loco(root: Path) -> Path:
    for i in range(3):
        _image(root / "train/good" / f"{i:03d}.png")
    for i in range(2):
        _image(root / "validation/good" / f"{i:03d}.png")
    _image(root / "test/good/000.png")
    _image(root / "test/logical_anomalies/000.png", 90)
    _image(root / "test/structural_anomalies/000.png", 60)
    _mask(root / "ground_truth/logical_anomalies/000/000.png", (0, 5, 0, 5), value=7)      # LOCO's own values
    _mask(root / "ground_truth/logical_anomalies/000/001.png", (10, 12, 20, 30), value=200)
    _mask(root / "ground_truth/structural_anomalies/000/000.png", (3, 4, 3, 4), value=255)
    return root


def test_loco_masks_of_an_image_are_merged(tmp_path) -> None:
    splits, source = _load(_loco(tmp_path / "breakfast_box"))
    assert source.format == "loco" and splits.val is not None and len(splits.val) == 2
    assert splits.test.defects == ["good", "logical_anomalies", "structural_anomalies"]
    merged = next(splits.test[i]["mask"] for i, s in enumerate(splits.test.samples) if s.defect == "logical_anomalies")
    assert set(np.unique(merged)) == {0, 1} and merged.sum() == 5 * 5 + 2 * 10
    assert merged[0, 0] == 1 and merged[11, 25] == 1 and merged[8, 8] == 0


def test_loco_without_mask_folder_names_the_image(tmp_path) -> None:
    root = _loco(tmp_path / "breakfast_box")
    _image(root / "test/logical_anomalies/001.png")
    with pytest.raises(DatasetError, match="no mask folder.*001"):
        _load(root)


def test_loco_named_as_visa_is_refused(tmp_path) -> None:
    with pytest.raises(DatasetError, match="looks like MVTec LOCO.*--format loco"):
        _load(_loco(tmp_path / "breakfast_box"), "visa")


# VisA -----------------------------------------------------------------------------------------------------

def _visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(4):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _image(root / rel)
            rows.append(f"{obj},{'train' if i < 3 else 'test'},normal,{rel},")
        for i in range(2):
            rel, mask = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            _image(root / rel, 240)
            _mask(root / mask, (1, 3, 1, 3), value=1 + i)             # VisA numbers its regions: 1, 2, ...
            rows.append(f"{obj},test,anomaly,{rel},{mask}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_visa_object_folder_and_root_with_category(tmp_path) -> None:
    root = _visa(tmp_path / "VisA")
    by_folder, source = _load(root / "candle")
    by_name, named = _load(root, category="candle")
    assert source == named and source.format == "visa" and source.name() == "candle"
    for splits in (by_folder, by_name):
        assert len(splits.train) == 3 and splits.val is None
        assert sorted(splits.test.labels.tolist()) == [0, 1, 1]
        assert all("candle" in str(s.path) for s in splits.test.samples)
        assert _item(splits.test, "001.JPG")["mask"].sum() == 4              # value 2 counts as anomalous


def test_visa_root_needs_an_object(tmp_path) -> None:
    with pytest.raises(DatasetError, match="candle, pcb1.*--category"):
        _load(_visa(tmp_path / "VisA"))


def test_visa_named_as_mvtec_is_refused(tmp_path) -> None:
    with pytest.raises(DatasetError, match="looks like VisA.*--format visa"):
        _load(_visa(tmp_path / "VisA") / "candle", "mvtec")


# Plain folders --------------------------------------------------------------------------------------------

def _plain(root: Path) -> Path:
    for i in range(5):
        _image(root / "good" / f"ok_{i}.png")
    _image(root / "bad/dent.png", 10)
    _image(root / "bad/scratch.jpg", 250)
    _mask(root / "masks/dent.png", (0, 2, 0, 2))
    _mask(root / "masks/scratch_mask.png", (5, 6, 5, 8))
    return root


def test_plain_folders_match_masks_by_stem(tmp_path) -> None:
    root = _plain(tmp_path / "station3")
    splits, source = load_source(DataSource(good=str(root / "good"), bad=str(root / "bad"), masks=str(root / "masks")))
    assert source.format == "folder" and source.name() == "station3"
    assert len(splits.train) == 5 and splits.test.labels.tolist() == [1, 1]
    assert _item(splits.test, "dent.png")["mask"].sum() == 4 and _item(splits.test, "scratch.jpg")["mask"].sum() == 3
    detected, _ = _load(root)                      # --data DIR with good/ bad/ masks/ is the same layout
    assert detect_format(root) == "folder" and len(detected.test) == 2 and detected.test.has_masks


def test_plain_folder_of_images_is_good_only(tmp_path) -> None:
    splits, source = _load(_plain(tmp_path / "s") / "good")
    assert source.format == "folder" and len(splits.train) == 5 and len(splits.test) == 0


def test_plain_folders_need_a_mask_per_defect_image(tmp_path) -> None:
    root = _plain(tmp_path / "s")
    (root / "masks/scratch_mask.png").unlink()
    with pytest.raises(DatasetError, match="without a mask.*scratch"):
        load_source(DataSource(good=str(root / "good"), bad=str(root / "bad"), masks=str(root / "masks")))


def test_plain_folders_named_as_loco_are_refused(tmp_path) -> None:
    with pytest.raises(DatasetError, match="looks like plain folders.*--format folder"):
        _load(_plain(tmp_path / "s"), "loco")


def test_a_folder_of_no_known_layout_lists_them(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="follows none of the dataset layouts.*VisA"):
        _load(tmp_path / "empty")


def test_cli_format_choices_are_the_layouts() -> None:
    from edge_ad.cli import build_parser

    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "format")
    assert tuple(train.choices) == tuple(FORMATS)


# Good images only, from the CLI to a running bundle ---------------------------------------------------------

def test_train_on_good_only_then_export_and_run(tmp_path, capsys) -> None:
    """`edge-ad train --good DIR` (no defect images at all): trained, calibrated, metrics null with
    reasons, exported, and the bundle scores an image."""
    import edge_ad
    from edge_ad.cli import main
    from edge_ad.data.synthetic import Counts, make_category

    data = make_category(tmp_path / "syn", "washer", counts=Counts(train=8, test_good=1, test_per_defect=1), seed=2)
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert main(["train", "--good", str(data / "train/good"), "--out", str(run), "--epochs", "1", "--batch-size", "4",
                 "--image-size", "64", "--resize-size", "72", "--no-pretrained"]) == 0
    info = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert info["status"] == "complete" and info["data_sources"][0]["format"] == "folder"
    assert info["val_images"] >= 2 and info["calibration"]["normal_images"] == info["val_images"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "operating_point"):
        assert metrics[key] is None and "no test images" in metrics["absent"][key]
    assert main(["export", str(run), "--out", str(bundle)]) == 0
    result = edge_ad.load(bundle, backend="onnxruntime-cpu").predict(str(data / "test/good/000.png"))
    assert np.isfinite(result.score) and result.heatmap.shape == (256, 256)
    assert main(["eval", str(run)]) == 0                     # eval reads the run's recorded source again
    assert "no test images" in capsys.readouterr().out


def test_defect_folder_without_good_test_images_gets_the_held_out_ones(tmp_path) -> None:
    """--good and --bad only: the held-out normal images stand in as the normal test images, so image
    AUROC and the operating point exist, and the metrics say where the normal images came from."""
    from edge_ad.data.synthetic import Counts, make_category
    from edge_ad.training.evaluate import evaluate_run
    from edge_ad.training.run import TrainConfig, train

    data = make_category(tmp_path / "syn", "washer", counts=Counts(train=10, test_good=1, test_per_defect=2), seed=2)
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in (data / "test").glob("[!g]*/*.png"):            # every defect folder (not good/)
        path.rename(bad / f"{path.parent.name}_{path.name}")
    metrics = train(TrainConfig(data=DataSource(good=str(data / "train/good"), bad=str(bad)), out=str(tmp_path / "run"),
                                epochs=1, batch_size=4, model_kwargs=TINY))
    assert metrics["image_auroc"] is not None and "stand in" in metrics["test_note"]
    assert metrics["operating_point"]["false_positive_rate"] is not None and metrics["pixel_auroc"] is None
    again, = evaluate_run(tmp_path / "run")["modes"]["exported"].values()   # eval reads the same images again
    assert again["image_auroc"] == pytest.approx(metrics["image_auroc"]) and again["test_note"] == metrics["test_note"]


def test_metrics_hold_the_operating_point_at_the_deployed_threshold(tiny_trained) -> None:
    """The operating point in metrics.json is the bundle's own: its threshold, and the runtime's
    verdicts on the test images give the same recall and false-positive rate."""
    import edge_ad
    from edge_ad.data import MVTecDataset
    from edge_ad.metrics import operating_point

    t = tiny_trained("simplenet")
    metrics = json.loads((t["root"] / "run/metrics.json").read_text())
    point = metrics["operating_point"]
    det = edge_ad.load(t["bundle"], backend="onnxruntime-cpu")
    test = MVTecDataset(t["data"], "test")
    scores = det.scores([str(s.path) for s in test.samples])
    assert point["threshold"] == pytest.approx(det.calibrated_threshold)
    again = operating_point(scores, test.labels, point["threshold"])
    assert {k: point[k] for k in ("recall", "false_positive_rate")} == \
        {k: again[k] for k in ("recall", "false_positive_rate")}
    assert set(point) >= {"recall", "false_positive_rate", "precision", "f1", "f1_max", "f1_max_threshold"}


@pytest.mark.parametrize("args, words", [
    ([], "--data DIR .* or --good DIR"),
    (["--data", "a", "--good", "b"], "give one of them"),
    (["--data", "a", "--bad", "b"], "--bad and --masks go with --good"),
])
def test_train_cli_asks_for_one_kind_of_data(args, words, tmp_path, capsys) -> None:
    from edge_ad.cli import main

    assert main(["train", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(words, err) and not (tmp_path / "run").exists()
