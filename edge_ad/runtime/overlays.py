"""Pictures a person looks at: an image beside its heat map, the anomalous region outlined, a caption.

Used by `edge-ad predict` (one PNG per image) and by the training report (its worst false positives
and negatives). OpenCV and NumPy only (the runtime side: no torch). cv2.putText draws ASCII only, so
a caption's other characters are shown as '?'.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_SIDE = 192            # smaller images are enlarged (whole factors) so the caption and outline are legible
MAX_SIDE = 2048           # larger ones are shrunk: the panel is for looking at, the results hold the numbers
GAP = 4                   # pixels between the original and the heat map
RED, GREEN, WHITE, BLACK = (0, 0, 255), (0, 170, 0), (255, 255, 255), (0, 0, 0)
TRUTH = (0, 255, 0)       # ground-truth outline (report): green
FONT = cv2.FONT_HERSHEY_SIMPLEX


def blend_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The [0, 1] heat map `heat` (H x W) in the JET colour map over the BGR uint8 `image` (H x W x 3)."""
    colours = cv2.applyColorMap((np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0)


def outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """`image` with the outer contours of the nonzero regions of `mask` drawn (a dark rim, then the colour,
    so the line shows on bright and dark parts alike); drawn in place and returned."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(image.shape[:2]) / 160))
    cv2.drawContours(image, contours, -1, BLACK, thickness + 2, cv2.LINE_AA)
    cv2.drawContours(image, contours, -1, colour, thickness, cv2.LINE_AA)
    return image


def _scale_for(height: int, width: int) -> float:
    """The factor that brings the longer side under MAX_SIDE and the shorter one over MIN_SIDE."""
    if max(height, width) > MAX_SIDE:
        return MAX_SIDE / max(height, width)
    if min(height, width) < MIN_SIDE:
        return float(min(-(-MIN_SIDE // min(height, width)), MAX_SIDE // max(height, width)) or 1)
    return 1.0


def _resized(image: np.ndarray, heat: np.ndarray, masks: list[np.ndarray]) -> tuple:
    """image, heat map and masks scaled together for display (masks with nearest neighbour)."""
    scale = _scale_for(*image.shape[:2])
    if scale == 1.0:
        return image, heat, masks
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    smooth = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return (cv2.resize(image, size, interpolation=smooth), cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR),
            [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) for m in masks])


def ascii_text(text: str) -> str:
    """What cv2.putText can draw: printable ASCII, anything else as '?'."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(text))


def caption_bar(width: int, lines: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """A white strip `width` wide with one (text, BGR colour) per line, the font sized to fit the width."""
    lines = [(ascii_text(t), c) for t, c in lines]
    scale = max(0.35, min(1.0, width / 700))
    widest = max(cv2.getTextSize(t, FONT, scale, 1)[0][0] for t, _ in lines)
    if widest > width - 12:
        scale = max(0.3, scale * (width - 12) / widest)
    thickness = 2 if scale >= 0.8 else 1
    line_h = int(cv2.getTextSize("Ag", FONT, scale, thickness)[0][1] * 1.9) + 2
    bar = np.full((line_h * len(lines) + 6, width, 3), 255, np.uint8)
    for i, (text, colour) in enumerate(lines):
        cv2.putText(bar, text, (6, line_h * (i + 1) - 2), FONT, scale, colour, thickness, cv2.LINE_AA)
    return bar


def render_panel(image: np.ndarray, heat: np.ndarray, mask: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]],
                 *, truth: np.ndarray | None = None) -> np.ndarray:
    """[caption] over [original | heat map blended, predicted region outlined in white, ground truth
    (when given) in green]. `image` BGR uint8 H x W x 3; `heat` [0, 1] and masks H x W."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"render_panel needs a BGR uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    if heat.shape != image.shape[:2] or mask.shape != image.shape[:2]:
        raise ValueError(f"heat map {heat.shape} and mask {mask.shape} must be the image's size {image.shape[:2]}")
    masks = [mask] + ([truth] if truth is not None else [])
    image, heat, masks = _resized(image, heat.astype(np.float32), masks)
    right = outline(blend_heatmap(image, heat), masks[0], WHITE)
    if truth is not None:
        outline(right, masks[1], TRUTH)
    gap = np.full((image.shape[0], GAP, 3), 255, np.uint8)
    body = np.hstack([image, gap, right])
    return np.vstack([caption_bar(body.shape[1], lines), body])


def verdict_lines(anomalous: bool, score: float, normalized: float, threshold: float,
                  name: str | None = None) -> list[tuple[str, tuple[int, int, int]]]:
    """The caption of a result: verdict, scores and threshold (and the file name when given)."""
    first = (f"{'ANOMALY' if anomalous else 'OK'}  score {score:.4g}  normalized {normalized:.2f}  "
             f"threshold {threshold:.4g}", RED if anomalous else GREEN)
    return [first] + ([(name, BLACK)] if name else [])


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a BGR uint8 image (written with Path.write_bytes: any file name works)."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as PNG")
    return data.tobytes()
