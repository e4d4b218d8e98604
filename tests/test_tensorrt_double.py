"""The TensorRT backend's decisions, run on the CPU against test doubles of TensorRT and of the CUDA calls.

No GPU and no TensorRT exist where these run, so three test doubles stand in for them, each named so:
`TrtDouble` (the tensorrt module: runtime, engine, execution contexts, whose enqueue computes a small
known function of its inputs at the shapes set on the context), `CudaDouble` (device memory, streams,
copies and CUDA-graph capture: the CUDA helpers of edge_ad._kernels and a CudaBuffers source; a capture
queues work, a launch runs it, as CUDA does) and `PycudaDouble`/`CudartDouble` (the stream calls of
pycuda and cuda-python). The heat map and the DDIM step inside `CudaDouble` are the real CPU kernels.
What these tests show is the logic: which context runs which batch, when a graph is captured, replayed
or given up, which return values are checked, which types are read. The real TensorRT and CUDA calls run
only in the GPU check (tests/test_backends.py's tensorrt test).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable

import numpy as np
import pytest

from edge_ad.postprocess import HeatmapSpec, ddim_step
from edge_ad.runtime.buffers import CU_STREAM_NON_BLOCKING, CudaBuffers, CudaPythonBuffers, PycudaBuffers
from edge_ad.runtime.cuda_graphs import CudaGraphs
from edge_ad.runtime.ddim_plan import DdimPlan
from edge_ad.runtime.devices import tensorrt_logger
from edge_ad.runtime.tensorrt import TrtBackend, TrtDdimBackend
from edge_ad.runtime.trt_engine import TrtEngine, kernel_dtype

SPEC = HeatmapSpec(output_size=(8, 8), smooth="gaussian", sigma=1.0)


class CudaDouble(CudaBuffers):
    """Test double of the GPU: device memory as byte arrays, ops queued per stream while it is captured
    (run at once otherwise), graphs that run their queued ops on launch. `fail_end_capture` makes the end
    of a capture fail (instantiation refused); an invalidated capture (`invalidate`) fails there too."""

    kind = "cuda-double"

    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self.capturing: dict[int, list[Callable[[], None]]] = {}
        self.invalid: set[int] = set()
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.calls: list[tuple] = []
        self.destroyed: list[int] = []
        self.fail_end_capture = False
        self.heatmap_dtypes: list[str] = []
        self.heatmap_maps: list[int] = []
        self._ids = itertools.count(0x1000, 0x1000)

    # CudaBuffers
    def device(self, nbytes: int) -> int:
        ptr = next(self._ids)
        self.memory[ptr] = bytearray(max(int(nbytes), 1))
        return ptr

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype)

    def stream(self) -> int:
        return next(self._ids)

    def close(self) -> None:
        self.memory.clear()

    def submit(self, stream: int, op: Callable[[], None]) -> None:
        if stream in self.capturing:
            self.capturing[stream].append(op)
        else:
            op()

    def read(self, ptr: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer(self.memory[ptr], dtype, count).reshape(shape).copy()

    def write(self, ptr: int, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value).tobytes()
        self.memory[ptr][: len(data)] = data

    def htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.submit(stream, lambda: self.write(dst, src))       # reads the pinned array when it runs

    def dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        self.submit(stream, lambda: dst.__setitem__(..., self.read(src, dst.dtype, dst.shape)))

    def synchronize(self, stream: int) -> None:
        if stream in self.capturing:
            self.invalid.add(stream)
            raise RuntimeError("CUDA error in cudaStreamSynchronize: operation not permitted when stream is capturing")

    # the CUDA-graph helpers of edge_ad._kernels
    def cuda_graph_begin_capture(self, stream: int) -> None:
        self.calls.append(("begin", stream))
        self.capturing[stream] = []

    def cuda_graph_end_capture(self, stream: int) -> int:
        self.calls.append(("end", stream))
        ops = self.capturing.pop(stream)
        if stream in self.invalid or self.fail_end_capture:
            self.invalid.discard(stream)
            raise RuntimeError("CUDA error in cudaStreamEndCapture: operation failed due to a previous error "
                               "during capture")
        handle = next(self._ids)
        self.graphs[handle] = ops
        return handle

    def cuda_graph_launch(self, graph: int, stream: int) -> None:
        self.calls.append(("launch", graph))
        for op in self.graphs[graph]:
            op()

    def cuda_graph_destroy(self, graph: int) -> None:
        self.destroyed.append(graph)
        del self.graphs[graph]

    # the heatmap and DDIM kernels of edge_ad._kernels, computed by the real CPU kernels
    def heatmap_cuda_workspace_bytes(self, n: int, h: int, w: int, out_h: int, out_w: int, **_: Any) -> int:
        return 64

    def heatmap_cuda(self, raw, dtype, n, h, w, out_h, out_w, maps, scores, masks, workspace, workspace_bytes,
                     stream, *, smooth, sigma, window, align_corners, score_from_raw) -> None:
        self.heatmap_dtypes.append(dtype)
        self.heatmap_maps.append(maps)
        spec = HeatmapSpec((out_h, out_w), smooth, sigma, window or None, align_corners,
                           "raw" if score_from_raw else "smoothed")

        def op() -> None:
            got_maps, got_scores = spec.apply(self.read(raw, dtype, (n, 1, h, w)).astype(np.float32))
            if maps:                                      # 0: scores only, as the kernel does
                self.write(maps, got_maps.astype(np.float32))
            self.write(scores, got_scores.astype(np.float32))
        self.submit(stream, op)

    def ddim_step_cuda(self, x_t, eps, out, count, dtype, a_t, a_prev, *, clamp, stream) -> None:
        def op() -> None:
            z = self.read(x_t, dtype, (count,)).astype(np.float32)
            e = self.read(eps, dtype, (count,)).astype(np.float32)
            self.write(out, ddim_step(z, e, a_t, a_prev, clamp=clamp).astype(dtype))
        self.submit(stream, op)


class ContextDouble:
    """Test double of an IExecutionContext: input shapes and addresses as set, every call recorded;
    `execute_async_v3` queues the engine's function at the shapes and addresses of that moment."""

    def __init__(self, engine: "EngineDouble", strategy: Any) -> None:
        self.engine, self.strategy = engine, strategy
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.shape_calls: list[tuple[str, tuple[int, ...]]] = []
        self.address: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None
        self.enqueued = 0

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.memory = (ptr, size)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape_calls.append((name, tuple(shape)))
        low, _, high = self.engine.profile
        if self.engine.fail.get("set_input_shape") or not low <= shape[0] <= high:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if self.engine.fail.get("set_tensor_address"):
            return False
        self.address[name] = ptr
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = next(iter(self.shapes.values()))[0]
        return tuple(batch if d == -1 else d for d in self.engine.tensors[name][2])

    def execute_async_v3(self, stream: int) -> bool:
        cuda = self.engine.cuda
        if self.engine.fail.get("enqueue_in_capture") and stream in cuda.capturing:
            cuda.invalid.add(stream)              # TensorRT made a call that a capture does not allow
            return False
        shapes = {n: self.get_tensor_shape(n) for n in self.engine.tensors}
        address = dict(self.address)
        self.enqueued += 1

        def op() -> None:
            inputs = {n: cuda.read(address[n], np.dtype(TrtDouble.NPTYPE[t[1]]), shapes[n])
                      for n, t in self.engine.tensors.items() if t[0] == "INPUT"}
            for name, value in self.engine.compute(inputs).items():
                cuda.write(address[name], value.astype(TrtDouble.NPTYPE[self.engine.tensors[name][1]]))
        cuda.submit(stream, op)
        return True


class EngineDouble:
    """Test double of an ICudaEngine: `tensors` name -> (mode, TensorRT type, shape with -1 for the
    batch), one profile, and the function its enqueue computes."""

    device_memory_size_v2 = 4096

    def __init__(self, cuda: CudaDouble, tensors: dict[str, tuple[str, str, tuple[int, ...]]],
                 compute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], profile=(1, 2, 8)) -> None:
        self.cuda, self.tensors, self.compute, self.profile = cuda, tensors, compute, profile
        self.contexts: list[ContextDouble] = []
        self.fail: dict[str, bool] = {}

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, name: str) -> str:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> str:
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        rest = self.tensors[name][2][1:]
        return [(b, *rest) for b in self.profile]

    def create_execution_context(self, strategy: Any) -> ContextDouble:
        context = ContextDouble(self, strategy)
        self.contexts.append(context)
        return context


class TrtDouble:
    """Test double of the tensorrt module: a plan is the key of an `EngineDouble` given to `add`."""

    __version__ = "10.3.0 (test double)"
    NPTYPE = {"FLOAT": np.float32, "HALF": np.float16, "UINT8": np.uint8, "INT32": np.int32}

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class ExecutionContextAllocationStrategy:
        STATIC, USER_MANAGED = "STATIC", "USER_MANAGED"

    def __init__(self) -> None:
        self.engines: dict[bytes, EngineDouble] = {}
        self.loggers: list[Any] = []
        double = self

        class Logger:
            WARNING = "WARNING"

            def __init__(self, level: str) -> None:
                double.loggers.append(self)

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, plan: bytes) -> EngineDouble | None:
                return double.engines.get(plan)

        self.Logger, self.Runtime = Logger, Runtime

    def nptype(self, dtype: str) -> type:
        if dtype not in self.NPTYPE:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return self.NPTYPE[dtype]

    def add(self, plan: bytes, engine: EngineDouble) -> bytes:
        self.engines[plan] = engine
        return plan


def _model(cuda: CudaDouble, raw_type: str = "FLOAT") -> EngineDouble:
    """A single-graph model: uint8 N x 8 x 8 x 3 images -> raw N x 1 x 4 x 4 (a known function of them)."""
    def compute(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        img = x["images"].astype(np.float32) / 255.0
        return {"raw": img[:, ::2, ::2, 0][:, None] + img[:, 1::2, 1::2, 1][:, None]}
    return EngineDouble(cuda, {"images": ("INPUT", "UINT8", (-1, 8, 8, 3)),
                               "raw": ("OUTPUT", raw_type, (-1, 1, 4, 4))}, compute)


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _expected(frames: np.ndarray, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    img = frames.astype(np.float32) / 255.0
    raw = (img[:, ::2, ::2, 0][:, None] + img[:, 1::2, 1::2, 1][:, None]).astype(dtype).astype(np.float32)
    return SPEC.apply(raw)


def _backend(cuda_graph: bool = True, raw_type: str = "FLOAT") -> tuple[TrtBackend, CudaDouble, EngineDouble]:
    cuda, trt = CudaDouble(), TrtDouble()
    engine = _model(cuda, raw_type)
    backend = TrtBackend(trt.add(b"model plan", engine), SPEC, buffers=cuda, cuda_graph=cuda_graph, trt=trt,
                         kernels=cuda)
    return backend, cuda, engine


def _count(cuda: CudaDouble, what: str) -> int:
    return sum(1 for call in cuda.calls if call[0] == what)


# item 3: one context per batch size, its shapes never changed; a graph per (batch, maps)

def test_a_varying_batch_gets_one_context_per_size_whose_shape_never_changes() -> None:
    backend, cuda, engine = _backend()
    for seed, n in enumerate((1, 4, 1, 4, 2, 1, 2)):
        frames = _frames(n, seed)
        maps, scores = backend.infer_heatmap(frames)
        want_maps, want_scores = _expected(frames)
        assert np.allclose(scores, want_scores, atol=1e-5) and np.allclose(maps, want_maps, atol=1e-5)
    assert sorted(backend.engine.contexts) == [1, 2, 4] and len(engine.contexts) == 3
    for n, context in backend.engine.contexts.items():
        assert context.shape_calls == [("images", (n, 8, 8, 3))]         # set once, at creation
        assert context.strategy == "USER_MANAGED"
        assert context.memory == (backend.engine.scratch, EngineDouble.device_memory_size_v2)
        assert context.address == backend.engine.address
    assert set(backend.graphs.graphs) == {(1, True), (4, True), (2, True)}
    assert _count(cuda, "begin") == 3 and _count(cuda, "launch") == 7   # captured once each, replayed after
    backend.close()
    assert len(cuda.destroyed) == 3 and not cuda.graphs


def test_maps_or_not_are_two_graphs_of_one_context() -> None:
    backend, cuda, _ = _backend()
    frames = _frames(3, 0)
    maps, scores = backend.infer_heatmap(frames, maps=False)
    assert maps is None and np.allclose(scores, _expected(frames)[1], atol=1e-5)
    assert set(cuda.heatmap_maps) == {0}                   # scores only: no full-size map is written
    backend.infer_heatmap(frames, maps=True)
    assert cuda.heatmap_maps[-1] == backend.maps
    assert set(backend.graphs.graphs) == {(3, False), (3, True)} and list(backend.engine.contexts) == [3]


def test_without_graphs_nothing_is_captured_and_contexts_are_still_per_batch() -> None:
    backend, cuda, _ = _backend(cuda_graph=False)
    for seed, n in enumerate((2, 5, 2)):
        frames = _frames(n, seed)
        assert np.allclose(backend.infer_heatmap(frames)[1], _expected(frames)[1], atol=1e-5)
    assert not cuda.calls and sorted(backend.engine.contexts) == [2, 5]


def test_ddim_backend_wires_every_context_and_captures_per_batch() -> None:
    cuda, trt = CudaDouble(), TrtDouble()
    pipeline = dict(steps=3, timesteps=1000, beta_start=1e-4, beta_end=0.02, seed=0, latent_shape=[4])
    plan = DdimPlan.from_pipeline(pipeline)
    img = ("INPUT", "UINT8", (-1, 8, 8, 3))
    vec = (-1, 4)

    def encoder(x):
        return {"cond": x["images"].astype(np.float32).mean(axis=(1, 2))[:, :3].repeat(2, 1)[:, :4] / 255.0}

    def denoiser(x):
        return {"eps": 0.5 * x["latent"] - 0.1 * x["cond"] + 0.001 * x["timestep"][:, None]}

    def decoder(x):
        return {"recon": x["latent"] + x["cond"], "inter": x["latent"] * 2}

    def segmentation(x):
        base = x["images"][:, ::2, ::2, 0].astype(np.float32) / 255.0
        return {"raw": (base + x["recon"][:, :1, None] - x["inter"][:, 1:2, None])[:, None]}

    engines = {
        "encoder": EngineDouble(cuda, {"images": img, "cond": ("OUTPUT", "FLOAT", vec)}, encoder),
        "denoiser": EngineDouble(cuda, {"latent": ("INPUT", "FLOAT", vec), "timestep": ("INPUT", "FLOAT", (-1,)),
                                        "cond": ("INPUT", "FLOAT", vec), "eps": ("OUTPUT", "FLOAT", vec)}, denoiser),
        "decoder": EngineDouble(cuda, {"latent": ("INPUT", "FLOAT", vec), "cond": ("INPUT", "FLOAT", vec),
                                       "recon": ("OUTPUT", "FLOAT", vec), "inter": ("OUTPUT", "FLOAT", vec)}, decoder),
        "segmentation": EngineDouble(cuda, {"images": img, "recon": ("INPUT", "FLOAT", vec),
                                            "inter": ("INPUT", "FLOAT", vec),
                                            "raw": ("OUTPUT", "FLOAT", (-1, 1, 4, 4))}, segmentation)}
    plans = {part: trt.add(part.encode(), engine) for part, engine in engines.items()}
    backend = TrtDdimBackend(plans, plan, SPEC, buffers=cuda, trt=trt, kernels=cuda)

    def host(frames: np.ndarray) -> np.ndarray:
        cond = encoder({"images": frames})["cond"]
        z = plan.sample_host(cond, lambda z, c, t: denoiser({"latent": z, "cond": c, "timestep": t})["eps"])
        dec = decoder({"latent": z, "cond": cond})
        return segmentation({"images": frames, **dec})["raw"]

    for seed, n in enumerate((2, 3, 2, 3)):
        frames = _frames(n, seed)
        raw = host(frames)
        assert np.allclose(backend.infer(frames), raw, atol=1e-5)
        assert np.allclose(backend.infer_heatmap(frames)[1], SPEC.apply(raw)[1], atol=1e-5)
    for engine in (backend.enc, backend.den, backend.dec, backend.seg):
        assert sorted(engine.contexts) == [2, 3]
        for n, context in engine.contexts.items():
            assert all(shape[0] == n for _, shape in context.shape_calls)
            assert len(context.shape_calls) == len({name for name, _ in context.shape_calls})
    assert backend.seg.contexts[3].address["recon"] == backend.dec.address["recon"]
    assert set(backend.graphs.graphs) == {(2, True), (3, True)}
    backend.close()


# item 1: a failed capture is discarded, logged, and the backend runs plainly from then on

def test_a_capture_refused_by_tensorrt_is_discarded_and_runs_plain(caplog) -> None:
    backend, cuda, engine = _backend()
    engine.fail["enqueue_in_capture"] = True
    frames = _frames(2, 0)
    with caplog.at_level(logging.WARNING, logger="edge_ad.runtime.cuda_graphs"):
        maps, scores = backend.infer_heatmap(frames)
    assert np.allclose(scores, _expected(frames)[1], atol=1e-5)
    assert "execute_async_v3 failed" in caplog.text                  # the original error, not end-capture's
    assert not backend.graphs.graphs and not backend.graphs.enabled and not cuda.capturing
    assert [c[0] for c in cuda.calls] == ["begin", "end"]            # the capture was ended
    for seed, n in enumerate((2, 3), 1):                               # then plain: no capture, no launch
        frames = _frames(n, seed)
        assert np.allclose(backend.infer_heatmap(frames)[1], _expected(frames)[1], atol=1e-5)
    assert [c[0] for c in cuda.calls] == ["begin", "end"]


def test_a_capture_whose_end_fails_keeps_no_graph(caplog) -> None:
    backend, cuda, _ = _backend()
    cuda.fail_end_capture = True
    frames = _frames(4, 0)
    with caplog.at_level(logging.WARNING, logger="edge_ad.runtime.cuda_graphs"):
        assert np.allclose(backend.infer_heatmap(frames)[1], _expected(frames)[1], atol=1e-5)
    assert "cudaStreamEndCapture" in caplog.text
    assert not backend.graphs.graphs and _count(cuda, "launch") == 0
    backend.infer_heatmap(frames)
    assert _count(cuda, "begin") == 1


def test_a_python_error_mid_capture_ends_it_and_destroys_what_it_made() -> None:
    cuda = CudaDouble()
    graphs = CudaGraphs(cuda, cuda.synchronize)
    runs = []

    def work() -> None:
        runs.append(bool(cuda.capturing))
        if cuda.capturing:
            raise ValueError("bad argument while capturing")
    graphs.run("k", 7, work)
    assert runs == [False, True] and not cuda.capturing
    assert len(cuda.destroyed) == 1 and not cuda.graphs and not graphs.graphs
    assert "ValueError: bad argument while capturing" in graphs.off_reason


def test_an_interrupt_mid_capture_ends_the_capture_and_propagates() -> None:
    cuda = CudaDouble()
    graphs = CudaGraphs(cuda, cuda.synchronize)

    def work() -> None:
        if cuda.capturing:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        graphs.run("k", 7, work)
    assert not cuda.capturing and not graphs.graphs


def test_a_capture_that_cannot_begin_runs_plain() -> None:
    cuda = CudaDouble()

    def refuse(stream: int) -> None:
        raise RuntimeError("CUDA error in cudaStreamBeginCapture (the default stream cannot be captured)")
    cuda.cuda_graph_begin_capture = refuse
    graphs, runs = CudaGraphs(cuda, cuda.synchronize), []
    graphs.run("k", 0, lambda: runs.append(1))
    graphs.run("k", 0, lambda: runs.append(2))
    assert runs == [1, 2] and not graphs.enabled and not graphs.graphs


# item 4: return values of set_input_shape, set_tensor_address, execute_async_v3

@pytest.mark.parametrize("call", ["set_input_shape", "set_tensor_address"])
def test_a_refused_shape_or_address_raises(call: str) -> None:
    backend, _, engine = _backend()
    engine.fail[call] = True
    with pytest.raises(RuntimeError, match=f"TensorRT {call}\\(.*failed"):
        backend.infer_heatmap(_frames(2, 0))


def test_bind_checks_every_existing_context() -> None:
    cuda, trt = CudaDouble(), TrtDouble()
    engine = _model(cuda)
    e = TrtEngine.load(trt.add(b"p", engine), cuda, trt=trt)
    e.set_batch(1)
    e.set_batch(2)
    ptr = cuda.device(1024)
    e.bind("images", ptr)
    assert all(c.address["images"] == ptr for c in engine.contexts)
    engine.fail["set_tensor_address"] = True
    with pytest.raises(RuntimeError, match="set_tensor_address"):
        e.bind("images", ptr)


def test_an_out_of_profile_batch_and_a_failed_enqueue_raise() -> None:
    backend, _, engine = _backend()
    with pytest.raises(ValueError, match="outside the engine's profile 1..8"):
        backend.infer_heatmap(_frames(9, 0))
    engine.execute_async_v3 = None
    with pytest.raises(RuntimeError, match="no batch size chosen"):
        TrtEngine(engine, backend.buffers, 1, TrtDouble()).enqueue()
    backend.engine.set_batch(1)
    backend.engine.context.execute_async_v3 = lambda stream: False
    with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
        backend.engine.enqueue()


# item 5: output types from the engine

def test_a_float16_raw_map_is_read_as_float16_and_returned_as_float32() -> None:
    backend, cuda, _ = _backend(raw_type="HALF")
    frames = _frames(2, 0)
    raw = backend.infer(frames)
    assert raw.dtype == np.float32 and backend.engine.dtypes["raw"] == np.float16
    img = frames.astype(np.float32) / 255.0
    want = (img[:, ::2, ::2, 0][:, None] + img[:, 1::2, 1::2, 1][:, None]).astype(np.float16).astype(np.float32)
    assert np.array_equal(raw, want)
    assert np.allclose(backend.infer_heatmap(frames)[1], _expected(frames, np.float16)[1], atol=1e-4)
    assert set(cuda.heatmap_dtypes) == {"float16"}


def test_output_types_without_a_numpy_or_kernel_type_are_refused() -> None:
    with pytest.raises(RuntimeError, match="'raw' is TensorRT BF16, which has no NumPy type"):
        _backend(raw_type="BF16")
    with pytest.raises(RuntimeError, match="the raw map 'raw' is int32; the heatmap and DDIM kernels take"):
        _backend(raw_type="INT32")
    assert kernel_dtype(np.dtype(np.float16), "x") == "float16"


# item 6: non-blocking streams

def test_pycuda_and_cuda_python_streams_are_non_blocking() -> None:
    class PycudaDouble:
        """Test double of pycuda.driver: records the flags of each Stream."""
        flags: list[int] = []

        class Stream:
            def __init__(self, flags: int = 0) -> None:
                PycudaDouble.flags.append(flags)
                self.handle = 0xABC

    class CudartDouble:
        """Test double of cuda-python's runtime: records the flags of each stream."""
        cudaStreamNonBlocking = 0x1
        flags: list[int] = []

        class cudaError_t:
            cudaSuccess = 0

        def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, int]:
            self.flags.append(flags)
            return 0, 0xDEF

    assert PycudaBuffers(cuda=PycudaDouble).stream() == 0xABC
    assert PycudaDouble.flags == [CU_STREAM_NON_BLOCKING] == [1]
    cudart = CudartDouble()
    assert CudaPythonBuffers(cudart=cudart).stream() == 0xDEF and cudart.flags == [1]


# item 7 (part): one TensorRT logger per process

def test_one_logger_for_every_engine_of_the_process() -> None:
    cuda, trt = CudaDouble(), TrtDouble()
    plans = [trt.add(f"plan {i}".encode(), _model(cuda)) for i in range(3)]
    engines = [TrtEngine.load(p, cuda, trt=trt) for p in plans]
    assert len(trt.loggers) == 1 and all(e._runtime.logger is trt.loggers[0] for e in engines)
    assert tensorrt_logger(trt) is trt.loggers[0]
    assert tensorrt_logger(TrtDouble()) is not trt.loggers[0]            # another module, another logger
    with pytest.raises(RuntimeError, match="could not deserialize"):
        TrtEngine.load(b"unknown plan", cuda, trt=trt)
