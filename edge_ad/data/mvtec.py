"""The MVTec AD folder layout, as users have it.

    ROOT/train/good/*.png                       normal training images
    ROOT/validation/good/*.png                  optional normal validation images (calibration split)
    ROOT/test/good/*.png                        normal test images
    ROOT/test/<defect>/<name>.png               anomalous test images
    ROOT/ground_truth/<defect>/<name>_mask.png  optional pixel masks

`test/` is optional for training (`load_mvtec`: a new line has good images only); `MVTecDataset(root,
"test")` itself still requires it. Without ground_truth/ the dataset has image labels only
(`has_masks` is False) and pixel metrics are absent, not an error. A defect with masks for some images
and not others, a mask without an image, a misnamed mask, or a mask whose size differs from its image
is an error that names the files.
"""

from __future__ import annotations

from pathlib import Path

from edge_ad.data.samples import DatasetError, Sample, SampleDataset, Splits, empty, images_in, subfolders
from edge_ad.imaging import IMAGE_SUFFIXES

__all__ = ["DatasetError", "MVTecDataset", "Sample", "load_mvtec", "mask_index"]

MASK_SUFFIX = "_mask"


class MVTecDataset(SampleDataset):
    """Indexable MVTec-layout split ("train": train/good; "test": test/*); see SampleDataset."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        has_masks = (root / "ground_truth").is_dir()
        samples = good_samples(root / "train" / "good", "training") if split == "train" \
            else _test_samples(root, has_masks)
        super().__init__(root, split, samples, has_masks=has_masks)


def load_mvtec(root: Path) -> Splits:
    """An MVTec AD category: train/good, validation/good when present, test/ when it holds images."""
    train = MVTecDataset(root, "train")
    has_test = any(images_in(d) for d in subfolders(root / "test"))
    test = MVTecDataset(root, "test") if has_test else empty(root, "test")
    return Splits("mvtec", root, train, test, validation_good(root), f"{root / 'test'}")


def validation_good(root: Path) -> SampleDataset | None:
    """ROOT/validation/good as a normal split (MVTec AD 2 and LOCO ship one), None when absent."""
    folder = root / "validation" / "good"
    if not folder.is_dir():
        return None
    return SampleDataset(root, "validation", good_samples(folder, "validation"), has_masks=False)


def good_samples(folder: Path, what: str) -> list[Sample]:
    """The normal images of a `good` folder; none is an error that says where they belong."""
    images = images_in(folder)
    if not images:
        raise DatasetError(f"no {what} images in {folder}: this layout keeps its normal {what} images in "
                           f"{folder.parent.name}/{folder.name}/ ({', '.join(IMAGE_SUFFIXES)})")
    return [Sample(p, 0, "good") for p in images]


def _test_samples(root: Path, has_masks: bool) -> list[Sample]:
    test = root / "test"
    if not test.is_dir():
        raise DatasetError(f"no test folder: expected {test}/good and {test}/<defect>/ image folders")
    defect_dirs = subfolders(test)
    if not defect_dirs:
        raise DatasetError(f"{test} has no image folders: expected good/ and one folder per defect type")
    masks = mask_index(root / "ground_truth", defect_dirs, "test") if has_masks else {}
    samples = [Sample(path, int(folder.name != "good"), folder.name, masks.get((folder.name, path.stem)))
               for folder in defect_dirs for path in images_in(folder)]
    if not samples:
        raise DatasetError(f"no test images under {test}")
    return samples


def mask_index(gt: Path, defect_dirs: list[Path], test_name: str) -> dict[tuple[str, str], Path]:
    """(defect, image stem) -> mask path of `gt/<defect>/<stem>_mask.png`, after checking names and
    coverage; `test_name` is how messages name the test folder (test, test_public)."""
    defects = {d.name for d in defect_dirs}
    index: dict[tuple[str, str], Path] = {}
    for folder in subfolders(gt):
        if folder.name not in defects:
            raise DatasetError(f"{folder} has masks for defect '{folder.name}' but there is no "
                               f"{test_name}/{folder.name}/ folder; rename or remove one of them")
        for mask in images_in(folder):
            if not mask.stem.endswith(MASK_SUFFIX):
                raise DatasetError(f"misnamed mask {mask}: masks are named <image name>{MASK_SUFFIX}.png "
                                   f"(e.g. 000{MASK_SUFFIX}.png for {test_name}/{folder.name}/000.png)")
            index[(folder.name, mask.stem[: -len(MASK_SUFFIX)])] = mask
    for folder in defect_dirs:
        if folder.name != "good":
            _check_coverage(gt, folder, {s for (d, s) in index if d == folder.name})
    return index


def _check_coverage(gt: Path, folder: Path, have: set[str]) -> None:
    """Every image of a defect folder has a mask and every mask an image (or the defect has none)."""
    stems = {p.stem for p in images_in(folder)}
    where = f"{gt.name}/{folder.name}/"
    orphans = sorted(have - stems)
    if orphans:
        raise DatasetError(f"masks without images in {where}: {', '.join(o + MASK_SUFFIX for o in orphans[:10])}")
    missing = sorted(stems - have)
    if have and missing:
        raise DatasetError(f"{where} has masks for some images but not for: {', '.join(missing[:10])}; add the "
                           "missing masks or remove the folder")
    if stems and not have:
        raise DatasetError(f"{gt.name}/ has no masks for defect '{folder.name}': add {where}<name>{MASK_SUFFIX}.png "
                           f"for each image, or remove {gt.name}/ to evaluate with image labels only")
