"""Whole images of each synthetic category, clean or with one defect, deterministic by seed.

Scene layout, sensor noise and the defect draw from independent random streams, so an image and
its defect-free twin (same seed, defect=None) differ only inside the defect mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ad.data.synthetic import defects as D
from edge_ad.data.synthetic.layers import Layer, finish, paste
from edge_ad.data.synthetic.objects import OBJECTS, belt
from edge_ad.data.synthetic.textures import TEXTURES, hole_backdrop

MIN_DEFECT_PIXELS = 30
MIN_PIXELS = {"deformation": 120}   # a dent must change a visible area, not a one-pixel sliver


@dataclass(frozen=True)
class Category:
    name: str
    kind: str                        # "texture" | "object" | "conveyor"
    size: tuple[int, int]            # (width, height)
    defects: tuple[str, ...]


CATEGORIES = {
    "weave": Category("weave", "texture", (256, 256), tuple(D.TEXTURE_DEFECTS)),
    "grain": Category("grain", "texture", (256, 256), tuple(D.TEXTURE_DEFECTS)),
    "tiles": Category("tiles", "texture", (256, 256), tuple(D.TEXTURE_DEFECTS)),
    "washer": Category("washer", "object", (256, 256), tuple(D.OBJECT_DEFECTS)),
    "capsule": Category("capsule", "object", (256, 256), tuple(D.OBJECT_DEFECTS)),
    # Washers passing on a belt, framed like the conveyor video (see video.py); make_category passes
    # its images through the video codec, as frames of that video come.
    "conveyor": Category("conveyor", "conveyor", (320, 240), tuple(D.OBJECT_DEFECTS)),
}

CONVEYOR_SPEED = 6.0             # belt travel per video frame, pixels at 240 px height
CONVEYOR_SPACING = 1.05          # distance between parts, in frame widths


def streams(seed: int | list[int], attempt: int = 0) -> tuple[np.random.Generator, ...]:
    """Independent generators for the scene layout, the sensor noise and the defect (per attempt)."""
    scene, noise, defect = np.random.SeedSequence(seed).spawn(3)
    defect = np.random.SeedSequence([*defect.generate_state(2), attempt])
    return tuple(np.random.default_rng(s) for s in (scene, noise, defect))


def render(category: Category, seed: int | list[int], defect: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image (H x W x 3 RGB uint8) and its mask (H x W bool, all False without a defect)."""
    if defect is not None and defect not in category.defects:
        raise ValueError(f"category {category.name!r} has defects {category.defects}, not {defect!r}")
    w, h = category.size
    for attempt in range(50):  # a defect that lands (almost) nowhere visible is drawn again
        scene_rng, noise_rng, defect_rng = streams(np.atleast_1d(seed).tolist(), attempt)
        if category.kind == "texture":
            frame, layers, origins = _texture_scene(category, scene_rng, h, w)
        elif category.kind == "object":
            frame, layers, origins = _object_scene(category, scene_rng, h, w)
        else:
            frame, layers, origins = conveyor_scene(scene_rng, h, w, phase=scene_rng.uniform(0, 1))
        noise = noise_rng.normal(0, 0.012, (h, w, 3)).astype(np.float32)
        if defect is not None:
            target = _visible_layer(layers, origins, h, w)
            table = D.TEXTURE_DEFECTS if category.kind == "texture" else D.OBJECT_DEFECTS
            table[defect](defect_rng, layers[target], min(h, w) / 256)
        mask = np.zeros((h, w), bool)
        for layer, (top, left) in zip(layers, origins):
            paste(frame, mask, layer, top, left)
        if defect is None or mask.sum() >= MIN_PIXELS.get(defect, MIN_DEFECT_PIXELS):
            return finish(frame, noise), mask
    raise RuntimeError(f"could not place a visible {defect!r} defect in {category.name!r} (seed {seed})")


def _texture_scene(category: Category, rng: np.random.Generator, h: int, w: int):
    return hole_backdrop(h, w), [TEXTURES[category.name](rng, h, w)], [(0, 0)]


def _object_scene(category: Category, rng: np.random.Generator, h: int, w: int):
    sprite = OBJECTS[category.name](rng, radius=0.30 * min(h, w) * rng.uniform(0.98, 1.02))
    sh, sw = sprite.shape
    top = int(round((h - sh) / 2 + rng.normal(0, 4)))
    left = int(round((w - sw) / 2 + rng.normal(0, 4)))
    return belt(h, w, offset=rng.uniform(0, 1024)), [sprite], [(top, left)]


def conveyor_scene(rng: np.random.Generator, h: int, w: int, phase: float,
                   parts: list[Layer] | None = None, part_rows: list[float] | None = None):
    """Washers on a belt at belt position `phase` (in part spacings). `parts`/`part_rows` let the
    video keep the same sprites from frame to frame; otherwise they are drawn from `rng`."""
    spacing = CONVEYOR_SPACING * w
    radius = 0.27 * h
    layers, origins = [], []
    for k in range(-1, 2):                            # at most two parts are ever in view
        if parts is None:
            sprite = OBJECTS["washer"](rng, radius=radius * rng.uniform(0.98, 1.02))
            row = h / 2 + rng.normal(0, 3)
        else:
            sprite, row = parts[k + 1], part_rows[k + 1]
        cx = (phase % 1.0 + k) * spacing - 0.5 * (spacing - w)
        sh, sw = sprite.shape
        layers.append(sprite)
        origins.append((int(round(row - sh / 2)), int(round(cx - sw / 2))))
    return belt(h, w, offset=phase * spacing), layers, origins


def _visible_layer(layers: list[Layer], origins: list[tuple[int, int]], h: int, w: int) -> int:
    """Index of the layer with the most surface inside the frame (the part to damage)."""
    def visible(i: int) -> int:
        (top, left), layer = origins[i], layers[i]
        lh, lw = layer.shape
        ys = slice(max(0, -top), max(0, min(lh, h - top)))
        xs = slice(max(0, -left), max(0, min(lw, w - left)))
        return int(layer.surface[ys, xs].sum())
    return max(range(len(layers)), key=visible)
