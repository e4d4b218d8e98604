"""What every dataset layout gives: a list of samples read the same way (image RGB uint8, label, mask).

Each layout (mvtec.py, mvtec2.py, loco.py, visa.py, folder.py) only finds its files and builds
`Sample`s; reading, merging masks and checking their sizes happen here once, so training and
evaluation code never depends on the layout. Nothing here imports torch: a `SampleDataset` is a
plain indexable object that torch's DataLoader accepts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from edge_ad.imaging import IMAGE_SUFFIXES, read_image, read_mask

log = logging.getLogger(__name__)

__all__ = ["DatasetError", "Sample", "SampleDataset", "Splits", "images_in", "subfolders"]


class DatasetError(ValueError):
    """A dataset folder that does not follow its layout; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    """One image: its file, label (0 normal, 1 anomalous), defect name ("good" for normal images)
    and its ground-truth mask file(s). Several mask files (MVTec LOCO: one per defect region) are
    merged into one mask; none with `has_masks` set means an all-normal mask."""

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None
    extra_masks: tuple[Path, ...] = ()

    @property
    def mask_paths(self) -> tuple[Path, ...]:
        return ((self.mask_path,) if self.mask_path is not None else ()) + tuple(self.extra_masks)


class SampleDataset:
    """Indexable split; items are dicts with image (RGB uint8), label, mask, defect, path.

    `mask` is H x W uint8 (1 = anomalous: any non-zero value of any of the sample's mask files) when
    the dataset has ground truth (all zeros for an image without a mask file), else None. Works with
    torch's DataLoader as a map-style dataset.
    """

    def __init__(self, root: str | Path, split: str, samples: Iterable[Sample], *, has_masks: bool) -> None:
        self.root = Path(root)
        self.split = split
        self.samples = list(samples)
        self.has_masks = has_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image(sample.path)
        return {"image": image, "label": sample.label, "mask": self._mask(sample, image.shape[:2]),
                "defect": sample.defect, "path": str(sample.path)}

    def _mask(self, sample: Sample, shape: tuple[int, ...]) -> np.ndarray | None:
        """The sample's masks merged (any non-zero pixel of any file), checked against the image size."""
        if not self.has_masks:
            return None
        mask = np.zeros(shape, np.uint8)
        for path in sample.mask_paths:
            part = read_mask(path)
            if part.shape != shape:
                raise DatasetError(f"mask {path} is {part.shape[1]}x{part.shape[0]} but its image "
                                   f"{sample.path} is {shape[1]}x{shape[0]}; they must match")
            mask |= part
        return mask

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def defects(self) -> list[str]:
        return sorted({s.defect for s in self.samples})

    def subset(self, indices: Iterable[int], split: str) -> "SampleDataset":
        """The samples at `indices`, as a dataset of their own (same root and ground truth)."""
        return SampleDataset(self.root, split, [self.samples[i] for i in indices], has_masks=self.has_masks)

    def plus(self, other: "SampleDataset", split: str) -> "SampleDataset":
        """This dataset's samples followed by `other`'s; masks when either has them (images of the
        other without ground truth then get an all-normal mask, which is right only for normal images)."""
        has_masks = self.has_masks or other.has_masks
        for part in (self, other):
            if has_masks and not part.has_masks and any(s.label for s in part.samples):
                raise DatasetError(f"cannot join the anomalous images of {part.root}, which have no masks, to "
                                   "images with masks; give masks for all anomalous images or for none")
        return SampleDataset(self.root, split, self.samples + other.samples, has_masks=has_masks)


@dataclass
class Splits:
    """One category as a layout gives it: normal training images, the layout's own normal validation
    images (None: the calibration split is carved from `train`), and test images (possibly none: a
    new line has good images only). `test_where` names where test images are looked for."""

    format: str
    root: Path
    train: SampleDataset
    test: SampleDataset
    val: SampleDataset | None = None
    test_where: str = ""


def empty(root: Path, split: str) -> SampleDataset:
    """A split without images (no test folder)."""
    return SampleDataset(root, split, [], has_masks=False)


def images_in(folder: Path) -> list[Path]:
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


def subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders of a folder, sorted (none when it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
