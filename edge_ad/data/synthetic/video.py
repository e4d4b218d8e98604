"""A synthetic conveyor video: washers pass under a fixed camera, some defective, with a label file.

Each frame is framed like the "conveyor" category's images, so a model trained on that category
sees in-distribution frames. Labels (JSON Lines, one per frame): {"frame", "anomalous", "defects",
"defect_pixels"}; a frame is anomalous when at least half of a defect, and at least
MIN_DEFECT_PIXELS pixels of it, are in view (a sliver at the frame edge is not a visible defect).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edge_ad.data.synthetic import defects as D
from edge_ad.data.synthetic.layers import Layer, finish, paste
from edge_ad.data.synthetic.objects import washer
from edge_ad.data.synthetic.scenes import CATEGORIES, CONVEYOR_SPEED, MIN_DEFECT_PIXELS, conveyor_scene


def _part(seed: int, k: int, h: int, defect_rate: float) -> tuple[Layer, float, str | None]:
    """Part number k of the belt: its sprite, its row, and its defect (already painted) or None."""
    rng = np.random.default_rng([seed, 7, k])
    sprite = washer(rng, radius=0.27 * h * rng.uniform(0.98, 1.02))
    row = h / 2 + rng.normal(0, 3)
    defect = None
    if rng.random() < defect_rate:
        defect = str(rng.choice(list(D.OBJECT_DEFECTS)))
        D.OBJECT_DEFECTS[defect](rng, sprite, h / 256)
    return sprite, row, defect


def write_conveyor_video(path: str | Path, *, frames: int = 300, fps: float = 15.0, seed: int = 0,
                         defect_rate: float = 0.35, codec: str = "mp4v") -> Path:
    """Write the video to `path` and its labels to `<path stem>_labels.jsonl`; returns the labels path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = CATEGORIES["conveyor"].size
    spacing = 1.05 * w
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with codec {codec!r}; try codec='MJPG' and a .avi name")
    labels_path = path.with_name(path.stem + "_labels.jsonl")
    parts: dict[int, tuple[Layer, float, str | None]] = {}
    noise_rng = np.random.default_rng([seed, 11])
    try:
        with open(labels_path, "w") as labels:
            for t in range(frames):
                phase = t * CONVEYOR_SPEED * h / 240 / spacing
                first = int(np.floor(phase))          # part index at slot k = 0
                ids = [first + 1, first, first - 1]   # slots k = -1, 0, 1 from right to left
                for i in ids:
                    if i not in parts:
                        parts[i] = _part(seed, i, h, defect_rate) if i >= 0 else (_empty(h), h / 2, None)
                sprites = [parts[i][0] for i in ids]
                rows = [parts[i][1] for i in ids]
                frame, layers, origins = conveyor_scene(noise_rng, h, w, phase, sprites, rows)
                kinds, pixels = [], 0
                for layer, (top, left), i in zip(layers, origins, ids):
                    mask = np.zeros((h, w), bool)
                    paste(frame, mask, layer, top, left)
                    visible = int(mask.sum())
                    pixels += visible
                    if layer.defect is not None and visible >= max(MIN_DEFECT_PIXELS, 0.5 * layer.defect.sum()):
                        kinds.append(parts[i][2])
                noise = noise_rng.normal(0, 0.012, (h, w, 3)).astype(np.float32)
                writer.write(cv2.cvtColor(finish(frame, noise), cv2.COLOR_RGB2BGR))
                labels.write(json.dumps({"frame": t, "anomalous": bool(kinds), "defects": kinds,
                                         "defect_pixels": pixels}) + "\n")
                for old in [i for i in parts if i < first - 1]:
                    del parts[old]
    finally:
        writer.release()
    return labels_path


def _empty(h: int) -> Layer:
    """Belt before the first part: nothing to draw."""
    return Layer(np.zeros((1, 1, 3), np.float32), np.zeros((1, 1), np.float32), np.zeros((1, 1), bool))
