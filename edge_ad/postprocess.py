"""The Python face of the kernels: one call each, CPU or CUDA by where the data lives.

`heatmap` turns a model's raw low-resolution anomaly maps into full-size maps and image scores
(bilinear up-sampling, Gaussian or box smoothing, per-image max, optional normalization and threshold
mask) in one pass over the full-size map. `ddim_step` is one fused deterministic DDIM update.

NumPy arrays run on the CPU kernels. Objects exposing ``__cuda_array_interface__`` (torch CUDA
tensors, pycuda GPUArrays) run on the CUDA kernels, asynchronously on the given stream (default: the
tensor library's current stream), and results come back as arrays of the same library. This module
never imports torch: a Jetson needs only numpy, OpenCV and the compiled module.

Which CPU implementation runs (`kernel_impl()` says; `edge-ad info` prints it):

- "compiled": edge_ad._kernels, built from kernels/ when edge_ad was installed with a C++ compiler.
- "numpy": edge_ad.postprocess_numpy, the same math in NumPy and OpenCV, used when the compiled module
  cannot be imported (one warning per process, on first use). Results agree to float32 rounding.

The environment variable ``EDGE_AD_KERNELS`` chooses: unset or "auto" (the compiled module when it
imports, else the fallback), "numpy" (always the fallback, for tests and comparisons) or "compiled"
(fail at import when the compiled module is missing). CUDA arrays always need the compiled module.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import ModuleType
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = ["heatmap", "ddim_step", "HeatmapSpec", "cuda_available", "kernel_impl"]

log = logging.getLogger(__name__)

_ENV = "EDGE_AD_KERNELS"
_REINSTALL = (
    "install a C++ compiler (e.g. apt install build-essential) and reinstall edge_ad from source: "
    "pip install --force-reinstall --no-deps --no-binary edge_ad edge_ad (in a checkout: pip install -e .)"
)


def _load_compiled() -> tuple[ModuleType | None, str]:
    """(the compiled module or None, why it is missing)."""
    try:
        from edge_ad import _kernels  # noqa: PLC0415 - optional: the fallback stands in
    except ImportError as err:
        return None, str(err) or repr(err)
    return _kernels, ""


def _choose() -> tuple[ModuleType | None, str, str]:
    """(compiled module or None, CPU implementation name, why the fallback runs: "" when compiled)."""
    choice = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "compiled", "numpy"):
        raise ValueError(f"{_ENV} must be 'auto', 'compiled' or 'numpy', got {choice!r}; unset it for auto")
    compiled, missing = _load_compiled()
    if compiled is None and choice == "compiled":
        raise ImportError(f"{_ENV}=compiled, but edge_ad's compiled kernels do not import ({missing}); {_REINSTALL}")
    if choice == "numpy":
        return compiled, "numpy", ""        # asked for: no warning
    return compiled, "compiled" if compiled is not None else "numpy", missing


_kernels, _IMPL, _MISSING = _choose()
_cpu_module: ModuleType | None = _kernels if _IMPL == "compiled" else None
_warn_lock = threading.Lock()


def kernel_impl() -> str:
    """The CPU implementation in use: "compiled" (edge_ad._kernels) or "numpy" (NumPy + OpenCV)."""
    return _IMPL


def _cpu() -> ModuleType:
    """The module whose heatmap_cpu / ddim_step_cpu run NumPy inputs; warns once about the fallback."""
    global _cpu_module
    if _cpu_module is None:
        with _warn_lock:
            if _cpu_module is None:
                from edge_ad import postprocess_numpy  # noqa: PLC0415 - only without the compiled module

                if _MISSING:
                    log.warning(
                        "edge_ad's compiled kernels are not installed (%s); heatmap and ddim_step run on "
                        "NumPy/OpenCV instead: the same results (to float32 rounding), often slower. To get them, %s. "
                        "Set EDGE_AD_KERNELS=numpy to choose the fallback without this warning.",
                        _MISSING, _REINSTALL)
                _cpu_module = postprocess_numpy
    return _cpu_module


_SMOOTH = ("gaussian", "box", "none")
_SCORE_FROM = ("smoothed", "raw")


class HeatmapSpec(NamedTuple):
    """The post-processing a model declares and its bundle stores (meta.json's `heatmap` is `_asdict()`):
    one object for training, export and every backend, so none unpacks the fields by key."""

    output_size: tuple[int, int]
    smooth: str = "gaussian"
    sigma: float = 4.0
    window: int | None = None
    align_corners: bool = False
    score_from: str = "smoothed"

    @classmethod
    def from_meta(cls, fields: "Mapping[str, Any] | HeatmapSpec") -> "HeatmapSpec":
        """A bundle's or run's stored `heatmap` object (validated by edge_ad.bundle on load) -> HeatmapSpec."""
        if isinstance(fields, HeatmapSpec):
            return fields
        missing = [name for name in cls._fields if name not in fields]
        if missing:
            raise ValueError(f"the heat-map spec lacks {', '.join(missing)}; re-export the bundle")
        h, w = fields["output_size"]
        window = fields["window"]
        return cls(output_size=(int(h), int(w)), smooth=str(fields["smooth"]), sigma=float(fields["sigma"]),
                   window=None if window is None else int(window), align_corners=bool(fields["align_corners"]),
                   score_from=str(fields["score_from"]))

    def apply(self, raw: Any, *, threads: int | None = 1) -> tuple[Any, Any]:
        """(full-size maps, scores) of raw N x 1 x h x w maps: numpy on the CPU kernel (`threads` 1 by
        default: the inference engine owns the cores; None: the kernel's default), device arrays on the
        CUDA kernel (`threads` ignored)."""
        if isinstance(raw, np.ndarray):
            raw = np.ascontiguousarray(raw, dtype=np.float32)
        extra = {"threads": threads} if threads is not None else {}
        return heatmap(raw, self.output_size, smooth=self.smooth, sigma=self.sigma, window=self.window,
                       align_corners=self.align_corners, score_from=self.score_from, **extra)


def cuda_available() -> bool:
    """True when the CUDA kernels were compiled in and a CUDA device is visible."""
    return _kernels is not None and bool(_kernels.has_cuda) and _kernels.cuda_device_count() > 0


def heatmap(
    raw: Any,
    output_size: int | Sequence[int],
    *,
    smooth: str = "gaussian",
    sigma: float = 4.0,
    window: int | None = None,
    align_corners: bool = False,
    score_from: str = "smoothed",
    normalize: tuple[float, float] | None = None,
    threshold: float | None = None,
    stream: int | None = None,
    threads: int = 0,
) -> tuple[Any, Any] | tuple[Any, Any, Any]:
    """Full-size anomaly maps and image scores from raw low-resolution maps.

    Args:
        raw: N x h x w (or N x 1 x h x w) float32/float16 maps, higher = more anomalous; a
            C-contiguous numpy array, or a CUDA array (torch tensor, pycuda GPUArray).
        output_size: H or (H, W) of the full-size maps.
        smooth: "gaussian" (sigma; kernel 2*int(4*sigma+0.5)+1, reflect border as
            scipy.ndimage), "box" (window x window mean, reflect border) or "none".
        align_corners: bilinear up-sampling convention, as torch's F.interpolate.
        score_from: image score = max of the "smoothed" full-size map, or of the "raw" map.
        normalize: (lo, hi): maps and scores become (x - lo) / (hi - lo) clipped to [0, 1].
        threshold: if given, also return masks (uint8, final map >= threshold).
        stream: CUDA stream handle for device inputs.
        threads: CPU threads (0: OpenMP's default). Runtimes pass 1: the inference engine owns the
            cores, and a second thread team next to it cost a 288-px SimpleNet a third of its frame
            rate on 2 cores (measured). The NumPy fallback does not use it: its matrix products run on
            one BLAS thread, its OpenCV filters on OpenCV's pool (see edge_ad.postprocess_numpy).

    Returns:
        (maps N x H x W float32, scores N float32), plus masks N x H x W uint8 when threshold is
        given; numpy arrays for numpy input, device arrays of the input's library otherwise.
    """
    out_h, out_w = _output_size(output_size)
    if smooth not in _SMOOTH:
        raise ValueError(f"smooth must be one of {_SMOOTH}, got {smooth!r}")
    if score_from not in _SCORE_FROM:
        raise ValueError(f"score_from must be one of {_SCORE_FROM}, got {score_from!r}")
    if smooth == "box" and window is None:
        raise ValueError("smooth='box' needs window=<pixels> (e.g. window=16)")
    norm_min, norm_max = (None, None) if normalize is None else (float(normalize[0]), float(normalize[1]))
    kwargs = dict(
        smooth=smooth,
        sigma=float(sigma),
        window=int(window or 0),
        align_corners=bool(align_corners),
        score_from_raw=score_from == "raw",
        norm_min=norm_min,
        norm_max=norm_max,
        threshold=None if threshold is None else float(threshold),
    )
    if isinstance(raw, np.ndarray):
        maps, scores, masks = _cpu().heatmap_cpu(_as_nhw(raw), out_h, out_w, threads=int(threads), **kwargs)
    elif hasattr(raw, "__cuda_array_interface__"):
        maps, scores, masks = _heatmap_cuda(raw, out_h, out_w, stream, kwargs)
    else:
        raise TypeError(
            f"raw must be a numpy array or a CUDA array (torch tensor, pycuda GPUArray), "
            f"got {type(raw).__name__}; CPU torch tensors: pass tensor.numpy()"
        )
    return (maps, scores) if threshold is None else (maps, scores, masks)


def ddim_step(
    x_t: Any,
    eps: Any,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    *,
    clamp: float | None = None,
    out: Any = None,
    stream: int | None = None,
) -> Any:
    """One deterministic DDIM update (eta = 0), fused over a latent (fp32 or fp16).

    x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t), clipped to [-clamp, clamp] if clamp is
    given; returns sqrt(abar_prev) * x0 + sqrt(1 - abar_prev) * eps. `out` may be `x_t` (in place).
    """
    if isinstance(x_t, np.ndarray):
        if not isinstance(eps, np.ndarray):
            raise TypeError("x_t is a numpy array, so eps must be one too")
        return _cpu().ddim_step_cpu(x_t, eps, float(alpha_bar_t), float(alpha_bar_prev), clamp=clamp, out=out)
    if hasattr(x_t, "__cuda_array_interface__"):
        return _ddim_cuda(x_t, eps, float(alpha_bar_t), float(alpha_bar_prev), clamp, out, stream)
    raise TypeError(f"x_t must be a numpy array or a CUDA array, got {type(x_t).__name__}")


def _output_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    try:
        out_h, out_w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"output_size must be an int or a pair (H, W), got {size!r}") from None
    return out_h, out_w


def _as_nhw(raw: np.ndarray) -> np.ndarray:
    """Accept N x h x w, or N x 1 x h x w as models return it; anything else is an error."""
    if raw.ndim == 4 and raw.shape[1] == 1:
        return raw.reshape(raw.shape[0], raw.shape[2], raw.shape[3]) if raw.flags.c_contiguous else raw[:, 0]
    if raw.ndim != 3:
        raise ValueError(f"raw maps must have shape (N, h, w) or (N, 1, h, w), got {raw.shape}")
    return raw


# ----------------------------------------------------------------------------------------- CUDA


_TYPESTR = {"<f4": "float32", "<f2": "float16"}


class _DeviceArray(NamedTuple):
    ptr: int
    shape: tuple[int, ...]
    dtype: str


def _describe(arr: Any, name: str) -> _DeviceArray:
    """Pointer, shape and dtype of a CUDA array; refuse what the kernels cannot read."""
    iface = arr.__cuda_array_interface__
    shape = tuple(int(s) for s in iface["shape"])
    dtype = _TYPESTR.get(iface["typestr"])
    if dtype is None:
        raise TypeError(f"{name} must be float32 or float16, got typestr {iface['typestr']!r}")
    strides = iface.get("strides")
    if strides is not None:
        itemsize = 4 if dtype == "float32" else 2
        expected, step = [], itemsize
        for dim in reversed(shape):
            expected.append(step)
            step *= dim
        if tuple(strides) != tuple(reversed(expected)) and int(np.prod(shape)) > 1:
            raise ValueError(f"{name} must be C-contiguous; call .contiguous() on it first")
    if int(np.prod(shape)) == 0:
        raise ValueError(f"{name} is empty (shape {shape})")
    return _DeviceArray(int(iface["data"][0]), shape, dtype)


class _Allocator:
    """Allocates outputs with the input's own library, so results stay on its device and stream."""

    def __init__(self, like: Any):
        module = type(like).__module__.split(".")[0]
        self.kind = module
        self.like = like
        if module not in ("torch", "pycuda"):
            raise TypeError(
                f"CUDA arrays from {module!r} are not supported here; use torch tensors or pycuda "
                "GPUArrays, or the device-pointer functions of edge_ad._kernels"
            )

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        if self.kind == "torch":
            torch = sys.modules["torch"]
            return torch.empty(shape, dtype=getattr(torch, dtype), device=self.like.device)
        from pycuda import gpuarray  # noqa: PLC0415 - only on the pycuda path

        return gpuarray.empty(shape, dtype=np.dtype(dtype))

    def stream(self) -> int:
        if self.kind == "torch":
            return int(sys.modules["torch"].cuda.current_stream(self.like.device).cuda_stream)
        return 0

    def keep_until_done(self, buffer: Any, stream: int) -> None:
        """Keep a temporary buffer alive until the kernels queued on `stream` have run.

        torch's caching allocator is ordered on its current stream, so only another stream needs
        record_stream. pycuda's free (cuMemFree) waits for the device, which is safe but blocks;
        the TensorRT runtime preallocates its workspace instead.
        """
        if self.kind == "torch" and stream != self.stream():
            torch = sys.modules["torch"]
            buffer.record_stream(torch.cuda.ExternalStream(stream, device=self.like.device))

    @staticmethod
    def ptr(arr: Any) -> int:
        return int(arr.__cuda_array_interface__["data"][0])


def _require_cuda() -> None:
    if _kernels is None:
        raise RuntimeError(
            f"CUDA arrays need edge_ad's compiled kernels, which are not installed; {_REINSTALL}, "
            "with nvcc available for the CUDA kernels. Or pass NumPy arrays (tensor.cpu().numpy()): the "
            "NumPy/OpenCV fallback runs those"
        )
    if not _kernels.has_cuda:
        raise RuntimeError(
            "edge_ad was built without its CUDA kernels; reinstall with nvcc available "
            "(EDGE_AD_REQUIRE_CUDA=ON makes the build fail loudly when it is not)"
        )


def _heatmap_cuda(raw: Any, out_h: int, out_w: int, stream: int | None, kwargs: dict) -> tuple:
    _require_cuda()
    desc = _describe(raw, "raw")
    shape = desc.shape
    if len(shape) == 4 and shape[1] == 1:
        shape = (shape[0], shape[2], shape[3])
    if len(shape) != 3:
        raise ValueError(f"raw maps must have shape (N, h, w) or (N, 1, h, w), got {desc.shape}")
    n, h, w = shape
    alloc = _Allocator(raw)
    ws_bytes = _kernels.heatmap_cuda_workspace_bytes(
        n, h, w, out_h, out_w, smooth=kwargs["smooth"], sigma=kwargs["sigma"],
        window=kwargs["window"], align_corners=kwargs["align_corners"],
    )
    maps = alloc.empty((n, out_h, out_w), "float32")
    scores = alloc.empty((n,), "float32")
    workspace = alloc.empty((ws_bytes,), "uint8")
    masks = alloc.empty((n, out_h, out_w), "uint8") if kwargs["threshold"] is not None else None
    handle = alloc.stream() if stream is None else int(stream)
    _kernels.heatmap_cuda(
        desc.ptr, desc.dtype, n, h, w, out_h, out_w, alloc.ptr(maps), alloc.ptr(scores),
        0 if masks is None else alloc.ptr(masks), alloc.ptr(workspace), ws_bytes, handle, **kwargs,
    )
    alloc.keep_until_done(workspace, handle)
    return maps, scores, masks


def _ddim_cuda(x_t: Any, eps: Any, a_t: float, a_prev: float, clamp: float | None, out: Any,
               stream: int | None) -> Any:
    _require_cuda()
    x_desc, e_desc = _describe(x_t, "x_t"), _describe(eps, "eps")
    if x_desc.shape != e_desc.shape or x_desc.dtype != e_desc.dtype:
        raise ValueError("x_t and eps must have the same shape and dtype")
    alloc = _Allocator(x_t)
    result = alloc.empty(x_desc.shape, x_desc.dtype) if out is None else out
    o_desc = _describe(result, "out")
    if o_desc.shape != x_desc.shape or o_desc.dtype != x_desc.dtype:
        raise ValueError("out must have the shape and dtype of x_t")
    count = int(np.prod(x_desc.shape))
    _kernels.ddim_step_cuda(
        x_desc.ptr, e_desc.ptr, o_desc.ptr, count, x_desc.dtype, a_t, a_prev, clamp=clamp,
        stream=alloc.stream() if stream is None else int(stream),
    )
    return result
