"""Reading and normalizing images: any of grayscale, RGB, RGBA, 8 or 16 bit -> RGB uint8."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file that cannot be decoded (missing, truncated, corrupt or not an image)."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 RGB uint8, whatever its channels and bit depth."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode handles non-ASCII paths
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageReadError(f"cannot decode {path}: the file is corrupt, truncated or not an image")
    return to_rgb_uint8(image, bgr=True)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as H x W uint8 with 1 = anomalous (any nonzero value)."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise ImageReadError(f"cannot decode mask {path}: the file is missing, corrupt or not an image")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return (mask > 0).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray, *, bgr: bool = True) -> np.ndarray:
    """Convert a decoded image (H x W, H x W x 1/3/4; uint8, uint16 or float in [0, 1]) to RGB uint8.

    `bgr` says the channel order of 3/4-channel input (OpenCV decodes to BGR). Alpha is dropped.
    """
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise ValueError("expected a non-empty image array")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"unsupported image shape {image.shape}; expected H x W x 1, 3 or 4")
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(image)
