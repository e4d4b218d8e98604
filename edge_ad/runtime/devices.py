"""What this machine offers the runtime: a CUDA GPU, a usable TensorRT; and the process's TensorRT logger.

Both the backend choice (`backend="auto"`) and the engine builder ask these questions; they live here,
below both, so neither imports the other to ask. The compiled kernels answer for the GPU (their
statically linked CUDA runtime), and TensorRT is only looked for (`find_spec`), never imported at
import time: `tensorrt_logger` imports it when the TensorRT runtime or the engine builder asks for it.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import threading
from types import ModuleType
from typing import Any

__all__ = ["gpu_present", "installed", "kernels", "tensorrt_logger", "tensorrt_missing"]

_LOGGERS: dict[int, tuple[Any, Any]] = {}
_LOGGERS_LOCK = threading.Lock()


def installed(module: str) -> bool:
    """Whether `module` can be found for import (without importing it). An import hook that refuses
    the module (raising ImportError while it is looked for) counts as not installed."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def kernels() -> ModuleType | None:
    """The compiled module edge_ad._kernels, or None where edge_ad was installed without it."""
    try:
        from edge_ad import _kernels
    except ImportError:
        return None
    return _kernels


def gpu_present() -> bool:
    """A CUDA driver and device exist (asked through the kernels' CUDA runtime, or the driver
    library when the kernels were built without CUDA)."""
    k = kernels()
    if k is not None and k.has_cuda:
        return k.cuda_device_count() > 0
    return ctypes.util.find_library("cuda") is not None


def tensorrt_missing() -> str | None:
    """Why the TensorRT backend cannot run here, or None when it can."""
    if not installed("tensorrt"):
        return "TensorRT not installed"
    k = kernels()
    if k is None or not k.has_cuda:
        return "edge_ad was built without its CUDA kernels"
    if k.cuda_device_count() == 0:
        return f"no usable CUDA GPU: {k.cuda_init_error()}"
    return None


def tensorrt_logger(trt: Any = None) -> Any:
    """The process's one `trt.Logger` (WARNING), shared by every runtime, engine and builder: TensorRT
    keeps the first logger it is given process-wide and warns when another one is passed. `trt`: the
    tensorrt module (imported when None; tests pass a test double). Unverified: no GPU has run it."""
    if trt is None:
        import tensorrt as trt
    with _LOGGERS_LOCK:
        held = _LOGGERS.get(id(trt))
        if held is None or held[0] is not trt:
            held = _LOGGERS[id(trt)] = (trt, trt.Logger(trt.Logger.WARNING))
        return held[1]
