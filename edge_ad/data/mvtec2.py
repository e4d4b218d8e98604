"""The MVTec AD 2 folder layout (one scenario, e.g. `mvtec_ad_2/can`).

    ROOT/train/good/*.png                                  normal training images
    ROOT/validation/good/*.png                             normal validation images: the calibration split
    ROOT/test_public/good/*.png                            normal test images
    ROOT/test_public/bad/*.png                             anomalous test images (all defects in one folder)
    ROOT/test_public/ground_truth/bad/<name>_mask.png      their masks (0/255; normal images have none)
    ROOT/test_private/, ROOT/test_private_mixed/           unlabelled (scored by MVTec's server): not used

Images are named `NNN_<lighting>.png` (e.g. 000_regular.png, 000_overexposed.png); the defect name
of every anomalous image is "bad", as the dataset gives no finer label.
"""

from __future__ import annotations

from pathlib import Path

from edge_ad.data.mvtec import good_samples, mask_index, validation_good
from edge_ad.data.samples import DatasetError, Sample, SampleDataset, Splits, empty, images_in, subfolders

__all__ = ["load_mvtec2", "looks_like_mvtec2"]

TEST = "test_public"


def looks_like_mvtec2(root: Path) -> bool:
    """A scenario folder of MVTec AD 2: train/ beside test_public/ (or an unlabelled test_private/)."""
    return (root / "train").is_dir() and any((root / name).is_dir()
                                             for name in (TEST, "test_private", "test_private_mixed"))


def load_mvtec2(root: Path) -> Splits:
    """train/good for training, validation/good for calibration, test_public for metrics."""
    train = SampleDataset(root, "train", good_samples(root / "train" / "good", "training"), has_masks=False)
    return Splits("mvtec2", root, train, _test(root), validation_good(root), str(root / TEST))


def _test(root: Path) -> SampleDataset:
    test = root / TEST
    folders = subfolders(test)
    unknown = [d.name for d in folders if d.name not in ("good", "bad", "ground_truth")]
    if unknown:
        raise DatasetError(f"{test} holds {', '.join(unknown)}: MVTec AD 2 keeps its public test images in "
                           f"{TEST}/good/ and {TEST}/bad/ only (masks in {TEST}/ground_truth/bad/)")
    image_dirs = [d for d in folders if d.name in ("good", "bad") and images_in(d)]
    if not image_dirs:
        return empty(root, "test")
    gt = test / "ground_truth"
    masks = mask_index(gt, image_dirs, TEST) if gt.is_dir() else {}
    samples = [Sample(path, int(folder.name == "bad"), folder.name, masks.get((folder.name, path.stem)))
               for folder in image_dirs for path in images_in(folder)]
    return SampleDataset(root, "test", samples, has_masks=gt.is_dir())
