"""Datasets as uint8 batches for training, and the normal images that calibrate a run.

Calibration uses the layout's own normal validation images when it has them (MVTec AD 2's and LOCO's
validation/good: all of train/good then trains), else a held-out part of the training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edge_ad.data import SampleDataset
from edge_ad.runtime.preprocess import Geometry, prepare


class Prepared(Dataset):
    """Items of a SampleDataset through the shared geometry: image H x W x 3 uint8, label, mask."""

    def __init__(self, dataset: SampleDataset, geometry: Geometry, indices: list[int] | None = None) -> None:
        self.dataset = dataset
        self.geometry = geometry
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[self.indices[i]]
        out = {"image": torch.from_numpy(prepare(item["image"], self.geometry)), "label": item["label"]}
        if item["mask"] is not None:
            mask = prepare(np.repeat(item["mask"][..., None], 3, axis=2) * 255, self.geometry)[..., 0] > 127
            out["mask"] = torch.from_numpy(mask)
        return out


@dataclass(frozen=True)
class Part:
    """Some images of a dataset (by index): the training or the calibration images of a category."""

    dataset: SampleDataset
    indices: list[int]
    source: str                       # "train/good" (held out of it) or "validation" (the layout's own)

    def __len__(self) -> int:
        return len(self.indices)

    def prepared(self, geometry: Geometry) -> Prepared:
        return Prepared(self.dataset, geometry, self.indices)

    def samples(self, split: str) -> SampleDataset:
        """These images as a dataset of their own."""
        return self.dataset.subset(self.indices, split)


def train_val_parts(train: SampleDataset, val: SampleDataset | None, fraction: float,
                    seed: int) -> tuple[Part, Part]:
    """(training images, calibration images): all of train with the layout's validation images, or
    train split at random (split_train_val) when the layout has none."""
    if val is not None:
        if len(val) < 2:
            raise ValueError(f"{val.root}/validation/good has {len(val)} image(s): calibration needs at least 2 "
                             "normal images; add some, or remove the folder to hold out part of train/good instead")
        return Part(train, list(range(len(train))), "train/good"), Part(val, list(range(len(val))), "validation")
    t, v = split_train_val(len(train), fraction, seed)
    return Part(train, t, "train/good"), Part(train, v, "train/good")


def split_train_val(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Random disjoint train/val indices of train/good; val gets round(n * fraction), at least 2."""
    n_val = max(2, int(round(n * fraction)))
    if n - n_val < 2:
        raise ValueError(f"train/good has {n} images: too few to keep {n_val} for calibration and still "
                         "train; add normal images (at least 10 are advisable)")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
