"""Device memory, pinned host memory and CUDA streams for the TensorRT runtime, behind one interface.

The memory comes from cuda-python (what NVIDIA's TensorRT samples use since 10.14, and the `tensorrt`
extra installs), pycuda (NVIDIA's classic route, in JetPack) or torch where torch is installed (its
source lives on the training side, edge_ad/training/torch_buffers.py, named here by a lazy string: the
runtime never imports torch). All hand out plain device addresses and `cudaStream_t` handles, so
TensorRT (`set_tensor_address`, `execute_async_v3`), the heatmap/DDIM kernels and CUDA-graph capture
(edge_ad._kernels) work the same on each. Copies go through edge_ad._kernels (`cudaMemcpyAsync`),
so a source only allocates: another needs only the four methods of `CudaBuffers`.

pycuda is opened on the device's primary context (`pycuda.autoprimaryctx`): the CUDA runtime that
TensorRT and edge_ad._kernels use works in that same context.

Unverified: no GPU has run this module yet; nothing here is claimed to work until it has.
"""

from __future__ import annotations

import ctypes
import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from edge_ad.runtime.devices import installed
from edge_ad.runtime.lazy import import_ref

log = logging.getLogger(__name__)

__all__ = ["CU_STREAM_NON_BLOCKING", "CudaBuffers", "CudaPythonBuffers", "PycudaBuffers", "SOURCES", "open_buffers"]


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
        """A new non-blocking CUDA stream (capturable in a CUDA graph, no implicit sync with the legacy
        default stream); returns its handle."""

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


# CUstream_flags: CU_STREAM_NON_BLOCKING, a stream that does not wait for (or hold up) the legacy default
# stream, which other libraries in the process (OpenCV, a camera SDK) may use at any time.
CU_STREAM_NON_BLOCKING = 0x1


class PycudaBuffers(CudaBuffers):
    """pycuda: `mem_alloc`, `pagelocked_empty`, non-blocking `Stream`s on the primary context.
    `cuda`: the pycuda.driver module (imported when None; tests pass a test double)."""

    kind = "pycuda"

    def __init__(self, cuda: Any = None) -> None:
        if cuda is None:
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
        s = self.cuda.Stream(flags=CU_STREAM_NON_BLOCKING)       # pycuda's default (0) is a blocking stream
        self._owned.append(s)
        return int(s.handle)

    def close(self) -> None:
        for item in reversed(self._owned):
            if hasattr(item, "free"):
                item.free()
        self._owned.clear()


class CudaPythonBuffers(CudaBuffers):
    """cuda-python (NVIDIA's `cuda.bindings.runtime`, the route of TensorRT's own samples and of the
    `tensorrt` extra): `cudaMalloc`, `cudaMallocHost`, `cudaStreamCreateWithFlags(cudaStreamNonBlocking)`.
    Unverified: no GPU has run it; written against cuda-python 12.x, whose calls return (error, value)
    tuples. `cudart`: the runtime module (imported when None; tests pass a test double)."""

    kind = "cuda-python"

    def __init__(self, cudart: Any = None) -> None:
        if cudart is None:
            try:
                from cuda.bindings import runtime as cudart        # cuda-python >= 12.6
            except ImportError:
                from cuda import cudart                             # older layout
        self.cudart = cudart
        self._device: list[int] = []
        self._host: list[int] = []
        self._streams: list = []

    def _check(self, result: tuple, call: str):
        err, *value = result
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA {call} failed: {self.cudart.cudaGetErrorString(err)[1]!r}")
        return value[0] if value else None

    def device(self, nbytes: int) -> int:
        ptr = int(self._check(self.cudart.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._device.append(ptr)
        return ptr

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = int(self._check(self.cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._host.append(ptr)
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def stream(self) -> int:
        s = self._check(self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking),
                        "cudaStreamCreateWithFlags")
        self._streams.append(s)
        return int(s)

    def close(self) -> None:
        for s in self._streams:
            self.cudart.cudaStreamDestroy(s)
        for ptr in self._device:
            self.cudart.cudaFree(ptr)
        for ptr in self._host:
            self.cudart.cudaFreeHost(ptr)
        self._streams.clear()
        self._device.clear()
        self._host.clear()


# name -> (the module that must be installed, the class or its lazy "module:attribute"); "auto" tries them
# in this order: the runtime side's own sources first; torch's allocator (edge_ad/training/torch_buffers.py,
# the training side) only where neither cuda-python nor pycuda is installed, or when named.
SOURCES: dict[str, tuple[str, type[CudaBuffers] | str]] = {
    "cuda-python": ("cuda", CudaPythonBuffers),
    "pycuda": ("pycuda", PycudaBuffers),
    "torch": ("torch", "edge_ad.training.torch_buffers:TorchBuffers"),
}


def open_buffers(kind: str = "auto") -> CudaBuffers:
    """`auto`: the first of cuda-python, pycuda, torch (installed with CUDA) that is installed and sees a
    GPU; or name one."""
    if kind == "auto":
        for name, (module, _) in SOURCES.items():
            if not installed(module):
                continue
            try:
                return _open(name)
            except RuntimeError as err:
                log.info("device memory from %s is not usable here (%s); trying the next source", name, err)
        raise RuntimeError('the TensorRT runtime needs device memory from cuda-python, pycuda or torch: '
                           'pip install "edge_ad[tensorrt]" (cuda-python), or pycuda (JetPack has it), or torch with CUDA')
    if kind not in SOURCES:
        raise ValueError(f"buffer source must be 'auto' or one of {', '.join(SOURCES)}, got {kind!r}")
    if not installed(SOURCES[kind][0]):
        raise RuntimeError(f"device memory from {kind} needs {kind} installed")
    return _open(kind)


def _open(name: str) -> CudaBuffers:
    factory = SOURCES[name][1]
    return (import_ref(factory) if isinstance(factory, str) else factory)()
