"""Detector: a loaded bundle + a backend. predict(image, path or list) -> Result(s).

A model output that is not finite (NaN/inf) never becomes a verdict: predict() raises InferenceError
naming the images of the batch it hit (with the Results of the others), so a broken model or backend
is an error for those frames, never "normal" and never a score of -inf.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_ad.bundle import Bundle, BundleError
from edge_ad.imaging import read_image, to_rgb_uint8
from edge_ad.runtime.backend import Backend
from edge_ad.runtime.calibrated_view import warn_if_other_view
from edge_ad.postprocess import HeatmapSpec
from edge_ad.runtime.preprocess import Geometry, prepare
from edge_ad.runtime.result import InferenceError, Result
from edge_ad.runtime.thresholds import norm_for, threshold_in_use
from edge_ad.runtime.tiling import DEFAULT_OVERLAP, View, cut, plan_view, rois_for

COLORS = ("BGR", "RGB")
ImageInput = np.ndarray | str | Path


def check_color(color, where: str = "color") -> str:
    """'BGR' or 'RGB' (any case) -> the upper-case name; anything else is a ValueError."""
    if isinstance(color, str) and color.upper() in COLORS:
        return color.upper()
    raise ValueError(f"{where} must be 'BGR' (OpenCV's order) or 'RGB', got {color!r}")


class Detector:
    """Runs a bundle on images of any size. `color` says what predict() receives: "BGR" (OpenCV's
    order, the default for frames from cv2) or "RGB". Grayscale, RGBA and 16-bit input are converted.
    `backend`: anything that implements edge_ad.runtime.backend.Backend."""

    def __init__(self, bundle: Bundle, backend: Backend, *, color: str = "BGR") -> None:
        self.color = check_color(color)
        self.bundle = bundle
        self.backend = backend
        meta = bundle.meta
        self.geometry = Geometry.from_dict(meta["geometry"])
        self.heatmap_spec: HeatmapSpec = HeatmapSpec.from_meta(meta["heatmap"])
        self.calibrated_threshold, self.calibrated_norm, self.pixel_threshold, self.pixel_norm = _calibration(bundle)
        self.set_threshold()
        self.view_warning = True           # log once when a view differs from the calibration's (calibrate: off)
        # The CPU heat-map kernel's threads: 1, since the inference library owns the cores while a frame runs
        # (benchmarks/cpu_threads.py measures the alternatives).
        self.heatmap_threads = 1
        if not isinstance(backend, Backend):
            raise TypeError(f"a Detector's backend must implement edge_ad.runtime.backend.Backend (name, max_batch, "
                            f"device_heatmap, infer, infer_heatmap, close; subclass BaseBackend for the defaults), "
                            f"got {type(backend).__name__}")

    @property
    def threshold(self) -> float:
        """The image threshold in use, raw score units: a part is flagged when score > threshold.
        Assigning it is set_threshold(value)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.set_threshold(value)

    def set_threshold(self, threshold: float | None = None, *, sensitivity: float | None = None) -> float:
        """Set the image threshold in use and return it: `threshold` in raw score units, or `sensitivity`
        0..1 (0.5 = the calibrated threshold, higher flags more), or neither for the bundle's calibrated
        threshold. `image_norm` follows it, so results' normalized_score is 0.5 at the threshold in use
        for bundles edge_ad calibrated (see edge_ad.runtime.thresholds for the exact mapping). Raises
        ValueError for both at once, a non-finite threshold or a sensitivity outside 0..1."""
        value = threshold_in_use(self.calibrated_threshold, self.calibrated_norm, threshold, sensitivity)
        self._threshold = value
        self.image_norm = norm_for(value, self.calibrated_threshold, self.calibrated_norm)
        return value

    @property
    def model_name(self) -> str:
        return self.bundle.model_name

    @property
    def max_batch(self) -> int | None:
        """The largest batch the backend takes in one run (a TensorRT profile's max); None: any."""
        return self.backend.max_batch

    def predict(self, images: ImageInput | Sequence[ImageInput], *,
                color: str | Sequence[str] | None = None, roi=None, tiles=None,
                overlap: float = DEFAULT_OVERLAP) -> Result | list[Result]:
        """One image -> one Result; a list of images -> a list of Results (one batched inference).

        An image is an H x W (x 1/3/4) array, or the path of an image file (read, and its colour order
        taken from the file). `color` overrides the detector's channel order for arrays in this call:
        one for all, or one per image. `roi`: the region of interest, x,y,w,h ("x,y,w,h" or four
        numbers) for all images, or a list of one (or None) per image; the model sees only it, and the
        maps come back at the image's size, 0 outside it. `tiles`: "RxC" or (rows, cols): the image (or
        ROI) is cut into that many tiles sharing `overlap` of a side, all run in one batch; the score
        is the highest tile's, the maps are stitched (maximum where tiles overlap). Raises RoiError for
        a ROI that does not fit its image, InferenceError when the model's output is not finite for
        some images (its `results` holds the others')."""
        single = isinstance(images, (np.ndarray, str, Path))
        if images is None:
            raise TypeError("predict() needs an image (a numpy array H x W x C), the path of an image file, or a "
                            "list of them; got None")
        if isinstance(images, np.ndarray) and images.ndim == 4:
            raise ValueError(f"predict() got a 4-D array {images.shape}; pass one image (H x W x C) or a list of "
                             "images, one per frame")
        batch = [images] if single else _as_list(images)
        if not batch:
            return []
        colors = self._colors(color, len(batch))
        frames = [self._frame(im, c, i) for i, (im, c) in enumerate(zip(batch, colors))]
        sizes = [im.shape[:2] for im, _ in frames]
        views = self.views(sizes, roi, tiles, overlap)
        maps, scores, bad = self._heatmaps(self._inputs(frames, views))
        bad = _images_of(bad, views)
        if bad:
            results = [None if i in bad else r for i, r in
                       enumerate(self.results(np.nan_to_num(maps), np.nan_to_num(scores), sizes, views))]
            raise _non_finite(bad, len(batch), results)
        results = self.results(maps, scores, sizes, views)
        return results[0] if single else results

    def _colors(self, color, n: int) -> list[str]:
        if color is None:
            return [self.color] * n
        if isinstance(color, str) or not isinstance(color, (list, tuple)):
            return [check_color(color)] * n
        colors = [check_color(c, f"color[{i}]") for i, c in enumerate(_as_list(color, "color"))]
        if len(colors) != n:
            raise ValueError(f"got {len(colors)} colour orders for {n} images")
        return colors

    @classmethod
    def _frame(cls, image: ImageInput, color: str, index: int) -> tuple[np.ndarray, bool]:
        """(the image as uint8 H x W x 3, whether it is still in BGR order): a contiguous uint8 BGR frame
        as it is, its channels swapped after the resize (preprocess.prepare: fewer pixels); anything
        else converted to RGB now (_rgb)."""
        if (color == "BGR" and isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.size and image.flags.c_contiguous):
            return image, True
        return cls._rgb(image, color, index), False

    @staticmethod
    def _rgb(image: ImageInput, color: str, index: int) -> np.ndarray:
        """An array in `color` order, or an image file, as RGB uint8."""
        if isinstance(image, (str, Path)):
            if not str(image).strip():
                raise ValueError(f"image {index}: an empty path")
            return read_image(image)
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image {index}: predict() takes numpy arrays (H x W x C) or image file paths, "
                            f"got {type(image).__name__}")
        return to_rgb_uint8(image, bgr=color == "BGR")

    def scores(self, images: Sequence[ImageInput], *, color: str | None = None, roi=None, tiles=None,
               overlap: float = DEFAULT_OVERLAP) -> np.ndarray:
        """Image scores only: on TensorRT the full-size maps then never leave the GPU. `roi`, `tiles`
        and `overlap` as in predict(). Raises InferenceError when a score is not finite."""
        batch = _as_list(images)
        colors = self._colors(color, len(batch))
        frames = [self._frame(im, c, i) for i, (im, c) in enumerate(zip(batch, colors))]
        views = self.views([im.shape[:2] for im, _ in frames], roi, tiles, overlap)
        _, scores, bad = self._heatmaps(self._inputs(frames, views), maps=False)
        bad = _images_of(bad, views)
        if bad:
            raise _non_finite(bad, len(batch))
        return np.array([part.max() for part in np.split(scores, _starts(views)[1:-1])], dtype=scores.dtype)

    def views(self, sizes: Sequence[tuple[int, int]], roi=None, tiles=None,
              overlap: float = DEFAULT_OVERLAP) -> list[View]:
        """How the model looks at images of these sizes (H, W): their checked ROIs and the boxes cut
        from each (see edge_ad.runtime.tiling). Raises RoiError for a ROI that does not fit."""
        rois = rois_for(roi, len(sizes))
        views = [plan_view(size, r, tiles, overlap, where=f"image {i}: " if len(sizes) > 1 else "",
                           geometry=self.geometry)
                 for i, (size, r) in enumerate(zip(sizes, rois))]
        if getattr(self, "view_warning", False) and warn_if_other_view(self.bundle.meta["calibration"], roi, tiles,
                                                                        overlap):
            self.view_warning = False                   # one warning per Detector, not one per frame
        return views

    def _inputs(self, frames: list[tuple[np.ndarray, bool]], views: list[View]) -> np.ndarray:
        """The model inputs of every box of every (image, still BGR) frame, in order, as one uint8 batch
        (a single box without a copy)."""
        parts = [prepare(part, self.geometry, bgr=bgr) for (im, bgr), view in zip(frames, views)
                 for part in cut(im, view)]
        return parts[0][None] if len(parts) == 1 else np.stack(parts)

    def heatmaps(self, prepared: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """Prepared uint8 batch -> (full-size maps of the crop, or None; scores): on the device when
        the backend post-processes there (TensorRT), else the CPU kernel on the backend's raw maps.
        Raises InferenceError when the model's output is not finite for some images."""
        out, scores, bad = self._heatmaps(prepared, maps=maps)
        if bad:
            raise _non_finite(bad, len(prepared))
        return out, scores

    def _heatmaps(self, prepared: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray, list[int]]:
        """As heatmaps(), plus the batch positions whose raw output, score or map is not finite."""
        limit = self.max_batch
        if limit and len(prepared) > limit:            # larger than the engine's profile: in chunks
            parts = [self._heatmaps(prepared[i:i + limit], maps=maps) for i in range(0, len(prepared), limit)]
            bad = [i + start for start, (_, _, b) in zip(range(0, len(prepared), limit), parts) for i in b]
            return ((np.concatenate([m for m, _, _ in parts]) if maps else None),
                    np.concatenate([s for _, s, _ in parts]), bad)
        if self.backend.device_heatmap:
            out, scores = self.backend.infer_heatmap(prepared, maps=maps)
            return out, scores, _non_finite_rows(scores, out)
        raw = self.infer(prepared)
        out, scores = self._cpu_heatmap(raw)
        return (out if maps else None), scores, _non_finite_rows(scores, out, raw)

    def _cpu_heatmap(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.heatmap_spec.apply(np.asarray(raw), threads=self.heatmap_threads)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The backend alone: prepared uint8 N x H x W x 3 -> raw maps N x 1 x h x w."""
        return self.backend.infer(batch)

    def postprocess(self, raw: np.ndarray, sizes: list[tuple[int, int]]) -> list[Result]:
        """Raw maps (from infer) -> Results, on the CPU kernel; InferenceError for non-finite ones."""
        maps, scores = self._cpu_heatmap(raw)
        bad = _non_finite_rows(scores, maps, raw)
        if bad:
            results = self.results(np.nan_to_num(maps), np.nan_to_num(scores), sizes)
            raise _non_finite(bad, len(sizes), [None if i in bad else r for i, r in enumerate(results)])
        return self.results(maps, scores, sizes)

    def results(self, maps: np.ndarray, scores: np.ndarray, sizes: list[tuple[int, int]],
                views: list[View] | None = None) -> list[Result]:
        """Results from the maps and scores of a batch: one row per image, or with `views` one row per
        box of each image's view (its score: the highest of its rows)."""
        lo, hi = self.image_norm
        starts = _starts(views) if views is not None else list(range(len(sizes) + 1))
        out = []
        for k, size in enumerate(sizes):
            a, b = starts[k], starts[k + 1]
            top = a + int(np.argmax(scores[a:b]))
            score = float(scores[top])
            view = views[k] if views is not None else None
            parts = () if view is None or view.whole else tuple(zip(view.boxes, maps[a:b]))
            out.append(Result(score=score, normalized_score=float(np.clip((score - lo) / (hi - lo), 0.0, 1.0)),
                              is_anomalous=bool(float(score) > self.threshold), crop_map=maps[top], image_size=size,
                              geometry=self.geometry, pixel_norm=self.pixel_norm, pixel_threshold=self.pixel_threshold,
                              roi=view.roi if view is not None else None, parts=parts))
        return out

    def stream(self, source, **kwargs):
        """An iterable Stream of results from one source or a list of them (camera index, video file,
        URL, image folder, Source, iterable of arrays); keyword arguments go to `Stream`."""
        from edge_ad.stream import Stream

        return Stream(self, source, **kwargs)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def _as_list(items, what: str = "images") -> list:
    """A list from a list, tuple or other iterable (not a string, not None)."""
    if items is None or isinstance(items, (str, bytes, dict)):
        raise TypeError(f"{what}: expected a list, got {type(items).__name__}")
    try:
        return list(items)
    except TypeError:
        raise TypeError(f"{what}: expected an image, an image path or a list of them, "
                        f"got {type(items).__name__}") from None


def _starts(views: list[View]) -> list[int]:
    """The batch row where each image's boxes start, and the total at the end."""
    return np.cumsum([0] + [len(v.boxes) for v in views]).tolist()


def _images_of(rows: list[int], views: list[View]) -> list[int]:
    """The images (positions in `views`) that the given batch rows belong to."""
    starts = _starts(views)
    return sorted({int(np.searchsorted(starts, r, side="right")) - 1 for r in rows})


def _non_finite_rows(scores: np.ndarray, *arrays: np.ndarray | None) -> list[int]:
    """Batch positions where the score or any of `arrays` (per image: maps, raw output) is not finite."""
    ok = np.isfinite(np.asarray(scores, np.float64).reshape(len(scores), -1)).all(axis=1)
    for a in arrays:
        if a is not None and len(a) == len(ok):
            ok &= np.isfinite(np.asarray(a).reshape(len(a), -1)).all(axis=1)
    return np.flatnonzero(~ok).tolist()


def _non_finite(bad: list[int], n: int, results: list | None = None) -> InferenceError:
    return InferenceError(f"the model's output is not finite (NaN/inf) for image(s) {', '.join(map(str, bad[:16]))} "
                          f"of this batch of {n}: no result for them (not 'normal'). The model or the backend "
                          "is broken: compare with backend='onnxruntime-cpu', or re-export the bundle", bad, results)


def _calibration(bundle: Bundle) -> tuple[float, tuple[float, float], float, tuple[float, float]]:
    """(image threshold, image norm, pixel threshold, pixel norm) from meta.json, each finite with lo < hi;
    a missing or non-finite field is a BundleError naming it (a NaN threshold flags nothing)."""
    cal = bundle.meta.get("calibration")
    where = f"{bundle.path}: meta.json calibration"
    if not isinstance(cal, dict):
        raise BundleError(f"{where} is missing or not an object; re-export the bundle")

    def number(value, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BundleError(f"{where}.{name} is {value!r}, not a finite number; re-export the bundle from "
                              "a run with a valid calibration")
        return float(value)

    def pair(name: str) -> tuple[float, float]:
        value = cal.get(name)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise BundleError(f"{where}.{name} must be a pair [lo, hi], got {value!r}; re-export the bundle")
        lo, hi = number(value[0], f"{name}[0]"), number(value[1], f"{name}[1]")
        if not hi - lo > 0 or not math.isfinite(hi - lo):
            raise BundleError(f"{where}.{name} is ({lo}, {hi}): it needs lo < hi; re-export the bundle")
        return lo, hi

    return (number(cal.get("image_threshold"), "image_threshold"), pair("image_norm"),
            number(cal.get("pixel_threshold"), "pixel_threshold"), pair("pixel_norm"))
