"""Which parts of a frame the model looks at: a region of interest, and tiles of it.

A frame (or its region of interest) much larger than the model input loses small defects when it is
shrunk to that input. Tiling cuts it into rows x cols overlapping tiles, each prepared like a frame of
its own; the detector runs every tile of every frame as one batch, the image score is the highest tile
score and the heat maps are stitched back at the frame's size, taking the maximum where tiles overlap
(a defect seen at one tile's edge and in the middle of the next keeps its stronger response, and the
stitched map's peak is the image score's tile).

A ROI is (x, y, w, h) in the frame's pixels, the order OpenCV's rectangles use (edge_ad.regions); a
box is (top, left, height, width), the order arrays are indexed in. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_ad.regions import (DEFAULT_OVERLAP, Roi, RoiError, check_overlap, check_roi, parse_roi, parse_tiles,
                             rois_for)
from edge_ad.runtime.preprocess import Box

__all__ = ["DEFAULT_OVERLAP", "Roi", "RoiError", "View", "check_overlap", "check_roi", "cut", "parse_roi",
           "parse_tiles", "plan_view", "rois_for", "tile_boxes"]


@dataclass(frozen=True)
class View:
    """How the model looks at one image: its ROI (None: the whole image) and the boxes of the image
    that become model inputs (one: the ROI or the image; several: tiles)."""

    size: tuple[int, int]          # (height, width) of the image
    roi: Roi | None
    boxes: tuple[Box, ...]

    @property
    def whole(self) -> bool:
        """One model input showing the whole image: what a plain predict() does."""
        return self.boxes == ((0, 0, *self.size),)


def tile_boxes(height: int, width: int, rows: int, cols: int, overlap: float = DEFAULT_OVERLAP) -> list[Box]:
    """rows x cols boxes of equal size covering a height x width area, neighbours sharing `overlap` of a
    tile's side (at least that: rounding can add a pixel), row by row."""
    th, tops = _spans(height, rows, overlap)
    tw, lefts = _spans(width, cols, overlap)
    return [(top, left, th, tw) for top in tops for left in lefts]


def _spans(length: int, count: int, overlap: float) -> tuple[int, list[int]]:
    """(tile length, starts) of `count` tiles along `length` sharing `overlap` of a tile between neighbours."""
    if count > length:
        raise ValueError(f"{count} tiles along {length} pixels: fewer tiles than pixels, please")
    size = min(length, math.ceil(length / (count - (count - 1) * overlap)))
    if count == 1:
        return size, [0]
    return size, [round(k * (length - size) / (count - 1)) for k in range(count)]


def plan_view(size: tuple[int, int], roi=None, tiles=None, overlap: float = DEFAULT_OVERLAP, *,
              where: str = "") -> View:
    """The View of an image of `size` (H, W): its checked ROI and the boxes the model sees."""
    h, w = int(size[0]), int(size[1])
    checked = None if roi is None else check_roi(roi, h, w, where)
    x, y, rw, rh = checked if checked is not None else (0, 0, w, h)
    rows, cols = parse_tiles(tiles)
    boxes = tile_boxes(rh, rw, rows, cols, check_overlap(overlap))
    return View((h, w), checked, tuple((y + top, x + left, bh, bw) for top, left, bh, bw in boxes))


def cut(image: np.ndarray, view: View) -> list[np.ndarray]:
    """The parts of `image` the model sees, one per box of `view` (views, not copies)."""
    return [image[top:top + h, left:left + w] for top, left, h, w in view.boxes]


