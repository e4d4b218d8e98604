"""The kernels in NumPy and OpenCV: what edge_ad.postprocess runs when the compiled module is missing.

Same signatures, same checks and the same math as ``edge_ad._kernels.heatmap_cpu`` and
``ddim_step_cpu`` (kernels/heatmap_math.h, kernels/ddim_math.h), so a box without a C++ compiler gets
the same numbers, to float32 rounding. Up-sampling then smoothing is one linear map per axis; it runs
one of two ways, whichever does less work for the sizes (`full_size_maps`):

- "matrix": the compiled kernel's composed per-axis matrices K (out x in: torch's bilinear weights
  times the filter taps, reflected border), built once per size in float64 and applied densely as
  K_y @ A @ K_x^T with NumPy's BLAS. Wins when the maps are up-sampled (every model's low-res map).
- "separable": ``cv2.resize`` with ``INTER_LINEAR`` (torch's half-pixel bilinear; align_corners=True,
  which OpenCV has no flag for and ``cv2.remap`` would quantize to 1/32, is a gather with per-axis
  index/weight tables), then ``cv2.sepFilter2D`` with the same taps (Gaussian ``2*int(4*sigma+0.5)+1``
  taps normalized to sum 1, or ``window`` taps of ``1/window`` anchored at ``window // 2``) and
  ``BORDER_REFLECT``, scipy.ndimage's "reflect" (d c b a | a b c d), repeated where the filter is
  wider than the map. Wins when the map is already near full size.

The compiled kernel's limits hold here too (at most 1025 filter taps, at most 128 low-res pixels per
output pixel), so an input one implementation refuses the other refuses as well. ``threads`` is
accepted and not used: the matrix products run on one BLAS thread (held there with threadpoolctl;
without threadpoolctl the matrix path is not taken), OpenCV's resize and filter on OpenCV's pool
(``cv2.setNumThreads``); either way the results do not depend on the number of threads.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator

import cv2
import numpy as np

__all__ = ["heatmap_cpu", "ddim_step_cpu"]

_MAX_TAPS = 1025   # kernels/heatmap_math.h kMaxTaps
_MAX_BAND = 128    # kernels/heatmap_math.h kMaxBand
_SMOOTH = ("gaussian", "box", "none")


def heatmap_cpu(
    raw: np.ndarray,
    out_h: int,
    out_w: int,
    *,
    smooth: str = "gaussian",
    sigma: float = 4.0,
    window: int = 0,
    align_corners: bool = False,
    score_from_raw: bool = False,
    norm_min: float | None = None,
    norm_max: float | None = None,
    threshold: float | None = None,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Full-size maps (N x H x W float32), scores (N float32) and masks (uint8, None without
    threshold) from N x h x w float32/float16 raw maps, as the compiled ``heatmap_cpu``."""
    _check_raw(raw)
    norm = _check_heatmap_args(raw.shape, out_h, out_w, smooth, sigma, window, norm_min, norm_max, threads)
    for n_in, n_out in ((raw.shape[1], out_h), (raw.shape[2], out_w)):
        _check_band(n_in, n_out, bool(align_corners), smooth, float(sigma), int(window))
    a = raw.astype(np.float32, copy=False)
    maps = full_size_maps(a, out_h, out_w, smooth=smooth, sigma=float(sigma), window=int(window),
                          align_corners=bool(align_corners))
    if norm is not None:
        _normalize_maps(maps, *norm)
    if score_from_raw:
        scores = _normalize_scores(_max_ignoring_nan(a), norm)
    else:
        scores = _max_ignoring_nan(maps)
    masks = None if threshold is None else (maps >= np.float32(threshold)).view(np.uint8)
    return maps, scores.astype(np.float32, copy=False), masks


def ddim_step_cpu(
    x_t: np.ndarray,
    eps: np.ndarray,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    *,
    clamp: float | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One deterministic DDIM step (eta = 0), fp32 or fp16, as the compiled ``ddim_step_cpu``:
    x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t), clipped to [-clamp, clamp] if clamp is given;
    returns sqrt(abar_prev) * x0 + sqrt(1 - abar_prev) * eps (in `out` when given; it may be x_t)."""
    _check_ddim(x_t, eps, out, alpha_bar_t, alpha_bar_prev, clamp)
    inv_sqrt_a_t = np.float32(1.0 / math.sqrt(alpha_bar_t))
    sqrt_1m_a_t = np.float32(math.sqrt(1.0 - alpha_bar_t))
    sqrt_a_prev = np.float32(math.sqrt(alpha_bar_prev))
    sqrt_1m_a_prev = np.float32(math.sqrt(1.0 - alpha_bar_prev))
    x = x_t.astype(np.float32, copy=False).reshape(-1)
    e = eps.astype(np.float32, copy=False).reshape(-1)
    x0 = e * sqrt_1m_a_t
    np.subtract(x, x0, out=x0)
    x0 *= inv_sqrt_a_t
    if clamp is not None:
        c = np.float32(clamp)
        np.fmin(np.fmax(x0, -c, out=x0), c, out=x0)   # fminf/fmaxf: NaN becomes -clamp, as in C++
    x0 *= sqrt_a_prev
    x0 += e * sqrt_1m_a_prev
    result = np.empty_like(x_t) if out is None else out
    result.reshape(-1)[...] = x0   # rounds to fp16 (nearest even) for fp16 latents
    return result


# ----------------------------------------------------------------------------------- heatmap math


def _max_ignoring_nan(maps: np.ndarray) -> np.ndarray:
    """Per-image max over the non-NaN values, -inf for an image with none (as the compiled kernel: its
    running max starts at -inf and NaN never wins a comparison)."""
    flat = maps.reshape(len(maps), -1)
    best = np.fmax.reduce(flat, axis=1) if flat.shape[1] else np.full(len(flat), -np.inf, flat.dtype)
    return np.where(np.isnan(best), -np.inf, best).astype(flat.dtype, copy=False)


def full_size_maps(a: np.ndarray, out_h: int, out_w: int, *, smooth: str, sigma: float, window: int,
                   align_corners: bool, method: str = "auto") -> np.ndarray:
    """Up-sampled and smoothed N x out_h x out_w float32 maps of float32 N x h x w maps `a`.

    method "matrix": two matrix products (NumPy's BLAS) with the composed per-axis matrices (what the
    compiled kernel does, dense: fastest when the maps are up-sampled a lot); "separable": resize,
    then filter (fastest when they are not); "auto" picks by an estimate of the work per output pixel.
    The matrix path holds BLAS to one thread, so it needs threadpoolctl; without it "auto" takes the
    separable path: a BLAS thread team next to the inference engine's made a 288 px batch of 8 take
    hundreds of ms on a busy 2-core box (measured), and results would change with BLAS's thread count.
    """
    taps = _filter_taps(smooth, sigma, window)
    if method == "auto":
        cheaper = _matrix_is_cheaper(a.shape[1], a.shape[2], out_h, len(taps[0]), align_corners)
        method = "matrix" if cheaper and _blas_controller() is not None else "separable"
    if method == "matrix":
        return _matrix_maps(a, out_h, out_w, smooth, sigma, window, align_corners)
    if method == "separable":
        return _separable_maps(a, out_h, out_w, align_corners, taps)
    raise ValueError(f"method must be 'auto', 'matrix' or 'separable', got {method!r}")


def _matrix_is_cheaper(h: int, w: int, out_h: int, taps: int, align_corners: bool) -> bool:
    """The matrix path does h*w/out_h + h multiply-adds per output pixel at BLAS speed; the separable
    path costs about as much as 4 of them per filter tap, plus a resize (more with align_corners,
    a gather). Calibrated on x86 (one thread), over up-sampling factors 1 to 16."""
    return h * w / out_h + h <= 4 * taps + (66 if align_corners else 16)


def _matrix_maps(a: np.ndarray, out_h: int, out_w: int, smooth: str, sigma: float, window: int,
                 align_corners: bool) -> np.ndarray:
    """maps[i] = K_y @ a[i] @ K_x^T with the composed up-sample + smoothing matrices of each axis."""
    n, h, w = a.shape
    k_y = _axis_matrix(h, out_h, align_corners, smooth, sigma, window)
    k_x_t = _axis_matrix(w, out_w, align_corners, smooth, sigma, window).T
    maps = np.empty((n, out_h, out_w), np.float32)
    with _one_blas_thread():
        rows = np.matmul(a.reshape(n * h, w), k_x_t).reshape(n, h, out_w)
        np.matmul(k_y, rows, out=maps)
    return maps


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Hold BLAS to one thread (when threadpoolctl is installed): the same bits whatever the core
    count, and no thread team waiting for cores the inference engine holds."""
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - optional
    except ImportError:
        return None
    return ThreadpoolController()


@lru_cache(maxsize=16)
def _axis_matrix(n_in: int, n_out: int, align_corners: bool, smooth: str, sigma: float,
                 window: int) -> np.ndarray:
    """n_out x n_in float32: bilinear up-sampling, then the smoothing filter with a reflected border,
    along one axis. Row d sums, over the filter taps t, tap(t) x the bilinear weights of output index
    reflect(d + t): the coefficients of kernels/heatmap_math.h row_coefficients, dense."""
    weights, anchor = _filter_taps(smooth, sigma, window)
    dst = np.arange(n_out)[:, None]
    mid = _reflect(dst + np.arange(len(weights))[None, :] - anchor, n_out)
    lo, hi, w_hi = _bilinear_taps(mid, n_in, n_out, align_corners)
    tap = weights[None, :]
    first = np.broadcast_to(dst * n_in, mid.shape)
    size = n_out * n_in
    matrix = (np.bincount((first + lo).ravel(), (tap * (1.0 - w_hi)).ravel(), size)
              + np.bincount((first + hi).ravel(), (tap * w_hi).ravel(), size))
    result = matrix.reshape(n_out, n_in).astype(np.float32)
    result.flags.writeable = False   # cached: shared by every call with these axis parameters
    return result


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage "reflect" index (d c b a | a b c d | d c b a), for any offset."""
    if n == 1:
        return np.zeros_like(i)
    i = i % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _bilinear_taps(dst: np.ndarray, n_in: int, n_out: int,
                   align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear source pixels (lo, hi) and the weight of hi, for output indices dst."""
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(dst.shape)
    else:
        src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.where(lo < n_in - 1, lo + 1, lo)
    return lo, hi, src - lo


def _separable_maps(a: np.ndarray, out_h: int, out_w: int, align_corners: bool,
                    taps: tuple[np.ndarray, int]) -> np.ndarray:
    """Resize each map, then filter it in place (reflected border); a filter of one tap is none."""
    kernel, anchor = taps[0].astype(np.float32), taps[1]
    maps = np.empty((a.shape[0], out_h, out_w), np.float32)
    for i in range(a.shape[0]):
        _upsample(a[i], out_h, out_w, align_corners, maps[i])
        if len(kernel) > 1:
            cv2.sepFilter2D(maps[i], cv2.CV_32F, kernel, kernel, dst=maps[i], anchor=(anchor, anchor),
                            borderType=cv2.BORDER_REFLECT)
    return maps


def _upsample(img: np.ndarray, out_h: int, out_w: int, align_corners: bool, dst: np.ndarray) -> None:
    """Bilinear resize of one h x w float32 map into dst (out_h x out_w), torch's convention."""
    if not align_corners:
        cv2.resize(img, (out_w, out_h), dst=dst, interpolation=cv2.INTER_LINEAR)
        return
    lo_y, hi_y, w_y = _corner_taps(img.shape[0], out_h)
    lo_x, hi_x, w_x = _corner_taps(img.shape[1], out_w)
    rows = img[:, lo_x] * (1 - w_x) + img[:, hi_x] * w_x                      # h x out_w
    np.multiply(rows[lo_y], (1 - w_y)[:, None], out=dst)
    dst += rows[hi_y] * w_y[:, None]


@lru_cache(maxsize=32)
def _corner_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """align_corners=True source pixels and float32 weight of the upper one, along one axis."""
    lo, hi, w_hi = _bilinear_taps(np.arange(n_out), n_in, n_out, True)
    return lo, hi, w_hi.astype(np.float32)


@lru_cache(maxsize=32)
def _filter_taps(smooth: str, sigma: float, window: int) -> tuple[np.ndarray, int]:
    """(float64 taps, index of offset 0) of the smoothing filter; one tap of 1 for smooth='none'.
    Gaussian: offsets -r..r, r = int(4 sigma + 0.5), normalized to sum 1; box: offsets
    -(window // 2)..window - 1 - window // 2, each 1 / window (kernels/heatmap_math.h)."""
    if smooth == "gaussian":
        radius = int(4.0 * sigma + 0.5)
        offsets = np.arange(-radius, radius + 1, dtype=np.float64)
        weights = np.exp(-0.5 * offsets * offsets / (sigma * sigma))
        return weights / weights.sum(), radius
    if smooth == "box":
        return np.full(window, 1.0 / window), window // 2
    return np.ones(1), 0


def _normalize_maps(maps: np.ndarray, lo: np.float32, hi: np.float32) -> None:
    """In place: (x - lo) * (1 / (hi - lo)) clipped to [0, 1]; NaN becomes 0, as std::max/min do."""
    maps -= lo
    maps *= np.float32(1.0) / (hi - lo)
    np.fmin(np.fmax(maps, np.float32(0), out=maps), np.float32(1), out=maps)


def _normalize_scores(scores: np.ndarray, norm: tuple[np.float32, np.float32] | None) -> np.ndarray:
    if norm is None:
        return scores
    lo, hi = norm
    return np.fmin(np.fmax((scores - lo) / (hi - lo), np.float32(0)), np.float32(1))


# ------------------------------------------------------------------------------------------ checks


def _check_raw(raw: np.ndarray) -> None:
    if not isinstance(raw, np.ndarray) or raw.dtype not in (np.float32, np.float16):
        got = raw.dtype if isinstance(raw, np.ndarray) else type(raw).__name__
        raise TypeError(f"raw must be float32 or float16, got dtype {got}")
    if raw.ndim != 3:
        raise ValueError(f"raw must have shape (N, h, w), got {raw.ndim} dimensions")
    if not raw.flags.c_contiguous:
        raise ValueError("raw must be C-contiguous; pass np.ascontiguousarray(raw)")


def _check_heatmap_args(shape: tuple[int, ...], out_h: int, out_w: int, smooth: str, sigma: float,
                        window: int, norm_min: float | None, norm_max: float | None,
                        threads: int) -> tuple[np.float32, np.float32] | None:
    """The compiled module's argument checks (bindings.cpp make_params, validate.cpp), same messages."""
    if smooth not in _SMOOTH:
        raise ValueError(f"smooth must be 'gaussian', 'box' or 'none', got '{smooth}'")
    if (norm_min is None) != (norm_max is None):
        raise ValueError("give both norm_min and norm_max, or neither")
    if threads < 0:
        raise ValueError("threads must be >= 0 (0: OpenMP's default)")
    n, h, w = shape
    if n < 1 or h < 1 or w < 1:
        raise ValueError(f"heatmap: raw maps must be a non-empty N x h x w array, got N={n}, h={h}, w={w}")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"heatmap: output_size must be two positive integers (H, W), got ({out_h}, {out_w})")
    if smooth == "gaussian" and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"heatmap: sigma must be a finite number > 0 for gaussian smoothing, got {sigma} "
                         "(use smooth='none' to skip)")
    if smooth == "box" and window < 1:
        raise ValueError(f"heatmap: window must be a positive integer for box smoothing, got {window}")
    norm = None if norm_min is None else (np.float32(norm_min), np.float32(norm_max))
    if norm is not None and not norm[1] > norm[0]:
        raise ValueError("heatmap: normalization needs norm_max > norm_min")
    taps = 2 * int(4.0 * sigma + 0.5) + 1 if smooth == "gaussian" else window if smooth == "box" else 1
    if taps > _MAX_TAPS:
        raise ValueError(f"heatmap: the smoothing filter has more than {_MAX_TAPS} taps; use sigma < 128 or "
                         f"window <= {_MAX_TAPS}")
    return norm


def _check_band(n_in: int, n_out: int, align_corners: bool, smooth: str, sigma: float, window: int) -> None:
    """Refuse what the compiled kernel refuses: output pixels drawing from more than 128 low-res ones."""
    band = _max_band(n_in, n_out, align_corners, smooth, sigma, window)
    if band > _MAX_BAND:
        raise ValueError(f"heatmap: the smoothing filter spans {band} low-res pixels per output pixel; at most "
                         f"{_MAX_BAND} are supported. Use a smaller sigma/window or a larger up-sampling factor.")


@lru_cache(maxsize=32)
def _max_band(n_in: int, n_out: int, align_corners: bool, smooth: str, sigma: float, window: int) -> int:
    """The widest span of low-res indices, first to last, that one output index reads (heatmap_math.h
    max_band: every filter tap's two bilinear sources count, whatever their weight)."""
    weights, anchor = _filter_taps(smooth, sigma, window)
    mid = _reflect(np.arange(n_out)[:, None] + np.arange(len(weights))[None, :] - anchor, n_out)
    lo, hi, _ = _bilinear_taps(mid, n_in, n_out, align_corners)
    return max(1, int((hi.max(axis=1) - lo.min(axis=1)).max()) + 1)


def _check_ddim(x_t: np.ndarray, eps: np.ndarray, out: np.ndarray | None, alpha_bar_t: float,
                alpha_bar_prev: float, clamp: float | None) -> None:
    """The compiled module's checks of ddim_step (bindings.cpp ddim_numpy, validate.cpp)."""
    for name, arr in (("x_t", x_t), ("eps", eps)) + ((("out", out),) if out is not None else ()):
        if not isinstance(arr, np.ndarray) or arr.dtype not in (np.float32, np.float16):
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise TypeError(f"{name} must be float32 or float16, got dtype {got}")
    if eps.dtype != x_t.dtype:
        raise TypeError("x_t and eps must have the same dtype")
    for name, arr in (("x_t", x_t), ("eps", eps)):
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
    if x_t.size == 0:
        raise ValueError("ddim_step: x_t is empty")
    if x_t.shape != eps.shape:
        raise ValueError("x_t and eps must have the same shape")
    if not all(math.isfinite(a) and 0.0 < a <= 1.0 for a in (alpha_bar_t, alpha_bar_prev)):
        raise ValueError(f"ddim_step: alpha_bar_t and alpha_bar_prev must lie in (0, 1], got {alpha_bar_t} "
                         f"and {alpha_bar_prev}")
    if clamp is not None and not np.float32(clamp) > 0:
        raise ValueError("ddim_step: clamp must be > 0")
    if out is not None:
        if out.dtype != x_t.dtype or out.size != x_t.size:
            raise ValueError("out must have the dtype and size of x_t")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous; pass np.ascontiguousarray(out)")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
