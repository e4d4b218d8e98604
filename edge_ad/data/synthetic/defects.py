"""Defects painted onto a layer. Each changes the layer only inside the mask it records in
`layer.defect`, so the ground-truth masks are exact: outside them the image is the defect-free one."""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from edge_ad.data.synthetic.layers import Layer, grid, smooth_noise


def _pick_point(rng: np.random.Generator, where: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(where)
    i = rng.integers(len(ys))
    return int(ys[i]), int(xs[i])


def _edge(surface: np.ndarray) -> np.ndarray:
    eroded = cv2.erode(surface.astype(np.uint8), np.ones((5, 5), np.uint8))
    edge = surface & ~eroded.astype(bool)
    return edge if edge.any() else surface


def _inner(surface: np.ndarray, margin: int) -> np.ndarray:
    eroded = cv2.erode(surface.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)
    return eroded if eroded.any() else surface


def _commit(layer: Layer, mask: np.ndarray, rgb: np.ndarray | None = None,
            alpha: np.ndarray | None = None) -> None:
    """Apply new values inside `mask` only, and record the mask."""
    if rgb is not None:
        layer.rgb[mask] = rgb[mask]
    if alpha is not None:
        layer.alpha[mask] = alpha[mask]
    layer.defect = mask


def scratch(rng: np.random.Generator, layer: Layer, s: float) -> None:
    """A thin curved line, brighter or darker than the surface."""
    cy, cx = _pick_point(rng, _inner(layer.surface, int(6 * s)))
    length = rng.uniform(25, 55) * s
    a = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.5, 0.5)
    t = np.linspace(-0.5, 0.5, 24)
    px = cx + length * (t * np.cos(a) - bend * (t ** 2 - 0.25) * np.sin(a))
    py = cy + length * (t * np.sin(a) + bend * (t ** 2 - 0.25) * np.cos(a))
    line = np.zeros(layer.shape, np.uint8)
    pts = np.stack([px, py], axis=1).round().astype(np.int32)
    cv2.polylines(line, [pts], False, 1, thickness=max(1, int(round(rng.uniform(1.5, 3) * s))), lineType=cv2.LINE_8)
    mask = line.astype(bool) & layer.surface
    shift = rng.choice([-0.38, 0.32])
    _commit(layer, mask, rgb=np.clip(layer.rgb + shift, 0, 1))


def hole(rng: np.random.Generator, layer: Layer, s: float, *, at_edge: bool = False) -> None:
    """A hole through a texture, or a missing piece at a part's rim: the backdrop shows through."""
    where = _edge(layer.surface) if at_edge else _inner(layer.surface, int(10 * s))
    cy, cx = _pick_point(rng, where)
    y, x = grid(*layer.shape)
    ry, rx = rng.uniform(5, 12, 2) * s
    a = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(a) + (y - cy) * np.sin(a)
    v = -(x - cx) * np.sin(a) + (y - cy) * np.cos(a)
    mask = ((u / rx) ** 2 + (v / ry) ** 2 <= 1) & layer.surface
    _commit(layer, mask, alpha=np.zeros_like(layer.alpha))


def missing(rng: np.random.Generator, layer: Layer, s: float) -> None:
    hole(rng, layer, s * 1.4, at_edge=True)


def stain(rng: np.random.Generator, layer: Layer, s: float) -> None:
    """An irregular blob of changed colour (oil, rust, discolouration)."""
    cy, cx = _pick_point(rng, _inner(layer.surface, int(8 * s)))
    y, x = grid(*layer.shape)
    radius = rng.uniform(9, 18) * s
    wobble = smooth_noise(rng, *layer.shape, scale=6 * s) * 0.35
    mask = (np.hypot(y - cy, x - cx) / radius + wobble <= 1) & layer.surface
    colour = rng.choice([[0.45, 0.25, 0.10], [0.15, 0.15, 0.12], [0.55, 0.60, 0.25]])
    tinted = layer.rgb * 0.35 + np.asarray(colour, np.float32) * 0.65
    _commit(layer, mask, rgb=tinted.astype(np.float32))


def contamination(rng: np.random.Generator, layer: Layer, s: float) -> None:
    """A cluster of small foreign particles."""
    cy, cx = _pick_point(rng, _inner(layer.surface, int(6 * s)))
    dots = np.zeros(layer.shape, np.uint8)
    for _ in range(rng.integers(5, 11)):
        oy, ox = rng.normal(0, 9 * s, 2)
        r = max(1, int(round(rng.uniform(1.2, 3.2) * s)))
        cv2.circle(dots, (int(round(cx + ox)), int(round(cy + oy))), r, 1, thickness=-1, lineType=cv2.LINE_8)
    mask = dots.astype(bool) & layer.surface
    colour = np.asarray(rng.choice([[0.08, 0.08, 0.07], [0.95, 0.95, 0.9], [0.2, 0.35, 0.75]]), np.float32)
    _commit(layer, mask, rgb=np.broadcast_to(colour, layer.rgb.shape).copy())


def deformation(rng: np.random.Generator, layer: Layer, s: float) -> None:
    """A local bulge or dent: pixels inside a disc are pushed outwards or pulled inwards, far enough
    (7-11 px at 256 px) that the outline visibly changes, as a dent a camera can show."""
    cy, cx = _pick_point(rng, _edge(layer.surface) if layer.surface.mean() < 0.9 else layer.surface)
    y, x = grid(*layer.shape)
    radius = rng.uniform(16, 28) * s
    strength = rng.choice([-1, 1]) * rng.uniform(7, 11) * s
    d = np.hypot(y - cy, x - cx) + 1e-6
    bump = np.clip(1 - d / radius, 0, 1) ** 2
    map_x = (x - strength * bump * (x - cx) / d).astype(np.float32)
    map_y = (y - strength * bump * (y - cy) / d).astype(np.float32)
    rgb = cv2.remap(layer.rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.remap(layer.alpha, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    changed = (np.abs(rgb * alpha[..., None] - layer.rgb * layer.alpha[..., None]).max(axis=2) > 0.04)
    mask = changed & (d < radius)
    _commit(layer, mask, rgb=rgb, alpha=alpha)
    layer.surface = layer.surface | (alpha > 0.5)


DefectFn = Callable[[np.random.Generator, Layer, float], None]

TEXTURE_DEFECTS: dict[str, DefectFn] = {
    "scratch": scratch, "hole": hole, "stain": stain, "contamination": contamination, "deformation": deformation,
}
OBJECT_DEFECTS: dict[str, DefectFn] = {
    "scratch": scratch, "missing": missing, "stain": stain, "contamination": contamination, "deformation": deformation,
}
