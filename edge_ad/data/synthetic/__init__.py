"""Synthetic MVTec-layout categories and a conveyor video, deterministic by seed, no downloads.

Three textures (weave, grain, tiles), two objects (washer, capsule) and `conveyor` (washers on a belt,
framed like the conveyor video). Defects: scratch, hole (textures) or missing part (objects), stain,
contamination, deformation, each with an exact mask. `python -m edge_ad.data.synthetic --out DIR`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tempfile

import cv2
import numpy as np

from edge_ad.data.synthetic.scenes import CATEGORIES, Category, render
from edge_ad.data.synthetic.video import write_conveyor_video

__all__ = ["CATEGORIES", "Category", "Counts", "make_category", "render", "write_conveyor_video"]


@dataclass(frozen=True)
class Counts:
    train: int = 60
    test_good: int = 20
    test_per_defect: int = 6


def make_category(root: str | Path, name: str, *, counts: Counts = Counts(), seed: int = 0) -> Path:
    """Write category `name` in the MVTec AD layout under root/name; returns that folder."""
    if name not in CATEGORIES:
        raise ValueError(f"unknown synthetic category {name!r}; choose from {', '.join(CATEGORIES)}")
    category = CATEGORIES[name]
    out = Path(root) / name
    cat_id = list(CATEGORIES).index(name)
    _write_split(out / "train" / "good", category, [seed, cat_id, 0], counts.train)
    _write_split(out / "test" / "good", category, [seed, cat_id, 1], counts.test_good)
    for d, defect in enumerate(category.defects):
        _write_split(out / "test" / defect, category, [seed, cat_id, 2 + d], counts.test_per_defect,
                     defect=defect, masks=out / "ground_truth" / defect)
    return out


def _write_split(folder: Path, category: Category, seed: list[int], count: int, *,
                 defect: str | None = None, masks: Path | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if masks is not None:
        masks.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = render(category, [*seed, i], defect)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if category.kind == "conveyor":
            bgr = camera_roundtrip(bgr)
        _imwrite(folder / f"{i:03d}.png", bgr)
        if masks is not None:
            _imwrite(masks / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)


def camera_roundtrip(bgr: np.ndarray, codec: str = "mp4v") -> np.ndarray:
    """The image as the conveyor video delivers frames: through OpenCV's video encode and decode.

    The round trip shifts levels by a few grey values (measured: 60 -> 57); images of a category meant
    to match the video must be captured the same way, as a real line's training images come from its
    own camera.
    """
    h, w = bgr.shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/frame.mp4"
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), 15, (w, h))
        writer.write(bgr)
        writer.release()
        ok, frame = cv2.VideoCapture(path).read()
    if not ok:
        raise RuntimeError(f"OpenCV could not round-trip a frame through codec {codec!r}")
    return frame


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
