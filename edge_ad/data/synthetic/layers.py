"""Layers and compositing for the synthetic scenes: a layer is RGB + alpha + the surface where a
defect may land; scenes are a backdrop with layers pasted onto it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Layer:
    rgb: np.ndarray                 # H x W x 3 float32 in [0, 1]
    alpha: np.ndarray               # H x W float32 in [0, 1]
    surface: np.ndarray             # H x W bool: where defects may appear
    defect: np.ndarray | None = None  # H x W bool: the defect's exact pixels, once applied

    @property
    def shape(self) -> tuple[int, int]:
        return self.alpha.shape


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) as float32 arrays."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return y, x


def smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise with features of about `scale` pixels."""
    import cv2

    small = rng.standard_normal((max(2, int(h / scale) + 2), max(2, int(w / scale) + 2))).astype(np.float32)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def paste(frame: np.ndarray, mask: np.ndarray, layer: Layer, top: int, left: int) -> None:
    """Alpha-composite `layer` onto `frame` at (top, left), clipping at the borders; OR its defect into `mask`."""
    h, w = frame.shape[:2]
    lh, lw = layer.shape
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(h, top + lh), min(w, left + lw)
    if y0 >= y1 or x0 >= x1:
        return
    sy, sx = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
    a = layer.alpha[sy, sx, None]
    frame[y0:y1, x0:x1] = layer.rgb[sy, sx] * a + frame[y0:y1, x0:x1] * (1.0 - a)
    if layer.defect is not None:
        mask[y0:y1, x0:x1] |= layer.defect[sy, sx]


def finish(frame: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Add sensor noise and quantize to RGB uint8."""
    return np.clip((frame + noise) * 255.0 + 0.5, 0, 255).astype(np.uint8)
