"""One TensorRT engine on the GPU: its tensors, device buffers, and one execution context per batch size.

Unverified: TensorRT cannot be installed where this was written and no GPU has run it; the logic ran
against a test double of TensorRT (tests/test_tensorrt_double.py). Written against the TensorRT 10
Python API:

- `trt.Runtime(logger).deserialize_cuda_engine(plan)` (None on failure), with the process's one logger
  (`edge_ad.runtime.devices.tensorrt_logger`);
- I/O by name: `num_io_tensors`, `get_tensor_name(i)`, `get_tensor_mode(name)`, `get_tensor_dtype(name)`
  with `trt.nptype`, `get_tensor_shape(name)`, `get_tensor_profile_shape(name, 0)`;
- contexts: `create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)` and
  `set_device_memory(ptr, size)` (10.1; the `device_memory` attribute on 10.0) with
  `device_memory_size_v2` (10.1; `device_memory_size` before); None from the create means failure;
- `set_input_shape` and `set_tensor_address` return False on failure (an exception is raised here),
  `execute_async_v3(stream)` too.

Why one context per batch size: a CUDA graph replays the launches TensorRT made for the shapes the
context had at capture; changing that context's input shape afterwards (a multi-camera stream changes
its batch all the time) would replay stale launches. So each batch size gets its own context, whose
input shapes are set once, when it is made, and never changed. An engine's contexts share one scratch
block (USER_MANAGED): they run one at a time, on one stream, and TensorRT asks for separate
optimization profiles only for contexts in concurrent use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_ad.runtime.buffers import CudaBuffers
from edge_ad.runtime.devices import tensorrt_logger

__all__ = ["KERNEL_DTYPES", "TrtEngine", "check", "kernel_dtype", "new_context", "numpy_dtype"]

# numpy dtype -> the name the heatmap and DDIM kernels take for a device buffer's element type
KERNEL_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


def check(ok: Any, what: str) -> None:
    """Raise when a TensorRT call that reports failure by returning False did so."""
    if not ok:
        raise RuntimeError(f"TensorRT {what} failed; the TensorRT log above says why")


def numpy_dtype(trt: Any, dtype: Any, tensor: str) -> np.dtype:
    """The NumPy type of a tensor's TensorRT type, or an error that says which tensor has none."""
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError, ValueError) as err:
        raise RuntimeError(f"tensor {tensor!r} is TensorRT {dtype}, which has no NumPy type; edge_ad engines "
                           "take float32/float16/uint8 I/O: re-export the bundle and rebuild the engine") from err


def kernel_dtype(dtype: np.dtype, what: str) -> str:
    """The kernels' name for a float32/float16 device buffer; other types are refused with what to do."""
    name = KERNEL_DTYPES.get(np.dtype(dtype))
    if name is None:
        raise RuntimeError(f"{what} is {np.dtype(dtype)}; the heatmap and DDIM kernels take float32 or float16: "
                           "re-export the bundle (its FP16 graph keeps float I/O) and rebuild the engine")
    return name


def new_context(trt: Any, engine: Any, memory: int, memory_bytes: int) -> Any:
    """An execution context that uses the caller's scratch block (`memory`, `memory_bytes`) instead of
    its own, so several contexts of one engine share it. Unverified on a GPU."""
    strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
    if strategy is not None:
        context = engine.create_execution_context(strategy.USER_MANAGED)
    else:                                               # TensorRT 8.x
        context = engine.create_execution_context_without_device_memory()
    if context is None:
        raise RuntimeError("TensorRT could not create an execution context (GPU memory?); the TensorRT log "
                           "above says why: close other GPU programs or build the engine with a smaller --batch")
    if hasattr(context, "set_device_memory"):
        context.set_device_memory(memory, memory_bytes)
    else:                                               # TensorRT 10.0 and before
        context.device_memory = memory
    return context


def scratch_bytes(engine: Any) -> int:
    """The scratch memory one context needs, at most, over every profile and shape."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(engine.device_memory_size if size is None else size)


class TrtEngine:
    """A deserialized engine, device buffers for its largest batch, and a context per batch size.

    `set_batch(n)` makes the batch-n context current (made the first time, its shapes set once);
    `bind(name, ptr)` points a tensor of every context, present and future, at `ptr`."""

    def __init__(self, engine: Any, buffers: CudaBuffers, stream: int, trt: Any, runtime: Any = None) -> None:
        self.trt, self.engine, self.buffers, self.stream = trt, engine, buffers, stream
        self._runtime = runtime                 # must outlive the engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: numpy_dtype(trt, engine.get_tensor_dtype(n), n) for n in names}
        self.shapes = {n: tuple(engine.get_tensor_shape(n)) for n in names}
        batched = [n for n in self.inputs if self.shapes[n][:1] == (-1,)]
        self.min_batch, self.max_batch = 1, 1
        if batched:
            low, _, high = engine.get_tensor_profile_shape(batched[0], 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.address = {n: buffers.device(self._nbytes(n, self.max_batch)) for n in names}
        self.scratch_bytes = scratch_bytes(engine)
        self.scratch = buffers.device(self.scratch_bytes)
        self.contexts: dict[int, Any] = {}
        self.context: Any = None
        self.batch = 0

    @classmethod
    def load(cls, plan: bytes, buffers: CudaBuffers, stream: int | None = None, trt: Any = None) -> "TrtEngine":
        """Deserialize `plan` (the process's one logger; a runtime per engine, kept alive with it)."""
        if trt is None:
            import tensorrt as trt
        runtime = trt.Runtime(tensorrt_logger(trt))
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise RuntimeError(f"TensorRT {trt.__version__} could not deserialize the engine: it was built for "
                               "another TensorRT version or GPU; rebuild it with `edge-ad export BUNDLE --engine`")
        return cls(engine, buffers, buffers.stream() if stream is None else stream, trt, runtime)

    def _nbytes(self, name: str, batch: int) -> int:
        dims = [batch if d == -1 and i == 0 else d for i, d in enumerate(self.shapes[name])]
        if any(d < 0 for d in dims):
            raise RuntimeError(f"tensor {name} has dynamic dimensions besides the batch ({self.shapes[name]}); "
                               "edge_ad exports only the batch axis as dynamic: re-export the bundle")
        return int(np.prod(dims)) * self.dtypes[name].itemsize

    def _make_context(self, n: int) -> Any:
        """The batch-n context: shared scratch, input shapes set once, every tensor address set."""
        context = new_context(self.trt, self.engine, self.scratch, self.scratch_bytes)
        for name in self.inputs:
            if self.shapes[name][:1] == (-1,):
                shape = (n, *self.shapes[name][1:])
                check(context.set_input_shape(name, shape), f"set_input_shape({name!r}, {shape})")
        for name, ptr in self.address.items():
            check(context.set_tensor_address(name, ptr), f"set_tensor_address({name!r})")
        return context

    def set_batch(self, n: int) -> None:
        """Make the batch-n context current (no shape of any context changes)."""
        if not self.min_batch <= n <= self.max_batch:
            raise ValueError(f"batch {n} is outside the engine's profile {self.min_batch}..{self.max_batch}; "
                             f"rebuild with `edge-ad export BUNDLE --engine --batch 1,1,{n}`")
        if n not in self.contexts:
            self.contexts[n] = self._make_context(n)
        self.context, self.batch = self.contexts[n], n

    def bind(self, name: str, ptr: int) -> None:
        """Point tensor `name` at `ptr` in every context, and in those made later."""
        self.address[name] = ptr
        for context in self.contexts.values():
            check(context.set_tensor_address(name, ptr), f"set_tensor_address({name!r})")

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape at the current batch size."""
        return tuple(self._current().get_tensor_shape(name))

    def _current(self) -> Any:
        if self.context is None:
            raise RuntimeError("no batch size chosen: call set_batch(n) before running the engine")
        return self.context

    def enqueue(self) -> None:
        """Queue the current context's inference on the engine's stream."""
        check(self._current().execute_async_v3(self.stream), "execute_async_v3")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Host arrays in, host arrays out (synchronous), in the engine's own output types."""
        n = next(iter(feeds.values())).shape[0]
        self.set_batch(n)
        for name, value in feeds.items():
            self.buffers.htod(self.address[name], np.ascontiguousarray(value, dtype=self.dtypes[name]), self.stream)
        self.enqueue()
        out = [np.empty(self.shape(name), self.dtypes[name]) for name in self.outputs]
        for name, host in zip(self.outputs, out):
            self.buffers.dtoh(host, self.address[name], self.stream)
        self.buffers.synchronize(self.stream)
        return out

    def close(self) -> None:
        """Drop the contexts, then the engine, then the runtime (TensorRT's order of destruction)."""
        self.contexts.clear()
        self.context = None
        self.engine = None
        self._runtime = None
