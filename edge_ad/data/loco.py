"""The MVTec LOCO AD folder layout (one category, e.g. `mvtec_loco_anomaly_detection/breakfast_box`).

    ROOT/train/good/*.png                             normal training images
    ROOT/validation/good/*.png                        normal validation images: the calibration split
    ROOT/test/good/*.png                              normal test images
    ROOT/test/logical_anomalies/<name>.png            anomalous test images (and structural_anomalies/)
    ROOT/ground_truth/<defect>/<name>/000.png, ...    one folder of masks per image, one mask per region

An image's masks are merged into one: a pixel is anomalous when any of its masks is non-zero there
(LOCO masks carry per-defect values, not only 255). An anomalous image without its mask folder, a
mask folder without its image, or an empty mask folder is an error that names it.
"""

from __future__ import annotations

from pathlib import Path

from edge_ad.data.mvtec import good_samples, validation_good
from edge_ad.data.samples import DatasetError, Sample, SampleDataset, Splits, empty, images_in, subfolders

__all__ = ["load_loco", "looks_like_loco"]

DEFECTS = ("logical_anomalies", "structural_anomalies")


def looks_like_loco(root: Path) -> bool:
    """LOCO's defect folders in test/, or ground truth kept as one folder per image."""
    if not (root / "train").is_dir():
        return False
    if any((root / "test" / d).is_dir() for d in DEFECTS):
        return True
    return any(subfolders(d) for d in subfolders(root / "ground_truth"))


def load_loco(root: Path) -> Splits:
    """train/good for training, validation/good for calibration, test/ (when present) for metrics."""
    train = SampleDataset(root, "train", good_samples(root / "train" / "good", "training"), has_masks=False)
    return Splits("loco", root, train, _test(root), validation_good(root), str(root / "test"))


def _test(root: Path) -> SampleDataset:
    folders = [d for d in subfolders(root / "test") if images_in(d)]
    if not folders:
        return empty(root, "test")
    gt = root / "ground_truth"
    samples = []
    for folder in folders:
        masks = _mask_folders(gt, folder) if gt.is_dir() and folder.name != "good" else {}
        for path in images_in(folder):
            mask_files = masks.get(path.stem, ())
            samples.append(Sample(path, int(folder.name != "good"), folder.name,
                                  mask_files[0] if mask_files else None, tuple(mask_files[1:])))
    known = {f.name for f in folders}
    stray = [d.name for d in subfolders(gt) if d.name not in known]
    if stray:
        raise DatasetError(f"{gt} has masks for {', '.join(stray)} but test/ has no such image folder; rename or "
                           "remove one of them")
    return SampleDataset(root, "test", samples, has_masks=gt.is_dir())


def _mask_folders(gt: Path, folder: Path) -> dict[str, list[Path]]:
    """Image stem -> its mask files (ground_truth/<defect>/<stem>/*.png), checked both ways."""
    stems = {p.stem for p in images_in(folder)}
    where = gt / folder.name
    found = {d.name: images_in(d) for d in subfolders(where)}
    orphans = sorted(set(found) - stems)
    if orphans:
        raise DatasetError(f"mask folders without images in {where}: {', '.join(orphans[:10])} (LOCO keeps the "
                           f"masks of test/{folder.name}/<name>.png in ground_truth/{folder.name}/<name>/)")
    missing = sorted(stems - set(found))
    if missing:
        raise DatasetError(f"no mask folder for test/{folder.name}/ images {', '.join(missing[:10])}: LOCO keeps "
                           f"them as ground_truth/{folder.name}/<name>/000.png; add them, or remove ground_truth/ "
                           "to evaluate with image labels only")
    empty_dirs = sorted(s for s, files in found.items() if not files)
    if empty_dirs:
        raise DatasetError(f"empty mask folders in {where}: {', '.join(empty_dirs[:10])}; each holds the image's "
                           "masks as 000.png, 001.png, ...")
    return found
