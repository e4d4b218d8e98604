"""Device memory, pinned host memory and CUDA streams for the TensorRT runtime, behind one interface.

The memory comes from pycuda (NVIDIA's classic route, in JetPack) or from torch where torch is
installed; both hand out plain device addresses and `cudaStream_t` handles, so TensorRT
(`set_tensor_address`, `execute_async_v3`), the heatmap/DDIM kernels and CUDA-graph capture
(edge_ad._kernels) work the same on either. Copies go through edge_ad._kernels (`cudaMemcpyAsync`),
so a source only allocates. Another source (cuda-python, which NVIDIA's samples use since
TensorRT 10.14) needs only the four methods of `CudaBuffers`.

pycuda is opened on the device's primary context (`pycuda.autoprimaryctx`): the CUDA runtime that
TensorRT and edge_ad._kernels use works in that same context.

Unverified: no GPU has run this module yet; nothing here is claimed to work until it has.
"""

from __future__ import annotations

import importlib.util
import logging
from abc import ABC, abstractmethod

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["CudaBuffers", "PycudaBuffers", "TorchBuffers", "open_buffers"]


class CudaBuffers(ABC):
    """Owns every allocation and stream it hands out; `close()` (or the with-block) frees them."""

    kind = "abstract"

    @abstractmethod
    def device(self, nbytes: int) -> int:
        """A device allocation of `nbytes`; returns its address."""

    @abstractmethod
    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A page-locked host array (asynchronous copies need it)."""

    @abstractmethod
    def stream(self) -> int:
        """A new non-default CUDA stream (capturable in a CUDA graph); returns its handle."""

    @abstractmethod
    def close(self) -> None:
        """Free everything handed out."""

    def htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        from edge_ad import _kernels

        _kernels.cuda_memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        from edge_ad import _kernels

        _kernels.cuda_memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream: int) -> None:
        from edge_ad import _kernels

        _kernels.cuda_stream_synchronize(stream)

    def __enter__(self) -> "CudaBuffers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PycudaBuffers(CudaBuffers):
    """pycuda: `mem_alloc`, `pagelocked_empty`, `Stream` on the primary context."""

    kind = "pycuda"

    def __init__(self) -> None:
        import pycuda.autoprimaryctx  # noqa: F401  - makes the primary context current
        import pycuda.driver as cuda

        self.cuda = cuda
        self._owned: list = []

    def device(self, nbytes: int) -> int:
        alloc = self.cuda.mem_alloc(max(int(nbytes), 1))
        self._owned.append(alloc)
        return int(alloc)

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def stream(self) -> int:
        s = self.cuda.Stream()
        self._owned.append(s)
        return int(s.handle)

    def close(self) -> None:
        for item in reversed(self._owned):
            if hasattr(item, "free"):
                item.free()
        self._owned.clear()


class TorchBuffers(CudaBuffers):
    """torch: CUDA byte tensors, pinned CPU tensors, `torch.cuda.Stream`; references are kept here."""

    kind = "torch"

    def __init__(self, device: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device; install a CUDA build of torch or use pycuda")
        self.torch = torch
        self.device_index = device
        self._owned: list = []

    def device(self, nbytes: int) -> int:
        t = self.torch.empty(max(int(nbytes), 1), dtype=self.torch.uint8, device=f"cuda:{self.device_index}")
        self._owned.append(t)
        return int(t.data_ptr())

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        t = self.torch.from_numpy(np.empty(0, dtype)).new_empty(shape).pin_memory()
        self._owned.append(t)
        return t.numpy()

    def stream(self) -> int:
        s = self.torch.cuda.Stream(device=self.device_index)
        self._owned.append(s)
        return int(s.cuda_stream)

    def close(self) -> None:
        self._owned.clear()
        self.torch.cuda.empty_cache()


def open_buffers(kind: str = "auto") -> CudaBuffers:
    """`auto`: torch when it is installed with CUDA, else pycuda; or name one."""
    if kind == "auto":
        if importlib.util.find_spec("torch") is not None:
            try:
                return TorchBuffers()
            except RuntimeError:
                log.info("torch has no CUDA device here; device memory from pycuda instead")
        kind = "pycuda"
    if kind == "torch":
        return TorchBuffers()
    if kind == "pycuda":
        if importlib.util.find_spec("pycuda") is None:
            raise RuntimeError("the TensorRT runtime needs device memory from pycuda or torch: "
                               "pip install pycuda (on a Jetson it builds from source), or install torch with CUDA")
        return PycudaBuffers()
    raise ValueError(f"buffer source must be 'auto', 'torch' or 'pycuda', got {kind!r}")
