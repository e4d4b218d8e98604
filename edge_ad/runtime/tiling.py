"""Which parts of a frame the model looks at: a region of interest, and tiles of it.

A frame (or its region of interest) much larger than the model input loses small defects when it is
shrunk to that input. Tiling cuts it into rows x cols overlapping tiles, each prepared like a frame of
its own; the detector runs every tile of every frame as one batch, the image score is the highest tile
score and the heat maps are stitched back at the frame's size, taking the maximum where tiles overlap
(a defect seen at one tile's edge and in the middle of the next keeps its stronger response, and the
stitched map's peak is the image score's tile).

Under fit "crop" (every bundle written before the field existed) the model sees only the centre of
what it is given, so each tile is cut larger than its share (into its neighbours, or past the ROI into
the rest of the frame) until the centre it shows covers that share: no seam between tiles goes
uninspected. Only where a tile meets the frame's edge is there nothing to grow into; a strip there stays
unseen, never wider than the untiled crop fit's border strip.

A ROI is (x, y, w, h) in the frame's pixels, the order OpenCV's rectangles use (edge_ad.regions); a
box is (top, left, height, width), the order arrays are indexed in. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge_ad.regions import (DEFAULT_OVERLAP, Roi, RoiError, TilingError, ViewError, check_overlap, check_roi,
                             parse_roi, parse_tiles, rois_for)
from edge_ad.runtime.preprocess import Box, Geometry

__all__ = ["DEFAULT_OVERLAP", "MAX_UPSCALE", "Roi", "RoiError", "TilingError", "View", "ViewError", "check_overlap",
           "check_roi", "cut", "parse_roi", "parse_tiles", "plan_view", "rois_for", "tile_boxes"]

log = logging.getLogger(__name__)

MAX_UPSCALE = 4.0            # a box enlarged more than this to the model input is warned about (once per size)
_WARNED_LIMIT = 256          # distinct (box, input) sizes remembered for that warning
_warned: set[tuple[int, int, int, int]] = set()


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
    tile's side (at least that: rounding can add a pixel), row by row. TilingError when a side has
    fewer pixels than tiles."""
    if rows > height or cols > width:
        raise TilingError(f"{rows}x{cols} tiles (rows x columns) do not fit {width}x{height} pixels (width x height): "
                          "a tile needs at least one pixel each way; use fewer tiles")
    th, tops = _spans(height, rows, overlap)
    tw, lefts = _spans(width, cols, overlap)
    return [(top, left, th, tw) for top in tops for left in lefts]


def _spans(length: int, count: int, overlap: float) -> tuple[int, list[int]]:
    """(tile length, starts) of `count` (<= length) tiles along `length` sharing `overlap` of a tile."""
    size = min(length, math.ceil(length / (count - (count - 1) * overlap)))
    if count == 1:
        return size, [0]
    return size, [round(k * (length - size) / (count - 1)) for k in range(count)]


def plan_view(size: tuple[int, int], roi=None, tiles=None, overlap: float = DEFAULT_OVERLAP, *,
              where: str = "", geometry: Geometry | None = None) -> View:
    """The View of an image of `size` (H, W): its checked ROI and the boxes the model sees. With the
    bundle's `geometry` under fit "crop", boxes grow so that what the model sees covers the ROI (see
    the module docstring), and a box enlarged more than MAX_UPSCALE times is warned about. RoiError:
    the ROI does not fit; TilingError: the image (or ROI) has fewer pixels than tiles along a side."""
    h, w = int(size[0]), int(size[1])
    checked = None if roi is None else check_roi(roi, h, w, where)
    x, y, rw, rh = checked if checked is not None else (0, 0, w, h)
    rows, cols = parse_tiles(tiles)
    try:
        boxes = tile_boxes(rh, rw, rows, cols, check_overlap(overlap))
    except TilingError:
        what = f"the {rw}x{rh} region of interest of the {w}x{h} image" if checked else f"the {w}x{h} image"
        raise TilingError(f"{where}{what} (width x height) is too small for tiles {rows}x{cols} (rows x columns): "
                          f"a tile needs at least one pixel each way; use at most {min(rows, rh)}x{min(cols, rw)} "
                          "tiles for it") from None
    boxes = [(y + top, x + left, bh, bw) for top, left, bh, bw in boxes]
    if geometry is not None:
        boxes = [_covering(box, (h, w), geometry) for box in boxes]
        _warn_upscaled(boxes, geometry)
    return View((h, w), checked, tuple(boxes))


@functools.lru_cache(maxsize=1024)
def _covering(box: Box, size: tuple[int, int], geometry: Geometry) -> Box:
    """The box to cut so that the part the model sees (geometry.region) covers `box`, as far as the
    frame of `size` (H, W) allows; `box` itself for the fits that show the model every pixel."""
    if geometry.fit != "crop":
        return box
    top, left, bh, bw = box
    start_y, len_y = _covering_span(top, top + bh, size[0], lambda n: _rows_seen(geometry, n))
    start_x, len_x = _covering_span(left, left + bw, size[1], lambda n: _cols_seen(geometry, n))
    return start_y, start_x, len_y, len_x


def _rows_seen(geometry: Geometry, n: int) -> tuple[int, int]:
    """[first, end) of the rows the model sees of a box n rows high."""
    top, _, height, _ = geometry.region(n, 1)
    return top, top + height


def _cols_seen(geometry: Geometry, n: int) -> tuple[int, int]:
    """[first, end) of the columns the model sees of a box n columns wide."""
    _, left, _, width = geometry.region(1, n)
    return left, left + width


def _covering_span(a: int, b: int, n: int, seen: Callable[[int], tuple[int, int]]) -> tuple[int, int]:
    """(start, length) of the span inside [0, n) whose seen part (`seen(length)`, relative to start)
    is [a, b) exactly, or, at an edge of [0, n), reaches from that edge's seen limit to the far end."""
    length = _smallest(b - a, n, lambda k: seen(k)[1] - seen(k)[0] >= b - a)
    start = None if length is None else a - seen(length)[0]
    if start is not None and start >= 0 and start + length <= n:
        return start, length
    if start is None or start < 0:                        # at the frame's start: the seen part ends at b
        return 0, _smallest(b, n, lambda k: seen(k)[1] >= b) or n
    length = _smallest(n - a, n, lambda k: k - seen(k)[0] >= n - a) or n   # at its end: seen from a
    return n - length, length


def _smallest(low: int, n: int, ok: Callable[[int], bool]) -> int | None:
    """The smallest length in [low, n] with ok(length), None if none (a seen edge moves by at most one
    pixel per pixel of length, so the scan from the least possible length is short)."""
    for k in range(max(1, low), n + 1):
        if ok(k):
            return k
    return None


def _warn_upscaled(boxes: list[Box], geometry: Geometry) -> None:
    """Log once per (box size, model input) a box enlarged more than MAX_UPSCALE times: small tiles or
    ROIs then show the model blurred, blown-up pixels it was not trained on, which it may flag."""
    ch, cw = geometry.crop
    for _, _, bh, bw in boxes:
        key = (bh, bw, ch, cw)
        if max(ch / bh, cw / bw) <= MAX_UPSCALE or key in _warned:
            continue
        if len(_warned) >= _WARNED_LIMIT:
            _warned.clear()
        _warned.add(key)
        log.warning("a %dx%d (width x height) tile or region of interest is enlarged %.0fx to the %dx%d model input; "
                    "so small a part is blurred and may be flagged for that alone: use fewer tiles or a larger "
                    "region of interest", bw, bh, max(ch / bh, cw / bw), cw, ch)


def cut(image: np.ndarray, view: View) -> list[np.ndarray]:
    """The parts of `image` the model sees, one per box of `view` (views, not copies)."""
    return [image[top:top + h, left:left + w] for top, left, h, w in view.boxes]


