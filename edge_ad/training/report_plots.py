"""The report's charts drawn with OpenCV: ROC and PR curves, the score histogram with the threshold.

matplotlib is not a dependency of edge_ad, so the charts are drawn here: axes with "nice" ticks, tick
labels, axis titles (the y title rotated), lines, bars and a legend. Simple, readable, a few hundred
pixels wide; every chart is a BGR uint8 image of PLOT_SIZE. NumPy and OpenCV only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PLOT_SIZE = (480, 640)                      # (height, width) of every chart
MARGIN = {"left": 78, "right": 20, "top": 44, "bottom": 62}
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, GRID = (40, 40, 40), (225, 225, 225)
GOOD, BAD, CURVE, THRESHOLD = (60, 160, 60), (50, 50, 220), (200, 110, 30), (0, 0, 0)


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_label(value: float) -> str:
    return f"{value:.4g}"


@dataclass
class Chart:
    """A blank chart with data ranges x_range, y_range; `px` maps data to pixel coordinates."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    title: str

    def __post_init__(self) -> None:
        h, w = PLOT_SIZE
        self.image = np.full((h, w, 3), 255, np.uint8)
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.right, self.bottom = w - MARGIN["right"], h - MARGIN["bottom"]

    def px(self, x: float, y: float) -> tuple[int, int]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        u = self.left + (x - x0) / (x1 - x0) * (self.right - self.left)
        v = self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top)
        return int(round(u)), int(round(v))

    def text(self, text: str, org: tuple[int, int], *, scale: float = 0.45, colour=INK, anchor: str = "left",
             backdrop: bool = False) -> None:
        """Text with its baseline at org; anchor 'center' or 'right' moves it left by its width;
        `backdrop` clears a white box behind it (a label over lines)."""
        (width, height), base = cv2.getTextSize(text, FONT, scale, 1)
        x = org[0] - {"left": 0, "center": width // 2, "right": width}[anchor]
        if backdrop:
            cv2.rectangle(self.image, (x - 3, org[1] - height - 3), (x + width + 3, org[1] + base), (255, 255, 255), -1)
        cv2.putText(self.image, text, (x, org[1]), FONT, scale, colour, 1, cv2.LINE_AA)

    def axes(self, x_title: str, y_title: str) -> "Chart":
        """Grid, frame, ticks with their labels, the axis titles and the chart title."""
        for x in nice_ticks(*self.x_range):
            u, _ = self.px(x, self.y_range[0])
            cv2.line(self.image, (u, self.top), (u, self.bottom), GRID, 1)
            cv2.line(self.image, (u, self.bottom), (u, self.bottom + 5), INK, 1)
            self.text(tick_label(x), (u, self.bottom + 20), anchor="center")
        for y in nice_ticks(*self.y_range):
            _, v = self.px(self.x_range[0], y)
            cv2.line(self.image, (self.left, v), (self.right, v), GRID, 1)
            cv2.line(self.image, (self.left - 5, v), (self.left, v), INK, 1)
            self.text(tick_label(y), (self.left - 8, v + 5), anchor="right")
        cv2.rectangle(self.image, (self.left, self.top), (self.right, self.bottom), INK, 1)
        self.text(x_title, ((self.left + self.right) // 2, self.bottom + 48), scale=0.55, anchor="center")
        self._y_title(y_title)
        self.text(self.title, ((self.left + self.right) // 2, 28), scale=0.62, anchor="center")
        return self

    def _y_title(self, text: str) -> None:
        """The y axis title, drawn on its own strip and turned a quarter to read bottom-up."""
        (width, height), base = cv2.getTextSize(text, FONT, 0.55, 1)
        strip = np.full((height + base + 4, width + 4, 3), 255, np.uint8)
        cv2.putText(strip, text, (2, height + 2), FONT, 0.55, INK, 1, cv2.LINE_AA)
        turned = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
        th, tw = turned.shape[:2]
        y0 = max(0, (self.top + self.bottom) // 2 - th // 2)
        th = min(th, self.image.shape[0] - y0)
        self.image[y0:y0 + th, 6:6 + tw] = turned[:th]

    def line(self, xs: np.ndarray, ys: np.ndarray, colour, thickness: int = 2) -> None:
        points = np.array([self.px(x, y) for x, y in zip(xs, ys)], np.int32).reshape(-1, 1, 2)
        cv2.polylines(self.image, [points], False, colour, thickness, cv2.LINE_AA)

    def dashed_vline(self, x: float, colour, label: str) -> None:
        """A dashed vertical line at x across the plot, labelled at its top."""
        u, _ = self.px(x, self.y_range[0])
        for v in range(self.top, self.bottom, 12):
            cv2.line(self.image, (u, v), (u, min(v + 7, self.bottom)), colour, 2)
        anchor = "right" if u > (self.left + self.right) / 2 else "left"
        self.text(label, (u + (-6 if anchor == "right" else 6), self.top + 16), colour=colour, anchor=anchor)

    def marker(self, x: float, y: float, colour, label: str) -> None:
        u, v = self.px(x, y)
        cv2.circle(self.image, (u, v), 6, colour, -1, cv2.LINE_AA)
        cv2.circle(self.image, (u, v), 6, INK, 1, cv2.LINE_AA)
        anchor = "right" if u > (self.left + self.right) / 2 else "left"
        below = v - 30 < self.top                     # no room above the point: label it below
        self.text(label, (u + (-10 if anchor == "right" else 10), v + 24 if below else v - 12), anchor=anchor,
                  backdrop=True)

    def bars(self, edges: np.ndarray, counts: np.ndarray, colour, alpha: float = 0.55) -> None:
        """Histogram bars (one per bin between consecutive edges), see-through so two sets overlap."""
        layer = self.image.copy()
        for lo, hi, n in zip(edges[:-1], edges[1:], counts):
            if n > 0:
                cv2.rectangle(layer, self.px(lo, 0), self.px(hi, n), colour, -1)
        self.image = cv2.addWeighted(layer, alpha, self.image, 1 - alpha, 0)

    def legend(self, items: list[tuple[str, tuple[int, int, int]]]) -> None:
        """Coloured squares and their names in the top-left corner of the plot."""
        for i, (name, colour) in enumerate(items):
            y = self.top + 14 + 20 * i
            cv2.rectangle(self.image, (self.left + 10, y - 9), (self.left + 22, y + 3), colour, -1)
            self.text(name, (self.left + 28, y + 2))


def roc_chart(fpr: np.ndarray, tpr: np.ndarray, auroc: float, point: tuple[float, float]) -> np.ndarray:
    """ROC curve with the diagonal and the deployed threshold's operating point."""
    chart = Chart((0.0, 1.0), (0.0, 1.0), f"ROC (image AUROC {auroc:.3f})").axes("false-positive rate",
                                                                                "true-positive rate (recall)")
    chart.line(np.array([0.0, 1.0]), np.array([0.0, 1.0]), GRID, 1)
    chart.line(fpr, tpr, CURVE)
    chart.marker(*point, THRESHOLD, f"threshold: FPR {point[0]:.2f}, recall {point[1]:.2f}")
    return chart.image


def pr_chart(recall: np.ndarray, precision: np.ndarray, base_rate: float, point: tuple[float, float]) -> np.ndarray:
    """Precision-recall curve, the precision of flagging everything, and the deployed threshold's point."""
    chart = Chart((0.0, 1.0), (0.0, 1.0), "Precision-recall").axes("recall", "precision")
    chart.line(np.array([0.0, 1.0]), np.array([base_rate, base_rate]), GRID, 1)
    chart.line(recall, precision, CURVE)
    chart.marker(*point, THRESHOLD, f"threshold: recall {point[0]:.2f}, precision {point[1]:.2f}")
    return chart.image


def histogram_chart(good: np.ndarray, bad: np.ndarray, threshold: float, *, good_name: str = "good",
                    bins: int = 30) -> np.ndarray:
    """Histogram of the good and the defective parts' scores (bad may be empty) and the threshold line."""
    values = np.concatenate([good, bad, [threshold]]).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * 0.05 or max(abs(hi), 1.0) * 0.05
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    good_counts = np.histogram(good, edges)[0]
    bad_counts = np.histogram(bad, edges)[0] if len(bad) else np.zeros(bins, np.int64)
    top = max(int(good_counts.max(initial=0)), int(bad_counts.max(initial=0)), 1)
    chart = Chart((edges[0], edges[-1]), (0.0, top * 1.15), "Image scores").axes("image score", "images")
    chart.bars(edges, good_counts, GOOD)
    items = [(f"{good_name} ({len(good)})", GOOD)]
    if len(bad):
        chart.bars(edges, bad_counts, BAD)
        items.append((f"defective ({len(bad)})", BAD))
    chart.dashed_vline(threshold, THRESHOLD, f"threshold {threshold:.4g}")
    chart.legend(items)
    return chart.image
