"""What the detector returns per image: scores, decision, and the maps at the image's own size."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_ad.runtime.preprocess import Geometry


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
    crop_map: np.ndarray = field(repr=False)   # full-size map of the model's crop (H x W float32)
    image_size: tuple[int, int]                # (height, width) of the input image
    geometry: Geometry = field(repr=False)     # where the crop sits in the input image
    pixel_norm: tuple[float, float]            # (lo, hi) of the calibrated map normalization
    pixel_threshold: float                     # calibrated, in the map's raw units
    _heatmap: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def heatmap(self) -> np.ndarray:
        """Normalized anomaly map in [0, 1] over the whole input image (0 outside the model's crop)."""
        if self._heatmap is None:
            lo, hi = self.pixel_norm
            norm = np.clip((self.crop_map - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
            h, w = self.image_size
            full = np.zeros((h, w), np.float32)
            top, left, rh, rw = self.geometry.region(h, w)
            full[top:top + rh, left:left + rw] = cv2.resize(norm, (rw, rh), interpolation=cv2.INTER_LINEAR)
            self._heatmap = full
        return self._heatmap

    @property
    def mask(self) -> np.ndarray:
        """uint8 mask (1 = anomalous pixel) at the input image's size, from the calibrated pixel threshold."""
        lo, hi = self.pixel_norm
        return (self.heatmap >= (self.pixel_threshold - lo) / (hi - lo)).astype(np.uint8)

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
        label = f"{'ANOMALY' if self.is_anomalous else 'ok'} {self.normalized_score:.2f}"
        colour = (0, 0, 255) if self.is_anomalous else (0, 200, 0)
        colour = colour[::-1] if color == "RGB" else colour
        cv2.putText(blended, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, colour, 2, cv2.LINE_AA)
        return blended
