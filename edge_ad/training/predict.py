"""Scores and maps of a model over a dataset, through the same heatmap kernel as every runtime."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edge_ad.metrics import aupro, image_auroc, pixel_auroc
from edge_ad.postprocess import HeatmapSpec


def predict(model: nn.Module, data: DataLoader, spec: HeatmapSpec, device: str) -> dict:
    """Image scores, full-size maps (at the crop size), labels and masks (None without ground truth),
    as every runtime computes them: the model's raw map through the heatmap kernel."""
    model.eval()

    @torch.no_grad()
    def run(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return spec.apply(model(images).float().cpu().numpy(), threads=None)

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
    """image_auroc always when the test images hold both classes; pixel_auroc and aupro when the
    dataset has masks with anomalous and normal pixels. A metric that cannot be computed is None,
    with the reason in `absent` (present only when something is absent)."""
    labels = np.asarray(pred["labels"])
    out: dict = {"image_auroc": None, "pixel_auroc": None, "aupro": None}
    absent: dict[str, str] = {}
    scores, maps = np.asarray(pred["scores"]), np.asarray(pred["maps"])
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        absent["image_auroc"] = f"the model's score is NaN/inf on test images {bad[:8].tolist()}"
    elif (labels == 1).any() and (labels == 0).any():
        out["image_auroc"] = image_auroc(labels, scores)
    else:
        absent["image_auroc"] = ("no anomalous (defect) test images" if not (labels == 1).any()
                                 else "no normal (good) test images")
    masks = pred["masks"]
    if masks is None:
        absent["pixel_auroc"] = absent["aupro"] = "no ground_truth/ masks"
    elif not masks.any():
        absent["pixel_auroc"] = absent["aupro"] = "no anomalous pixels in the masks (no defect test images)"
    elif masks.all():
        absent["pixel_auroc"] = absent["aupro"] = "no normal pixels in the masks"
    elif not np.isfinite(maps).all():
        absent["pixel_auroc"] = absent["aupro"] = "the model's maps hold NaN/inf on some test images"
    else:
        out["pixel_auroc"] = pixel_auroc(masks, maps)
        out["aupro"] = aupro(masks, maps)
    if absent:
        out["absent"] = absent
    return out
