"""Plain folders, as a new line has them: good images, and later some defective ones.

    edge-ad train --good GOOD_DIR [--bad BAD_DIR] [--masks MASK_DIR]
    edge-ad train --data DIR       DIR holds images (all good), or good/ [bad/ masks/] folders

Good images train the model (a held-out part calibrates it). Defective images, when given, are the
test images (their defect is "bad"); the held-out good images then stand in as the normal test images
(see training/run.py). Masks are matched to defective images by name: `<stem>.png` or
`<stem>_mask.png` (any image suffix); with --masks, every defective image needs one.
"""

from __future__ import annotations

from pathlib import Path

from edge_ad.data.samples import DatasetError, Sample, SampleDataset, Splits, empty, images_in
from edge_ad.imaging import IMAGE_SUFFIXES

__all__ = ["folder_parts", "load_folder"]

MASK_SUFFIX = "_mask"


def folder_parts(folder: Path) -> tuple[Path, Path | None, Path | None] | None:
    """(good, bad, masks) of `--data DIR` in the plain-folder layout, or None when it is not one:
    DIR holds images itself (all good), or a good/ folder of images (bad/ and masks/ optional)."""
    if images_in_quietly(folder):
        return folder, None, None
    if images_in_quietly(folder / "good") and not (folder / "train").exists():
        bad, masks = folder / "bad", folder / "masks"
        return folder / "good", bad if bad.is_dir() else None, masks if masks.is_dir() else None
    return None


def images_in_quietly(folder: Path) -> bool:
    """Whether a folder directly holds an image file (no warnings about other files)."""
    return folder.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                                   for p in folder.iterdir())


def load_folder(good: Path, bad: Path | None = None, masks: Path | None = None) -> Splits:
    """Good images for training; defective images (and their masks) as the test split."""
    for name, folder in (("--good", good), ("--bad", bad), ("--masks", masks)):
        if folder is not None and not folder.is_dir():
            raise DatasetError(f"{name} {folder} is not a folder")
    images = images_in(good)
    if not images:
        raise DatasetError(f"--good {good} holds no images ({', '.join(IMAGE_SUFFIXES)}); give the folder of good "
                           "parts' images")
    if masks is not None and bad is None:
        raise DatasetError("--masks marks the defects of --bad images: give --bad DIR too")
    train = SampleDataset(good, "train", [Sample(p, 0, "good") for p in images], has_masks=False)
    test = _defective(bad, masks) if bad is not None else empty(good, "test")
    return Splits("folder", good, train, test, None, str(bad) if bad is not None else "--bad not given")


def _defective(bad: Path, masks: Path | None) -> SampleDataset:
    images = images_in(bad)
    if not images:
        raise DatasetError(f"--bad {bad} holds no images; give the folder of defective parts' images, or leave "
                           "--bad out to train on good images only")
    index = _mask_index(masks, {p.stem for p in images}) if masks is not None else {}
    return SampleDataset(bad, "test", [Sample(p, 1, "bad", index.get(p.stem)) for p in images],
                         has_masks=masks is not None)


def _mask_index(masks: Path, stems: set[str]) -> dict[str, Path]:
    """Image stem -> mask (`<stem>.png` or `<stem>_mask.png`); every image needs one, every mask an image."""
    index: dict[str, Path] = {}
    unmatched = []
    for path in images_in(masks):
        stem = path.stem
        if stem not in stems and stem.endswith(MASK_SUFFIX) and stem[: -len(MASK_SUFFIX)] in stems:
            stem = stem[: -len(MASK_SUFFIX)]
        if stem not in stems:
            unmatched.append(path.name)
        elif stem in index:
            raise DatasetError(f"two masks for --bad image {stem}: {index[stem].name} and {path.name}; keep one")
        else:
            index[stem] = path
    if unmatched:
        raise DatasetError(f"masks in {masks} match no --bad image: {', '.join(unmatched[:10])}; a mask is named "
                           f"<image name>.png or <image name>{MASK_SUFFIX}.png")
    missing = sorted(stems - set(index))
    if missing:
        raise DatasetError(f"--bad images without a mask in {masks}: {', '.join(missing[:10])}; add "
                           f"<image name>.png (or <image name>{MASK_SUFFIX}.png) for each, or leave --masks out")
    return index
