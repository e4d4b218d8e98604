"""Host-side geometry shared by training and every runtime backend: resize, then center crop.

Training calls the same function on its images as the runtime calls on camera frames, so an
exported model sees exactly the pixels its checkpoint was trained and evaluated on. The rest of
the pre-processing (cast, scale, mean/std, NHWC -> NCHW) lives inside the model graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Frames are resized to `resize` (H, W) — aspect not kept — then center-cropped to `crop` (H, W)."""

    resize: tuple[int, int]
    crop: tuple[int, int]

    def __post_init__(self) -> None:
        if self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1]:
            raise ValueError(f"crop {self.crop} must fit inside resize {self.resize}")

    @property
    def offset(self) -> tuple[int, int]:
        return (self.resize[0] - self.crop[0]) // 2, (self.resize[1] - self.crop[1]) // 2

    def region(self, frame_h: int, frame_w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the cropped area in the original frame's pixels."""
        sy, sx = frame_h / self.resize[0], frame_w / self.resize[1]
        top, left = self.offset
        y0, x0 = int(round(top * sy)), int(round(left * sx))
        return y0, x0, int(round((top + self.crop[0]) * sy)) - y0, int(round((left + self.crop[1]) * sx)) - x0

    def to_dict(self) -> dict:
        return {"resize": list(self.resize), "crop": list(self.crop)}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["resize"]), tuple(d["crop"]))


def prepare(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """RGB uint8 H x W x 3 of any size -> the model's RGB uint8 crop (contiguous)."""
    h, w = image.shape[:2]
    rh, rw = geometry.resize
    interp = cv2.INTER_AREA if (rh < h and rw < w) else cv2.INTER_LINEAR
    resized = image if (h, w) == (rh, rw) else cv2.resize(image, (rw, rh), interpolation=interp)
    top, left = geometry.offset
    ch, cw = geometry.crop
    return np.ascontiguousarray(resized[top:top + ch, left:left + cw])
