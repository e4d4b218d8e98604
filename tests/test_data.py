"""The MVTec-layout dataset (and its errors), image conversion, the synthetic generator and video."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ad.data import DatasetError, ImageReadError, MVTecDataset, read_image, to_rgb_uint8
from edge_ad.data.synthetic import CATEGORIES, Counts, make_category, render, write_conveyor_video
from edge_ad.data.synthetic.scenes import MIN_DEFECT_PIXELS

SMALL = Counts(train=3, test_good=2, test_per_defect=1)


@pytest.fixture(scope="module")
def washer(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("syn"), "washer", counts=SMALL, seed=3)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cat"
    shutil.copytree(src, dst)
    return dst


def test_dataset_reads_synthetic_category(washer) -> None:
    train, test = MVTecDataset(washer, "train"), MVTecDataset(washer, "test")
    assert len(train) == 3 and set(train.labels) == {0}
    assert len(test) == 2 + len(CATEGORIES["washer"].defects)
    assert test.defects == sorted(["good", *CATEGORIES["washer"].defects])
    for i, sample in enumerate(test.samples):
        item = test[i]
        assert item["image"].shape == (256, 256, 3) and item["image"].dtype == np.uint8
        assert item["mask"].shape == (256, 256) and item["label"] == int(sample.defect != "good")
        assert (item["mask"].sum() >= MIN_DEFECT_PIXELS) if item["label"] else (item["mask"].sum() == 0)


def test_dataset_without_ground_truth_has_no_masks(washer, tmp_path) -> None:
    root = _copy(washer, tmp_path)
    shutil.rmtree(root / "ground_truth")
    test = MVTecDataset(root, "test")
    assert not test.has_masks and test[0]["mask"] is None


@pytest.mark.parametrize("breakage, words", [
    (lambda r: shutil.rmtree(r / "train"), "no training images"),
    (lambda r: shutil.rmtree(r / "test"), "no test folder"),
    (lambda r: (r / "ground_truth/scratch/000_mask.png").rename(r / "ground_truth/scratch/000.png"), "misnamed mask"),
    (lambda r: shutil.copy(r / "ground_truth/scratch/000_mask.png", r / "ground_truth/scratch/007_mask.png"),
     "masks without images.*007_mask"),
    (lambda r: shutil.copy(r / "test/scratch/000.png", r / "test/scratch/001.png"), "not for: 001"),
    (lambda r: shutil.rmtree(r / "ground_truth/stain"), "no masks for defect 'stain'"),
    (lambda r: (r / "ground_truth/stain").rename(r / "ground_truth/rust"), "no test/rust/ folder"),
])
def test_dataset_layout_errors_name_the_problem(washer, tmp_path, breakage, words) -> None:
    root = _copy(washer, tmp_path)
    breakage(root)
    with pytest.raises(DatasetError, match=words):
        MVTecDataset(root, "train" if "training" in words else "test")


def test_missing_dataset_folder(tmp_path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        MVTecDataset(tmp_path / "nope")


def test_mask_size_mismatch_is_reported_at_load(washer, tmp_path) -> None:
    root = _copy(washer, tmp_path)
    cv2.imwrite(str(root / "ground_truth/scratch/000_mask.png"), np.zeros((100, 100), np.uint8))
    test = MVTecDataset(root, "test")
    index = next(i for i, s in enumerate(test.samples) if s.defect == "scratch")
    with pytest.raises(DatasetError, match="must match"):
        test[index]


def test_corrupt_image_is_reported(washer, tmp_path) -> None:
    root = _copy(washer, tmp_path)
    path = root / "train/good/000.png"
    path.write_bytes(path.read_bytes()[:100])  # truncated PNG
    with pytest.raises(ImageReadError, match="corrupt"):
        MVTecDataset(root, "train")[0]


def test_non_image_files_are_skipped(washer, tmp_path, caplog) -> None:
    root = _copy(washer, tmp_path)
    (root / "train/good/notes.txt").write_text("not an image")
    assert len(MVTecDataset(root, "train")) == 3
    assert "notes.txt" in caplog.text


@pytest.mark.parametrize("image, expected", [
    (np.full((4, 5), 200, np.uint8), (200, 200, 200)),                                # grayscale
    (np.full((4, 5, 1), 90, np.uint8), (90, 90, 90)),                                 # H x W x 1
    (np.dstack([np.full((4, 5), c, np.uint8) for c in (10, 20, 30)]), (30, 20, 10)),  # BGR -> RGB
    (np.dstack([np.full((4, 5), c, np.uint8) for c in (10, 20, 30, 255)]), (30, 20, 10)),  # BGRA
    (np.full((4, 5), 0xAB00, np.uint16), (0xAB, 0xAB, 0xAB)),                         # 16-bit
])
def test_to_rgb_uint8(image, expected) -> None:
    out = to_rgb_uint8(image, bgr=True)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == expected


def test_read_image_handles_16bit_and_gray_files(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((6, 7), 40000, np.uint16))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([np.full((6, 7), c, np.uint8) for c in (1, 2, 3, 4)]))
    assert tuple(read_image(tmp_path / "g16.png")[0, 0]) == (156, 156, 156)
    assert tuple(read_image(tmp_path / "rgba.png")[0, 0]) == (3, 2, 1)


def test_synthetic_covers_textures_objects_and_defect_kinds() -> None:
    kinds = {c.kind for c in CATEGORIES.values()}
    assert sum(c.kind == "texture" for c in CATEGORIES.values()) >= 3
    assert sum(c.kind == "object" for c in CATEGORIES.values()) >= 2
    assert kinds == {"texture", "object", "conveyor"}
    defects = {d for c in CATEGORIES.values() for d in c.defects}
    assert {"scratch", "stain", "contamination", "deformation"} <= defects
    assert {"hole", "missing"} <= defects


@pytest.mark.parametrize("name", list(CATEGORIES))
def test_synthetic_is_deterministic_and_masks_are_exact(name) -> None:
    category = CATEGORIES[name]
    clean, clean_mask = render(category, [5, 1])
    assert clean_mask.sum() == 0
    assert np.array_equal(clean, render(category, [5, 1])[0])            # same seed, same image
    assert not np.array_equal(clean, render(category, [5, 2])[0])        # other seed, other image
    for defect in category.defects:
        image, mask = render(category, [5, 1], defect)
        assert mask.sum() >= MIN_DEFECT_PIXELS, defect
        assert np.array_equal(image[~mask], clean[~mask]), f"{defect} changed pixels outside its mask"
        changed = np.abs(image.astype(int) - clean.astype(int)).max(axis=2) > 0
        assert changed[mask].mean() > 0.6, f"{defect}: most masked pixels should differ"


def test_conveyor_video_and_labels(tmp_path) -> None:
    # Deterministic by seed: with seed 0 the first parts include a defective one.
    labels_path = write_conveyor_video(tmp_path / "belt.mp4", frames=90, seed=0, defect_rate=0.5)
    labels = [json.loads(line) for line in labels_path.read_text().splitlines()]
    assert [entry["frame"] for entry in labels] == list(range(90))
    assert any(e["anomalous"] for e in labels) and not all(e["anomalous"] for e in labels)
    assert all(bool(e["defects"]) == e["anomalous"] for e in labels)
    cap = cv2.VideoCapture(str(tmp_path / "belt.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 90
    again = write_conveyor_video(tmp_path / "again.mp4", frames=90, seed=0, defect_rate=0.5)
    assert [json.loads(x)["anomalous"] for x in again.read_text().splitlines()] == [e["anomalous"] for e in labels]
