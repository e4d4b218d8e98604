"""The VisA layout: one split file for all objects, images and masks under each object's Data/.

    VISA_ROOT/split_csv/1cls.csv                    object,split,label,image,mask (the one-class split)
    VISA_ROOT/<object>/Data/Images/Normal/0000.JPG  normal images
    VISA_ROOT/<object>/Data/Images/Anomaly/000.JPG  anomalous images
    VISA_ROOT/<object>/Data/Masks/Anomaly/000.png   their masks: any non-zero value is anomalous
                                                    (VisA numbers its regions, values are not only 255)

Paths in the split file are relative to VISA_ROOT; `split` is train or test, `label` normal or
anomaly, `mask` empty for normal images. One category is one object: `--data VISA_ROOT/candle`, or
the root with `--category candle`. VisA names no defect per image in this file: anomalous images
have the defect "anomaly". It has no validation split: calibration is carved from the train rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

from edge_ad.data.samples import DatasetError, Sample, SampleDataset, Splits, empty

__all__ = ["SPLIT_FILE", "load_visa", "visa_root"]

SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}


def visa_root(folder: Path) -> tuple[Path, str | None] | None:
    """(VisA root, object or None) when `folder` is the root or one object folder of it, else None."""
    if (folder / SPLIT_FILE).is_file():
        return folder, None
    if (folder.parent / SPLIT_FILE).is_file() and (folder / "Data").is_dir():
        return folder.parent, folder.name
    return None


def load_visa(root: Path, category: str | None) -> Splits:
    """The train and test rows of one object of VISA_ROOT/split_csv/1cls.csv."""
    rows = _rows(root)
    objects = sorted({r["object"] for r in rows})
    if category is None:
        raise DatasetError(f"{root} is a VisA root with {len(objects)} objects ({', '.join(objects)}); name one: "
                           f"--data {root / (objects[0] if objects else 'OBJECT')} (or --category OBJECT)")
    mine = [r for r in rows if r["object"] == category]
    if not mine:
        raise DatasetError(f"{root / SPLIT_FILE} has no rows for object {category!r}; it lists {', '.join(objects)}")
    train_rows = [r for r in mine if r["split"] == "train"]
    test_rows = [r for r in mine if r["split"] == "test"]
    bad_train = [r["image"] for r in train_rows if r["label"] != "normal"]
    if bad_train:
        raise DatasetError(f"{root / SPLIT_FILE}: train rows must be normal images, {bad_train[:3]} are not")
    if not train_rows:
        raise DatasetError(f"{root / SPLIT_FILE} has no train rows for {category!r}: nothing to train on")
    has_masks = any(r["mask"] for r in test_rows)
    train = SampleDataset(root, "train", [_sample(root, r, False) for r in train_rows], has_masks=False)
    test = SampleDataset(root, "test", [_sample(root, r, has_masks) for r in test_rows], has_masks=has_masks) \
        if test_rows else empty(root, "test")
    return Splits("visa", root, train, test, None, str(root / SPLIT_FILE))


def _rows(root: Path) -> list[dict[str, str]]:
    """The split file's rows, every field stripped; columns and values checked."""
    path = root / SPLIT_FILE
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path} has no column(s) {', '.join(missing)}: VisA's split file has the header "
                               f"{','.join(COLUMNS)}")
        rows = [{c: (row.get(c) or "").strip() for c in COLUMNS} for row in reader]
    for n, row in enumerate(rows, start=2):
        if row["split"] not in ("train", "test") or row["label"] not in LABELS or not row["image"]:
            raise DatasetError(f"{path} line {n}: split must be train or test, label normal or anomaly, and image a "
                               f"path; got {row}")
    return rows


def _sample(root: Path, row: dict[str, str], has_masks: bool) -> Sample:
    """One row as a Sample; the image (and the mask of an anomalous image) must exist."""
    image = root / row["image"]
    if not image.is_file():
        raise DatasetError(f"{root / SPLIT_FILE} lists {row['image']}, which is not in {root}; is this the VisA "
                           "root the split file belongs to?")
    label = LABELS[row["label"]]
    mask = root / row["mask"] if row["mask"] else None
    if has_masks and label and mask is None:
        raise DatasetError(f"{root / SPLIT_FILE}: anomalous image {row['image']} has no mask while others have; "
                           "give every anomalous row its mask")
    if mask is not None and not mask.is_file():
        raise DatasetError(f"{root / SPLIT_FILE} lists the mask {row['mask']}, which is not in {root}")
    return Sample(image, label, "anomaly" if label else "good", mask)
