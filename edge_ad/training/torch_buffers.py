"""Device memory for the TensorRT runtime from torch: CUDA byte tensors, pinned CPU tensors, torch streams.

One source of edge_ad.runtime.buffers' `CudaBuffers`, on the training side of the torch line: the
runtime names it by the lazy string "edge_ad.training.torch_buffers:TorchBuffers" and imports it only
where torch is installed. Unverified: no GPU has run it with TensorRT yet.
"""

from __future__ import annotations

import numpy as np

from edge_ad.runtime.buffers import CudaBuffers

__all__ = ["TorchBuffers"]


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
