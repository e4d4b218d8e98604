"""Detector: a loaded bundle + a backend. predict(image or list) -> Result(s)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge_ad.bundle import Bundle
from edge_ad.data.images import to_rgb_uint8
from edge_ad.postprocess import heatmap
from edge_ad.runtime.preprocess import Geometry, prepare
from edge_ad.runtime.result import Result


class Detector:
    """Runs a bundle on images of any size. `color` says what predict() receives: "BGR" (OpenCV's
    order, the default for frames from cv2) or "RGB". Grayscale, RGBA and 16-bit input are converted."""

    def __init__(self, bundle: Bundle, backend, *, color: str = "BGR") -> None:
        if color not in ("BGR", "RGB"):
            raise ValueError(f"color must be 'BGR' or 'RGB', got {color!r}")
        self.bundle = bundle
        self.backend = backend
        self.color = color
        meta = bundle.meta
        self.geometry = Geometry.from_dict(meta["geometry"])
        self.spec = meta["heatmap"]
        cal = meta["calibration"]
        self.threshold = float(cal["image_threshold"])
        self.image_norm = tuple(cal["image_norm"])
        self.pixel_norm = tuple(cal["pixel_norm"])
        self.pixel_threshold = float(cal["pixel_threshold"])

    @property
    def model_name(self) -> str:
        return self.bundle.model_name

    @property
    def max_batch(self) -> int | None:
        """The largest batch the backend takes in one run (a TensorRT profile's max); None: any."""
        return getattr(self.backend, "max_batch", None)

    def predict(self, images: np.ndarray | Sequence[np.ndarray], *,
                color: str | Sequence[str] | None = None) -> Result | list[Result]:
        """One image -> one Result; a list of images -> a list of Results (one batched inference).
        `color` overrides the detector's channel order for this call: one for all, or one per image."""
        single = isinstance(images, np.ndarray)
        batch = [images] if single else list(images)
        if not batch:
            return []
        colors = [color or self.color] * len(batch) if color is None or isinstance(color, str) else list(color)
        if len(colors) != len(batch):
            raise ValueError(f"got {len(colors)} colour orders for {len(batch)} images")
        rgb = [to_rgb_uint8(im, bgr=c == "BGR") for im, c in zip(batch, colors)]
        maps, scores = self.heatmaps(np.stack([prepare(im, self.geometry) for im in rgb]))
        results = self.results(maps, scores, [im.shape[:2] for im in rgb])
        return results[0] if single else results

    def scores(self, images: Sequence[np.ndarray], *, color: str | None = None) -> np.ndarray:
        """Image scores only: on TensorRT the full-size maps then never leave the GPU."""
        bgr = (color or self.color) == "BGR"
        prepared = np.stack([prepare(to_rgb_uint8(im, bgr=bgr), self.geometry) for im in images])
        return self.heatmaps(prepared, maps=False)[1]

    def heatmaps(self, prepared: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """Prepared uint8 batch -> (full-size maps of the crop, or None; scores): on the device when
        the backend post-processes there (TensorRT), else the CPU kernel on the backend's raw maps."""
        limit = self.max_batch
        if limit and len(prepared) > limit:            # larger than the engine's profile: in chunks
            parts = [self.heatmaps(prepared[i:i + limit], maps=maps) for i in range(0, len(prepared), limit)]
            return (np.concatenate([m for m, _ in parts]) if maps else None), np.concatenate([s for _, s in parts])
        on_device = getattr(self.backend, "infer_heatmap", None)
        if on_device is not None:
            return on_device(prepared, maps=maps)
        out, scores = self._cpu_heatmap(self.infer(prepared))
        return (out if maps else None), scores

    def _cpu_heatmap(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.spec
        return heatmap(np.ascontiguousarray(raw, dtype=np.float32), tuple(s["output_size"]), smooth=s["smooth"],
                       sigma=s["sigma"], window=s["window"], align_corners=s["align_corners"],
                       score_from=s["score_from"], threads=1)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The backend alone: prepared uint8 N x H x W x 3 -> raw maps N x 1 x h x w."""
        return self.backend.infer(batch)

    def postprocess(self, raw: np.ndarray, sizes: list[tuple[int, int]]) -> list[Result]:
        """Raw maps (from infer) -> Results, on the CPU kernel."""
        return self.results(*self._cpu_heatmap(raw), sizes)

    def results(self, maps: np.ndarray, scores: np.ndarray, sizes: list[tuple[int, int]]) -> list[Result]:
        lo, hi = self.image_norm
        return [Result(score=float(score), normalized_score=float(np.clip((score - lo) / (hi - lo), 0.0, 1.0)),
                       is_anomalous=bool(score > self.threshold), crop_map=m, image_size=size,
                       geometry=self.geometry, pixel_norm=self.pixel_norm, pixel_threshold=self.pixel_threshold)
                for m, score, size in zip(maps, scores, sizes)]

    def stream(self, source, **kwargs):
        """An iterable Stream of results from one source or a list of them (camera index, video file,
        URL, image folder, Source, iterable of arrays); keyword arguments go to `Stream`."""
        from edge_ad.stream import Stream

        return Stream(self, source, **kwargs)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close:
            close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

