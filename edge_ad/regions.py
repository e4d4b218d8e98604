"""What part of a frame is inspected: a region of interest (x,y,w,h) and tiles (RxC), parsed and checked.

Shared by the runtime (Detector.predict's `roi`, `tiles`, `overlap`; edge_ad.runtime.tiling cuts the
frames) and the stream (a ROI per source, checked as each frame enters), which never import each
other's modules; standard library only. A ROI is (x, y, w, h) in the frame's pixels: left, top, width,
height, the order OpenCV's rectangles use.
"""

from __future__ import annotations

import re
from numbers import Real

Roi = tuple[int, int, int, int]      # (x, y, width, height) in the frame's pixels

DEFAULT_OVERLAP = 0.1                # of a tile's side, shared with its neighbour
MAX_OVERLAP = 0.5
MAX_TILES_PER_SIDE = 16
_INTEGER = re.compile(r"\s*[+-]?\d+\s*", re.ASCII)              # ASCII digits only: not "１" or "٣"
_TILES = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", re.ASCII)


class ViewError(ValueError):
    """A view (ROI, tiles) that one image cannot take: the message says which and why. Callers that
    predict many images give that image an error and go on; a malformed setting is a plain ValueError."""


class RoiError(ViewError):
    """A region of interest that is malformed or does not fit its frame; the message says which and why."""


class TilingError(ViewError):
    """More tiles along a side than the image (or its ROI) has pixels."""


def parse_roi(value) -> Roi:
    """"x,y,w,h" or a sequence of four whole numbers -> (x, y, w, h); w and h positive, x and y >= 0."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [whole_number(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4:
        raise RoiError(f"a region of interest is x,y,w,h: four whole numbers of pixels (left, top, width, height), "
                       f"e.g. 100,50,640,480; got {value!r}")
    x, y, w, h = numbers
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise RoiError(f"region of interest {x},{y},{w},{h}: x and y must be >= 0, the width and height >= 1")
    return x, y, w, h


def check_roi(roi, frame_h: int, frame_w: int, where: str = "") -> Roi:
    """The ROI, parsed and checked to lie inside a frame_w x frame_h frame; `where` prefixes the message."""
    x, y, w, h = parse_roi(roi)
    if x + w > frame_w or y + h > frame_h:
        raise RoiError(f"{where}region of interest {x},{y},{w},{h} (x,y,w,h) reaches past the {frame_w}x{frame_h} "
                       f"frame (to x={x + w}, y={y + h}); give one inside it (x + w <= {frame_w}, y + h <= {frame_h})")
    return x, y, w, h


def whole_number(value) -> int:
    """A whole number from an int, an integral float or a numeric string; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        if not _INTEGER.fullmatch(value):
            raise ValueError(value)
        return int(value)
    if not isinstance(value, Real):
        raise TypeError(value)
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def rois_for(roi, count: int) -> list:
    """A `roi` argument -> one ROI (or None) per image or source: None, one ROI for all (x,y,w,h as a
    string or four numbers), or a list with one ROI (or None: the whole frame) each."""
    if roi is None or isinstance(roi, str):
        return [roi] * count
    try:
        items = list(roi)
    except TypeError:
        raise RoiError(f"roi must be x,y,w,h (a string or four numbers), or a list of one per image or source; "
                       f"got {type(roi).__name__}") from None
    if len(items) == 4 and all(isinstance(v, Real) and not isinstance(v, bool) for v in items):
        return [tuple(items)] * count
    if len(items) != count:
        raise RoiError(f"got {len(items)} regions of interest for {count} images or sources: give one x,y,w,h for "
                       "all, or one (or None) each")
    return items


def parse_tiles(value) -> tuple[int, int]:
    """"RxC" (e.g. "2x3") or (rows, cols) -> (rows, cols), each 1..16; None -> (1, 1): no tiling."""
    if value is None:
        return 1, 1
    try:
        if isinstance(value, str):
            match = _TILES.fullmatch(value)
            rows, cols = int(match[1]), int(match[2])          # no match: TypeError
        else:
            if len(value) != 2:
                raise ValueError(value)
            rows, cols = whole_number(value[0]), whole_number(value[1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"tiles are ROWSxCOLS, e.g. 2x3 (or a pair (rows, cols)); got {value!r}") from None
    if not (1 <= rows <= MAX_TILES_PER_SIDE and 1 <= cols <= MAX_TILES_PER_SIDE):
        raise ValueError(f"tiles {rows}x{cols}: rows and columns must each be 1 to {MAX_TILES_PER_SIDE}")
    return rows, cols


def check_overlap(overlap) -> float:
    """The fraction of a tile's side shared with its neighbour: a number from 0 to below 0.5."""
    if isinstance(overlap, bool) or not isinstance(overlap, Real) or not 0 <= overlap < MAX_OVERLAP:
        raise ValueError(f"tile overlap must be a number from 0 to below {MAX_OVERLAP} (a fraction of a tile's side, "
                         f"e.g. 0.1), got {overlap!r}")
    return float(overlap)
