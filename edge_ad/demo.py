"""The main job on the embedded default: synthetic data -> anomaly maps -> heatmap kernel -> metrics.

Until the first model lands, the maps come from a transparent baseline (colour distance to the nearest
normal training image on a 32 x 32 grid, tolerating one-cell shifts), not from one of the five
published models; everything after the raw map (kernel, metrics, overlays) is the real pipeline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from edge_ad.data import MVTecDataset
from edge_ad.data.synthetic import Counts, make_category, write_conveyor_video
from edge_ad.metrics import aupro, image_auroc, pixel_auroc
from edge_ad.postprocess import heatmap

GRID = 32


def _low_res(images: list[np.ndarray]) -> np.ndarray:
    return np.stack([cv2.resize(im, (GRID, GRID), interpolation=cv2.INTER_AREA) for im in images]).astype(np.float32)


def baseline_maps(train: list[np.ndarray], test: list[np.ndarray]) -> np.ndarray:
    """N x GRID x GRID raw maps: per cell, the RGB distance to the closest normal image's cell
    (over all training images and shifts of up to one cell, so small position jitter is normal)."""
    normal, query = _low_res(train), _low_res(test)
    best = np.full(query.shape[:3], np.inf, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.roll(normal, (dy, dx), axis=(1, 2))
            dist = np.sqrt(((query[:, None] - shifted[None]) ** 2).sum(-1)).min(axis=1)
            best = np.minimum(best, dist)
    return np.ascontiguousarray(best)


def overlay(image: np.ndarray, amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Colour the normalized map over the image (BGR for cv2.imwrite)."""
    norm = np.clip((amap - lo) / (hi - lo + 1e-9), 0, 1)
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 0.6, colour, 0.4, 0)


def run(out: str | Path, *, category: str = "washer", seed: int = 0) -> dict:
    out = Path(out)
    start = time.perf_counter()
    root = make_category(out / "data", category, counts=Counts(train=40, test_good=15, test_per_defect=6), seed=seed)
    write_conveyor_video(out / "data" / "conveyor.mp4", frames=150, seed=seed)
    train, test = MVTecDataset(root, "train"), MVTecDataset(root, "test")
    test_items = [test[i] for i in range(len(test))]
    raw = baseline_maps([train[i]["image"] for i in range(len(train))], [t["image"] for t in test_items])
    size = test_items[0]["image"].shape[:2]
    t0 = time.perf_counter()
    maps, scores = heatmap(raw, size, sigma=4.0)
    kernel_ms = (time.perf_counter() - t0) * 1e3
    labels = np.array([t["label"] for t in test_items])
    masks = np.stack([t["mask"] for t in test_items])
    summary = {
        "model": "nearest-normal-image colour baseline, not a published model",
        "category": category,
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(masks, maps),
        "aupro": aupro(masks, maps),
        "test_images": len(test_items),
        "heatmap_kernel_ms_for_all": kernel_ms,
        "seconds": time.perf_counter() - start,
    }
    shots = out / "overlays"
    shots.mkdir(parents=True, exist_ok=True)
    lo, hi = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
    for i, item in enumerate(test_items):
        if item["label"] and i % 6 == 0:
            cv2.imwrite(str(shots / f"{item['defect']}_{i:03d}.png"), overlay(item["image"], maps[i], lo, hi))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
