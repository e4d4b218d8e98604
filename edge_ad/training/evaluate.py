"""Scores and maps of a model over a dataset, through the same heatmap kernel as every runtime."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edge_ad.metrics import aupro, image_auroc, pixel_auroc
from edge_ad.postprocess import HeatmapSpec, heatmap


def predict(model: nn.Module, data: DataLoader, spec: HeatmapSpec, device: str) -> dict:
    """Image scores, full-size maps (at the crop size), labels and masks (None without ground truth),
    as every runtime computes them: the model's raw map through the heatmap kernel."""
    model.eval()

    @torch.no_grad()
    def run(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        raw = model(images).float().cpu().numpy()
        return heatmap(np.ascontiguousarray(raw), spec.output_size, smooth=spec.smooth, sigma=spec.sigma,
                       window=spec.window, align_corners=spec.align_corners, score_from=spec.score_from)

    return predict_with(run, data, device)


def predict_with(run: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]], data: DataLoader,
                 device: str) -> dict:
    """As `predict`, with any function of a uint8 batch that returns (maps N x H x W, scores N)."""
    scores, maps, labels, masks = [], [], [], []
    for batch in data:
        m, s = run(batch["image"].to(device))
        scores.append(s)
        maps.append(m)
        labels.append(batch["label"].numpy())
        if "mask" in batch:
            masks.append(batch["mask"].numpy())
    return {"scores": np.concatenate(scores), "maps": np.concatenate(maps), "labels": np.concatenate(labels),
            "masks": np.concatenate(masks) if masks else None}


def metrics(pred: dict) -> dict:
    """image_auroc always; pixel_auroc and aupro when the dataset has masks (else None)."""
    out = {"image_auroc": image_auroc(pred["labels"], pred["scores"]), "pixel_auroc": None, "aupro": None}
    if pred["masks"] is not None and pred["masks"].any():
        out["pixel_auroc"] = pixel_auroc(pred["masks"], pred["maps"])
        out["aupro"] = aupro(pred["masks"], pred["maps"])
    return out
