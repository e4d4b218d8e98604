"""Parts (a metal washer, a two-colour capsule) rendered as sprites, and the conveyor belt they sit on."""

from __future__ import annotations

import numpy as np

from edge_ad.data.synthetic.layers import Layer, grid

_BELT_TILE_W = 1024


def washer(rng: np.random.Generator, radius: float) -> Layer:
    """A flat steel washer with a bevel highlight, on a transparent square sprite."""
    size = int(np.ceil(2 * radius)) + 8
    y, x = grid(size, size)
    c = (size - 1) / 2
    dy, dx = y - c, x - c
    d = np.hypot(dy, dx)
    inner = radius * rng.uniform(0.40, 0.44)
    body = (d <= radius) & (d >= inner)
    light = rng.uniform(0, 2 * np.pi)
    angle = np.arctan2(dy, dx)
    ring = (d - inner) / (radius - inner)
    bevel = np.exp(-((ring - 0.5) ** 2) / 0.08)
    shade = 0.50 + 0.22 * np.cos(angle - light) * bevel + 0.12 * bevel
    rgb = np.array([0.80, 0.82, 0.85], np.float32) * shade[..., None]
    return Layer(rgb.astype(np.float32), body.astype(np.float32), body)


def capsule(rng: np.random.Generator, radius: float) -> Layer:
    """A pill `2 * radius` long: red and cream halves, cylindrical shading, slightly rotated."""
    half_len = radius * 0.55
    radius = radius - half_len
    size = int(np.ceil(2 * (half_len + radius))) + 8
    y, x = grid(size, size)
    c = (size - 1) / 2
    theta = np.deg2rad(rng.uniform(-8, 8))
    along = (x - c) * np.cos(theta) + (y - c) * np.sin(theta)
    across = -(x - c) * np.sin(theta) + (y - c) * np.cos(theta)
    dist = np.hypot(np.maximum(np.abs(along) - half_len, 0), across)
    body = dist <= radius
    shade = 0.68 + 0.32 * np.sqrt(np.clip(1 - (across / radius) ** 2, 0, 1))
    red = np.array([0.78, 0.18, 0.17], np.float32)
    cream = np.array([0.93, 0.88, 0.76], np.float32)
    rgb = np.where((along < 0)[..., None], red, cream) * shade[..., None]
    return Layer(rgb.astype(np.float32), body.astype(np.float32), body)


def belt(h: int, w: int, offset: float = 0.0) -> np.ndarray:
    """Dark rubber belt; its pattern moves with `offset` (pixels of belt travel)."""
    tile = _belt_tile(h)
    cols = (np.arange(w) - int(round(offset))) % _BELT_TILE_W
    return tile[:, cols]


_BELT_CACHE: dict[int, np.ndarray] = {}


def _belt_tile(h: int) -> np.ndarray:
    if h not in _BELT_CACHE:
        rng = np.random.default_rng(20260101)  # the belt is the same physical belt in every image
        y, x = grid(h, _BELT_TILE_W)
        ridges = 0.015 * np.sin(2 * np.pi * y / 5.0)
        blotches = rng.standard_normal((h // 16 + 2, _BELT_TILE_W // 16 + 2)).astype(np.float32)
        import cv2

        blotches = cv2.resize(blotches, (_BELT_TILE_W, h), interpolation=cv2.INTER_CUBIC) * 0.012
        grey = 0.20 + ridges + blotches
        _BELT_CACHE[h] = np.stack([grey, grey * 1.02, grey * 1.05], axis=-1).astype(np.float32)
    return _BELT_CACHE[h]


OBJECTS = {"washer": washer, "capsule": capsule}
