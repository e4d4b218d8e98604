"""Host-side geometry shared by training and every runtime backend: how a frame becomes the model input.

Training calls the same function on its images as the runtime calls on camera frames, so an
exported model sees exactly the pixels its checkpoint was trained and evaluated on. The rest of
the pre-processing (cast, scale, mean/std, NHWC -> NCHW) lives inside the model graph.

Three fits, recorded in the bundle's geometry (`fit`):

- "squash": the frame resized to the model input, aspect not kept. Every pixel is inspected.
- "letterbox": the frame resized with its aspect kept and padded with black to the model input.
  Every pixel is inspected; the padding is not part of the heat map (the model sees it in training
  as in use, so it learns it as normal; it enters the image score like any input pixel).
- "crop": resized (aspect not kept) to `resize`, then centre-cropped to the model input. The border
  strips are never inspected (their heat map is zero). What a bundle without the field means.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

FITS = ("squash", "letterbox", "crop")
DEFAULT_FIT = "letterbox"      # new runs: every pixel, aspect kept (best of the three in benchmarks/fit_accuracy.py)
LEGACY_FIT = "crop"            # bundles and runs written before the field existed
PAD_VALUE = 0                  # letterbox padding (black); a mask prepared the same way stays 0 there

Box = tuple[int, int, int, int]     # (top, left, height, width) in pixels


@dataclass(frozen=True)
class Geometry:
    """How a frame becomes the model input `crop` (H, W): by `fit` (see the module docstring).
    `resize` (H, W) is the intermediate size of the "crop" fit; the other fits do not use it."""

    resize: tuple[int, int]
    crop: tuple[int, int]
    fit: str = LEGACY_FIT

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1]:
            raise ValueError(f"crop {self.crop} must fit inside resize {self.resize}")

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) of the centre crop inside the resized frame (fit "crop")."""
        return (self.resize[0] - self.crop[0]) // 2, (self.resize[1] - self.crop[1]) // 2

    def letterbox(self, frame_h: int, frame_w: int) -> Box:
        """Where a frame's content sits in the model input under fit "letterbox" (the rest is padding)."""
        ch, cw = self.crop
        scale = min(ch / frame_h, cw / frame_w)
        h, w = max(1, min(ch, round(frame_h * scale))), max(1, min(cw, round(frame_w * scale)))
        return (ch - h) // 2, (cw - w) // 2, h, w

    def placement(self, frame_h: int, frame_w: int) -> tuple[Box, Box]:
        """(the part of the model input that shows the frame, the part of the frame it shows): the
        heat map of the first, resized, is the heat map of the second; the rest of the frame is not seen."""
        ch, cw = self.crop
        if self.fit == "squash":
            return (0, 0, ch, cw), (0, 0, frame_h, frame_w)
        if self.fit == "letterbox":
            return self.letterbox(frame_h, frame_w), (0, 0, frame_h, frame_w)
        return (0, 0, ch, cw), self.region(frame_h, frame_w)

    def region(self, frame_h: int, frame_w: int) -> Box:
        """(top, left, height, width) of the frame that the model input shows, in the frame's pixels."""
        if self.fit != "crop":
            return 0, 0, frame_h, frame_w
        sy, sx = frame_h / self.resize[0], frame_w / self.resize[1]
        top, left = self.offset
        y0, x0 = int(round(top * sy)), int(round(left * sx))
        return y0, x0, int(round((top + self.crop[0]) * sy)) - y0, int(round((left + self.crop[1]) * sx)) - x0

    @classmethod
    def for_model(cls, size: int, resize: int, fit: str | None = None) -> "Geometry":
        """A new run's geometry: a square model input of `size`, the model's `resize` (used by fit
        "crop"), and `fit` (None: DEFAULT_FIT, which inspects every pixel)."""
        return cls((resize, resize), (size, size), DEFAULT_FIT if fit is None else fit)

    def to_dict(self) -> dict:
        return {"resize": list(self.resize), "crop": list(self.crop), "fit": self.fit}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        """From meta.json / run.json; no `fit` field: "crop", what every earlier bundle did."""
        return cls(tuple(d["resize"]), tuple(d["crop"]), d.get("fit", LEGACY_FIT))


def prepare(image: np.ndarray, geometry: Geometry, *, bgr: bool = False) -> np.ndarray:
    """RGB uint8 H x W x 3 of any size -> the model's RGB uint8 input (contiguous), by the geometry's fit.
    `bgr`: `image` is uint8 H x W x 3 in BGR order (a camera frame), swapped to RGB after the resize, on the
    fewer pixels: the same pixels as swapping first, since the resize treats each channel alike."""
    h, w = image.shape[:2]
    ch, cw = geometry.crop
    if geometry.fit == "squash":
        return _rgb_order(np.ascontiguousarray(_resize(image, ch, cw)), bgr)
    if geometry.fit == "letterbox":
        top, left, rh, rw = geometry.letterbox(h, w)
        out = np.full((ch, cw, *image.shape[2:]), PAD_VALUE, image.dtype)
        out[top:top + rh, left:left + rw] = _rgb_order(_resize(image, rh, rw), bgr)
        return out
    rh, rw = geometry.resize
    resized = _resize(image, rh, rw)
    top, left = geometry.offset
    return _rgb_order(np.ascontiguousarray(resized[top:top + ch, left:left + cw]), bgr)


def _rgb_order(image: np.ndarray, bgr: bool) -> np.ndarray:
    """`image` with its first and third channels swapped when `bgr`, else as it is."""
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """`image` at h x w: area averaging when shrinking both sides, bilinear otherwise; as is when equal.
    The area shrink runs on the compiled kernel when it takes the image (same pixels as OpenCV's
    INTER_AREA, about 4x faster on a camera frame: benchmarks/resize_cost.py; exactness verified on x86-64,
    unverified on aarch64), else on OpenCV."""
    ih, iw = image.shape[:2]
    if (ih, iw) == (h, w):
        return image
    if h < ih and w < iw:
        if _area_kernel_takes(image, h, w):
            out = _AREA_KERNEL(image, h, w)
            return out.reshape(h, w) if out.ndim == 3 and out.shape[2] == 1 else out   # as cv2 shapes it
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def _load_area_kernel() -> Callable[..., np.ndarray] | None:
    """edge_ad._kernels.resize_area_cpu, or None: not built (a source install without a compiler, or a
    build older than the kernel) or EDGE_AD_KERNELS=numpy (OpenCV throughout, for tests and comparisons)."""
    if os.environ.get("EDGE_AD_KERNELS", "").strip().lower() == "numpy":
        return None
    try:
        from edge_ad._kernels import resize_area_cpu  # noqa: PLC0415 - optional: cv2 stands in
    except ImportError:
        return None
    return resize_area_cpu


_AREA_KERNEL = _load_area_kernel()


def _area_kernel_takes(image: np.ndarray, h: int, w: int) -> bool:
    """Whether the compiled kernel shrinks this image: uint8, H x W or H x W x 1/3/4, the pixels of a row
    contiguous (any row stride: crops and tiles are), and not an exact halving, where OpenCV's own 2 x 2
    path is faster (same pixels either way)."""
    if _AREA_KERNEL is None or image.dtype != np.uint8 or image.ndim not in (2, 3):
        return False
    cn = image.shape[2] if image.ndim == 3 else 1
    if cn not in (1, 3, 4) or image.shape[:2] == (2 * h, 2 * w):
        return False
    return image.strides[1] == cn and (image.ndim == 2 or cn == 1 or image.strides[2] == 1)
