"""The MVTec AD folder layout, as users have it.

    ROOT/train/good/*.png                       normal training images
    ROOT/test/good/*.png                        normal test images
    ROOT/test/<defect>/<name>.png               anomalous test images
    ROOT/ground_truth/<defect>/<name>_mask.png  optional pixel masks

Without ground_truth/ the dataset has image labels only (`has_masks` is False) and pixel metrics are
absent, not an error. A defect with masks for some images and not others, a mask without an image, a
misnamed mask, or a mask whose size differs from its image is an error that names the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_ad.imaging import IMAGE_SUFFIXES, read_image, read_mask

log = logging.getLogger(__name__)

__all__ = ["DatasetError", "MVTecDataset", "Sample"]

MASK_SUFFIX = "_mask"


class DatasetError(ValueError):
    """A dataset folder that does not follow the MVTec AD layout; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int                   # 0 normal, 1 anomalous
    defect: str                  # "good" or the defect folder name
    mask_path: Path | None


class MVTecDataset:
    """Indexable MVTec-layout split; items are dicts with image (RGB uint8), label, mask, defect, path.

    `mask` is H x W uint8 (1 = anomalous) when the dataset has ground truth (all zeros for normal
    images), else None. The object works with torch's DataLoader as a map-style dataset.
    """

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        self.has_masks = (self.root / "ground_truth").is_dir()
        self.samples = self._train_samples() if split == "train" else self._test_samples()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image(sample.path)
        mask = None
        if self.has_masks:
            mask = np.zeros(image.shape[:2], np.uint8) if sample.mask_path is None else read_mask(sample.mask_path)
            if mask.shape != image.shape[:2]:
                raise DatasetError(f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                   f"{sample.path} is {image.shape[1]}x{image.shape[0]}; they must match")
        return {"image": image, "label": sample.label, "mask": mask, "defect": sample.defect,
                "path": str(sample.path)}

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def defects(self) -> list[str]:
        return sorted({s.defect for s in self.samples})

    def _train_samples(self) -> list[Sample]:
        folder = self.root / "train" / "good"
        images = _images_in(folder)
        if not images:
            raise DatasetError(f"no training images in {folder}: an MVTec-layout dataset keeps its normal "
                               f"training images in ROOT/train/good/ ({', '.join(IMAGE_SUFFIXES)})")
        return [Sample(p, 0, "good", None) for p in images]

    def _test_samples(self) -> list[Sample]:
        test = self.root / "test"
        if not test.is_dir():
            raise DatasetError(f"no test folder: expected {test}/good and {test}/<defect>/ image folders")
        defect_dirs = sorted(d for d in test.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not defect_dirs:
            raise DatasetError(f"{test} has no image folders: expected good/ and one folder per defect type")
        masks = self._mask_index(defect_dirs) if self.has_masks else {}
        samples: list[Sample] = []
        for folder in defect_dirs:
            label = 0 if folder.name == "good" else 1
            for path in _images_in(folder):
                samples.append(Sample(path, label, folder.name, masks.get((folder.name, path.stem))))
        if not samples:
            raise DatasetError(f"no test images under {test}")
        return samples

    def _mask_index(self, defect_dirs: list[Path]) -> dict[tuple[str, str], Path]:
        """(defect, image stem) -> mask path, after checking names and coverage."""
        gt = self.root / "ground_truth"
        defects = {d.name for d in defect_dirs}
        index: dict[tuple[str, str], Path] = {}
        for folder in sorted(d for d in gt.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if folder.name not in defects:
                raise DatasetError(f"{folder} has masks for defect '{folder.name}' but there is no "
                                   f"test/{folder.name}/ folder; rename or remove one of them")
            for mask in _images_in(folder):
                if not mask.stem.endswith(MASK_SUFFIX):
                    raise DatasetError(f"misnamed mask {mask}: masks are named <image name>{MASK_SUFFIX}.png "
                                       f"(e.g. 000{MASK_SUFFIX}.png for test/{folder.name}/000.png)")
                index[(folder.name, mask.stem[: -len(MASK_SUFFIX)])] = mask
        for folder in defect_dirs:
            if folder.name == "good":
                continue
            stems = {p.stem for p in _images_in(folder)}
            have = {s for (d, s) in index if d == folder.name}
            orphans = sorted(have - stems)
            if orphans:
                raise DatasetError(f"masks without images in ground_truth/{folder.name}/: "
                                   f"{', '.join(o + MASK_SUFFIX for o in orphans[:10])}")
            missing = sorted(stems - have)
            if have and missing:
                raise DatasetError(f"ground_truth/{folder.name}/ has masks for some images but not for: "
                                   f"{', '.join(m for m in missing[:10])}; add the missing masks "
                                   "or remove the folder")
            if stems and not have:
                raise DatasetError(f"ground_truth/ has no masks for defect '{folder.name}': add "
                                   f"ground_truth/{folder.name}/<name>{MASK_SUFFIX}.png for each image, or "
                                   "remove ground_truth/ to evaluate with image labels only")
        return index


def _images_in(folder: Path) -> list[Path]:
    """Image files of a folder, sorted; other files are skipped with a warning."""
    if not folder.is_dir():
        return []
    images = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            log.warning("skipping %s: not an image file (%s)", path, ", ".join(IMAGE_SUFFIXES))
    return images
