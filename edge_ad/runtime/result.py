"""What the detector returns per image: scores, decision, and the maps at the image's own size.

The maps come back over the whole image whatever the model saw of it: each model input's map is placed
where its pixels came from (by the bundle's fit, inside the ROI or tile it showed); pixels that no
model input showed (outside the ROI, a "crop" fit's border strips) are 0 in the heat map and the mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_ad.regions import Roi
from edge_ad.runtime.preprocess import Box, Geometry


class InferenceError(ValueError):
    """The model's output was not finite (NaN or inf) for some images of a batch: those images have no
    result (never "normal"). `indices`: their positions in the batch; `results`: one entry per image of
    the batch, the Result of each finite one and None for each failed one (empty when not computed)."""

    def __init__(self, message: str, indices: list[int], results: list | None = None) -> None:
        super().__init__(message)
        self.indices = list(indices)
        self.results = list(results or [])


@dataclass
class Result:
    """One image's result. `heatmap`/`mask` are computed on first access, at the input image's size."""

    score: float                      # raw image score, the model's units (higher = more anomalous)
    normalized_score: float           # calibrated to [0, 1]; the threshold maps to 0.5
    is_anomalous: bool                # score > calibrated threshold
    crop_map: np.ndarray = field(repr=False)   # the model's map of its input (H x W float32); tiled: the top tile's
    image_size: tuple[int, int]                # (height, width) of the input image
    geometry: Geometry = field(repr=False)     # how a frame (or ROI, or tile) became the model input
    pixel_norm: tuple[float, float]            # (lo, hi) of the calibrated map normalization
    pixel_threshold: float                     # calibrated, in the map's raw units
    roi: Roi | None = None                     # the region of interest the model looked at; None: the whole image
    parts: tuple[tuple[Box, np.ndarray], ...] = field(default=(), repr=False)
    # ^ with a ROI or tiles: (box of the image, the model's map of it) per model input; empty: crop_map, whole image
    _heatmap: np.ndarray | None = field(default=None, init=False, repr=False)
    _seen: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def heatmap(self) -> np.ndarray:
        """Normalized anomaly map in [0, 1] over the whole input image (0 where no model input looked:
        outside the ROI, a "crop" fit's border strips); the maximum where tiles overlap."""
        if self._heatmap is None:
            h, w = self.image_size
            full, seen = np.zeros((h, w), np.float32), np.zeros((h, w), bool)
            for box, raw in self.parts or (((0, 0, h, w), self.crop_map),):
                self._paint(full, seen, box, raw)
            self._heatmap, self._seen = full, seen
        return self._heatmap

    def _paint(self, full: np.ndarray, seen: np.ndarray, box: Box, raw: np.ndarray) -> None:
        """One model input's map, normalized, into `full` where its pixels came from (max with what is there)."""
        lo, hi = self.pixel_norm
        top, left, bh, bw = box
        (sy, sx, sh, sw), (dy, dx, dh, dw) = self.geometry.placement(bh, bw)
        if min(sh, sw, dh, dw) < 1:
            return
        norm = np.clip((raw[sy:sy + sh, sx:sx + sw] - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        if norm.shape != (dh, dw):
            norm = cv2.resize(norm, (dw, dh), interpolation=cv2.INTER_LINEAR)
        y, x = top + dy, left + dx
        np.maximum(full[y:y + dh, x:x + dw], norm, out=full[y:y + dh, x:x + dw])
        seen[y:y + dh, x:x + dw] = True

    @property
    def mask(self) -> np.ndarray:
        """uint8 mask (1 = anomalous pixel) at the input image's size, from the calibrated pixel threshold;
        0 where no model input looked."""
        lo, hi = self.pixel_norm
        heatmap = self.heatmap
        return ((heatmap >= (self.pixel_threshold - lo) / (hi - lo)) & self._seen).astype(np.uint8)

    def overlay(self, image: np.ndarray, *, color: str = "BGR", alpha: float = 0.45) -> np.ndarray:
        """The heatmap blended over `image` (the image this result is for: H x W x 3 uint8, in the
        `color` order given), with a score label."""
        color = color.upper() if isinstance(color, str) else color
        if color not in ("BGR", "RGB"):
            raise ValueError(f"color must be 'BGR' or 'RGB', got {color!r}")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"overlay() needs the frame as an H x W x 3 uint8 array, got a {what}")
        if tuple(image.shape[:2]) != tuple(self.image_size):
            raise ValueError(f"overlay() got a {image.shape[1]}x{image.shape[0]} image for a result of a "
                             f"{self.image_size[1]}x{self.image_size[0]} one; pass the image the result is for")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
        colours = cv2.applyColorMap((self.heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
        if color == "RGB":
            colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
        blended = cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0)
        if self.roi is not None:
            x, y, w, h = self.roi
            cv2.rectangle(blended, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), 1, cv2.LINE_AA)
        label = f"{'ANOMALY' if self.is_anomalous else 'ok'} {self.normalized_score:.2f}"
        colour = (0, 0, 255) if self.is_anomalous else (0, 200, 0)
        colour = colour[::-1] if color == "RGB" else colour
        cv2.putText(blended, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, colour, 2, cv2.LINE_AA)
        return blended
