"""What this machine offers the runtime: a CUDA GPU, a usable TensorRT. Imports no inference library.

Both the backend choice (`backend="auto"`) and the engine builder ask these questions; they live here,
below both, so neither imports the other to ask. The compiled kernels answer for the GPU (their
statically linked CUDA runtime), and TensorRT is only looked for (`find_spec`), never imported.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
from types import ModuleType

__all__ = ["gpu_present", "installed", "kernels", "tensorrt_missing"]


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
