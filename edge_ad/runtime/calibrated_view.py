"""The view (region of interest, tiles, overlap) a calibration was made with, and the check of a view in use.

Scores depend on the view: a ROI or tiles show the model the part at another scale, so a threshold set
on whole frames is not one for tiles. `edge-ad calibrate` records its view in the calibration
(`calibration.view`, see `view_record`); a Detector logs one warning when it is asked for another view
(`view_mismatch`). Calibrations made before the view was recorded have none and are never warned
about (their view is unknown). NumPy-free, never imports torch.
"""

from __future__ import annotations

import logging
from numbers import Real

from edge_ad.regions import DEFAULT_OVERLAP, check_overlap, parse_roi, parse_tiles

__all__ = ["describe_view", "view_mismatch", "view_record", "warn_if_other_view"]

log = logging.getLogger(__name__)


def view_record(roi=None, tiles=None, overlap: float = DEFAULT_OVERLAP) -> dict:
    """The canonical form of one view, as a calibration stores it: {"roi": [x, y, w, h] or None,
    "tiles": [rows, cols] or None (1x1 is none), "overlap": the tiles' overlap or None untiled}.
    Raises ValueError (RoiError) for a malformed setting."""
    rows, cols = parse_tiles(tiles)
    tiled = (rows, cols) != (1, 1)
    return {"roi": list(parse_roi(roi)) if roi is not None else None,
            "tiles": [rows, cols] if tiled else None,
            "overlap": check_overlap(overlap) if tiled else None}


def describe_view(view: dict) -> str:
    """A view in words: "roi 10,20,300,200, tiles 2x3 (overlap 0.1)", "the whole frame, untiled"."""
    roi = view.get("roi")
    tiles = view.get("tiles")
    where = "roi " + ",".join(str(v) for v in roi) if roi else "the whole frame"
    how = f"tiles {tiles[0]}x{tiles[1]} (overlap {view.get('overlap'):g})" if tiles else "untiled"
    return f"{where}, {how}"


def view_mismatch(calibrated: dict | None, roi=None, tiles=None, overlap: float = DEFAULT_OVERLAP) -> str | None:
    """A sentence saying how the view in use differs from the `calibrated` one; None when it does not,
    when the calibration recorded no view, or when the setting is malformed (its own check reports
    that). `roi` may be one ROI or a list of one per image (each is compared)."""
    if not isinstance(calibrated, dict):
        return None
    try:
        used = [view_record(r, tiles, overlap) for r in _each_roi(roi)]
    except (TypeError, ValueError):
        return None
    want = {key: calibrated.get(key) for key in ("roi", "tiles", "overlap")}
    for view in used:
        if view != want:
            return (f"the view in use ({describe_view(view)}) differs from the one the threshold was calibrated "
                    f"with ({describe_view(want)}): scores shift between views, so the verdicts may be off; "
                    "calibrate again with the same --roi/--tiles/--overlap as this stream (edge-ad calibrate)")
    return None


def warn_if_other_view(calibration: dict, roi=None, tiles=None, overlap: float = DEFAULT_OVERLAP) -> bool:
    """Log the mismatch of `view_mismatch(calibration["view"], ...)` as a warning; True when it did."""
    message = view_mismatch(calibration.get("view"), roi, tiles, overlap)
    if message is not None:
        log.warning(message)
    return message is not None


def _each_roi(roi) -> list:
    """One ROI (None, "x,y,w,h", four numbers) -> [it]; a list of one per image -> its distinct items."""
    if roi is None or isinstance(roi, str):
        return [roi]
    items = list(roi)
    if len(items) == 4 and all(isinstance(v, Real) and not isinstance(v, bool) for v in items):
        return [items]
    distinct = []
    for item in items:
        if item not in distinct:
            distinct.append(item)
    return distinct
