"""MVTec datasets as uint8 batches for training, with a validation split carved from train/good."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edge_ad.data import MVTecDataset
from edge_ad.runtime.preprocess import Geometry, prepare


class Prepared(Dataset):
    """Items of an MVTecDataset through the shared geometry: image N x H x W x 3 uint8, label, mask."""

    def __init__(self, dataset: MVTecDataset, geometry: Geometry, indices: list[int] | None = None) -> None:
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
