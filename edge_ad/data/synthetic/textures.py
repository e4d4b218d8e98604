"""Texture surfaces (fabric weave, wood grain, ceramic tiles): each fills the whole frame."""

from __future__ import annotations

import numpy as np

from edge_ad.data.synthetic.layers import Layer, grid, smooth_noise


def _rotated(rng: np.random.Generator, h: int, w: int, max_deg: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = grid(h, w)
    theta = np.deg2rad(rng.uniform(-max_deg, max_deg))
    oy, ox = rng.uniform(0, 1000, 2)
    u = x * np.cos(theta) + y * np.sin(theta) + ox
    v = -x * np.sin(theta) + y * np.cos(theta) + oy
    return u, v


def weave(rng: np.random.Generator, h: int, w: int) -> Layer:
    """Plain-weave fabric: threads alternately over and under."""
    period = rng.uniform(10.0, 13.0) * min(h, w) / 256
    u, v = _rotated(rng, h, w, 3.0)
    u, v = u / period, v / period
    along_u = 0.5 + 0.5 * np.cos(2 * np.pi * v)     # threads running along u
    along_v = 0.5 + 0.5 * np.cos(2 * np.pi * u)
    over = (np.floor(u * 2) + np.floor(v * 2)) % 2 == 0
    value = np.where(over, along_u, along_v) ** 0.7
    base = np.array([0.74, 0.66, 0.50], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    rgb = base * (0.55 + 0.45 * value[..., None])
    return _full(rgb)


def grain(rng: np.random.Generator, h: int, w: int) -> Layer:
    """Wood: wavy growth rings with fine fibres along the grain."""
    y, x = grid(h, w)
    s = min(h, w) / 256
    phase = rng.uniform(0, 2 * np.pi, 3)
    rings = y + 9 * s * np.sin(x / (47 * s) + phase[0]) + 3 * s * np.sin(x / (13 * s) + phase[1])
    value = (0.5 + 0.5 * np.sin(2 * np.pi * rings / (19 * s) + phase[2])) ** 2
    fibres = smooth_noise(rng, h, w, 3 * s) * 0.04
    dark = np.array([0.42, 0.26, 0.14], np.float32)
    light = np.array([0.73, 0.53, 0.33], np.float32)
    rgb = dark + (light - dark) * value[..., None] + fibres[..., None]
    return _full(rgb)


def tiles(rng: np.random.Generator, h: int, w: int) -> Layer:
    """Ceramic tiles with grout lines; each tile a slightly different shade."""
    size = rng.uniform(44, 52) * min(h, w) / 256
    grout = max(2.0, 3 * min(h, w) / 256)
    u, v = _rotated(rng, h, w, 1.5)
    tu, tv = np.floor(u / size), np.floor(v / size)
    shade = 0.96 + 0.08 * (np.sin(tu * 12.9898 + tv * 78.233) * 0.5 + 0.5)  # per-tile, deterministic
    in_grout = (u - tu * size < grout) | (v - tv * size < grout)
    base = np.array([0.62, 0.70, 0.76], np.float32) * shade[..., None]
    rgb = np.where(in_grout[..., None], np.float32(0.30), base)
    rgb = rgb + smooth_noise(rng, h, w, 6)[..., None] * 0.015
    return _full(rgb.astype(np.float32))


def hole_backdrop(h: int, w: int) -> np.ndarray:
    """What a hole through a texture shows: near-black."""
    return np.full((h, w, 3), 0.06, np.float32)


def _full(rgb: np.ndarray) -> Layer:
    h, w = rgb.shape[:2]
    return Layer(np.clip(rgb, 0, 1).astype(np.float32), np.ones((h, w), np.float32), np.ones((h, w), bool))


TEXTURES = {"weave": weave, "grain": grain, "tiles": tiles}
