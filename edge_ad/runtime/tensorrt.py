"""TensorRT runtime: a bundle's FP16 engine on the GPU, post-processing on the device.

Unverified: TensorRT cannot be installed on the machines this was written on and no GPU has run it.
It is written against the TensorRT 10 Python API (the Jetson/JetPack 6 line; 11.x keeps these calls):

- `trt.Runtime(logger).deserialize_cuda_engine(plan)`, `ICudaEngine.create_execution_context()`;
- I/O by name: `num_io_tensors`, `get_tensor_name(i)`, `get_tensor_mode(name)` (`TensorIOMode.INPUT`),
  `get_tensor_dtype(name)` with `trt.nptype`, `get_tensor_shape(name)`,
  `get_tensor_profile_shape(name, 0)` for the batch range;
- `IExecutionContext.set_input_shape`, `set_tensor_address(name, ptr)`, `execute_async_v3(stream)`.

Per frame batch: the uint8 frames are copied into a pinned host buffer and from there to the
engine's input on one CUDA stream; the engine runs; the `heatmap` kernel turns the raw map into
full-size maps and scores in device memory; only the scores (and the maps, when asked for) come back.
With `cuda_graph=True` that whole sequence (copy in, enqueue, heatmap, copy out) is captured once per
batch size as a CUDA graph, after one plain run, and replayed: addresses and shapes are fixed, which
is why every frame goes through the same pinned and device buffers.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_ad.bundle import Bundle, BundleError
from edge_ad.runtime.backend import BaseBackend, LoadOptions
from edge_ad.runtime.buffers import CudaBuffers, open_buffers
from edge_ad.runtime.ddim_plan import DdimPlan
from edge_ad.runtime.devices import tensorrt_missing
from edge_ad.runtime.engine_builder import build_and_store
from edge_ad.runtime.engines import DeviceKey, EngineSpec, describe_engines, find_engine
from edge_ad.postprocess import HeatmapSpec
from edge_ad.runtime.inputs import seeded_inputs

log = logging.getLogger(__name__)

__all__ = ["TrtBackend", "TrtDdimBackend", "TrtEngine", "load_plan", "open_tensorrt", "tensorrt_missing"]


class TrtEngine:
    """One deserialized engine, its execution context and device buffers for its largest batch."""

    def __init__(self, plan: bytes, buffers: CudaBuffers, stream: int | None = None) -> None:
        import tensorrt as trt

        self.trt = trt
        self.buffers = buffers
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT {trt.__version__} could not deserialize the engine: it was built for "
                               "another TensorRT version or GPU; rebuild it with `edge-ad export BUNDLE --engine`")
        self.context = self.engine.create_execution_context()
        self.stream = buffers.stream() if stream is None else stream
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in names}
        batched = [n for n in self.inputs if self.shapes[n][0] == -1]
        self.min_batch, self.max_batch = 1, 1
        if batched:
            low, _, high = self.engine.get_tensor_profile_shape(batched[0], 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.address = {n: buffers.device(self._nbytes(n, self.max_batch)) for n in names}
        for name, ptr in self.address.items():
            self.context.set_tensor_address(name, ptr)
        self.batch = 0

    def _nbytes(self, name: str, batch: int) -> int:
        dims = [batch if d == -1 and i == 0 else d for i, d in enumerate(self.shapes[name])]
        if any(d < 0 for d in dims):
            raise RuntimeError(f"tensor {name} has dynamic dimensions besides the batch ({self.shapes[name]}); "
                               "edge_ad exports only the batch axis as dynamic: re-export the bundle")
        return int(np.prod(dims)) * self.dtypes[name].itemsize

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape at the current batch size."""
        return tuple(self.context.get_tensor_shape(name))

    def set_batch(self, n: int) -> None:
        if not self.min_batch <= n <= self.max_batch:
            raise ValueError(f"batch {n} is outside the engine's profile {self.min_batch}..{self.max_batch}; "
                             f"rebuild with `edge-ad export BUNDLE --engine --batch 1,1,{n}`")
        if n != self.batch:
            for name in self.inputs:
                if self.shapes[name][0] == -1:
                    self.context.set_input_shape(name, (n, *self.shapes[name][1:]))
            self.batch = n

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Host arrays in, host arrays out (synchronous): the simple path, and the diffusion parts' Run."""
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
        self.context = None
        self.engine = None


class _DeviceHeatmap(BaseBackend):
    """The device side shared by the TensorRT backends: heatmap buffers, the copy out, CUDA graphs.

    Subclasses set `self.engine` (whose stream everything runs on), `self.raw` (address of the raw
    map), `self.h`, `self.w`, `self.host_in` and implement `_forward(n)` (copy in + engines)."""

    name = "tensorrt"
    device_heatmap = True

    def _setup_heatmap(self, spec: HeatmapSpec, max_batch: int) -> None:
        from edge_ad import _kernels

        self.k = _kernels
        self.spec = spec
        self.graphs: dict[tuple[int, bool], int] = {}
        self.out_h, self.out_w = spec.output_size
        self.host_maps = self.buffers.pinned((max_batch, self.out_h, self.out_w), np.float32)
        self.host_scores = self.buffers.pinned((max_batch,), np.float32)
        self.maps = self.buffers.device(self.host_maps.nbytes)
        self.scores = self.buffers.device(self.host_scores.nbytes)
        self.workspace = self.buffers.device(self._kernel_args(max_batch)["workspace_bytes"])

    def _kernel_args(self, n: int) -> dict[str, Any]:
        s = self.spec
        common = dict(smooth=s.smooth, sigma=float(s.sigma), window=int(s.window or 0),
                      align_corners=bool(s.align_corners))
        ws = self.k.heatmap_cuda_workspace_bytes(n, self.h, self.w, self.out_h, self.out_w, **common)
        return {"workspace_bytes": ws, **common, "score_from_raw": s.score_from == "raw"}

    def _forward(self, n: int) -> None:
        raise NotImplementedError

    def _sequence(self, n: int, with_maps: bool) -> None:
        """Copy in, the engines, heatmap, copy out: all asynchronous on the engine's stream."""
        stream = self.engine.stream
        self._forward(n)
        args = self._kernel_args(n)
        ws = args.pop("workspace_bytes")
        self.k.heatmap_cuda(self.raw, "float32", n, self.h, self.w, self.out_h, self.out_w, self.maps, self.scores,
                            0, self.workspace, ws, stream, **args)
        self.buffers.dtoh(self.host_scores[:n], self.scores, stream)
        if with_maps:
            self.buffers.dtoh(self.host_maps[:n], self.maps, stream)

    def infer_heatmap(self, batch: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        n = len(batch)
        self._set_batch(n)
        self.host_in[:n] = batch
        stream, key = self.engine.stream, (n, maps)
        if not self.cuda_graph:
            self._sequence(n, maps)
        elif key in self.graphs:
            self.k.cuda_graph_launch(self.graphs[key], stream)
        else:
            self._sequence(n, maps)                       # one plain run first, as TensorRT requires
            self.buffers.synchronize(stream)
            self.k.cuda_graph_begin_capture(stream)
            try:
                self._sequence(n, maps)
            finally:
                self.graphs[key] = self.k.cuda_graph_end_capture(stream)
            self.k.cuda_graph_launch(self.graphs[key], stream)
        self.buffers.synchronize(stream)
        return (self.host_maps[:n].copy() if maps else None), self.host_scores[:n].copy()

    def _release(self, engines: list[TrtEngine]) -> None:
        for handle in self.graphs.values():
            self.k.cuda_graph_destroy(handle)
        self.graphs.clear()
        for engine in engines:
            engine.close()
        self.buffers.close()



class TrtBackend(_DeviceHeatmap):
    """A single-graph bundle on TensorRT, the heatmap kernel on the engine's output buffer.

    `infer(batch)` returns the raw maps (host), like the other backends; `infer_heatmap(batch,
    maps=...)` is what the Detector calls: the full-size maps (or None) and scores. A context manager.
    """

    def __init__(self, plan: bytes, spec: HeatmapSpec, *, buffers: str = "auto", cuda_graph: bool = True,
                 feeds: dict[str, np.ndarray] | None = None) -> None:
        self.buffers = open_buffers(buffers)
        self.engine = e = TrtEngine(plan, self.buffers)
        self.cuda_graph = cuda_graph
        self.input, self.output = e.inputs[0], e.outputs[0]
        self.h, self.w = e.shapes[self.output][-2:]               # raw map N x 1 x h x w
        self.raw = e.address[self.output]
        self.host_in = self.buffers.pinned((e.max_batch, *e.shapes[self.input][1:]), e.dtypes[self.input])
        self._setup_heatmap(spec, e.max_batch)
        for name, value in (feeds or {}).items():        # fixed extra inputs (SPR's noise): copied once
            self.buffers.htod(e.address[name], np.ascontiguousarray(value, dtype=e.dtypes[name]), e.stream)
        self.buffers.synchronize(e.stream)

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def _set_batch(self, n: int) -> None:
        self.engine.set_batch(n)

    def _forward(self, n: int) -> None:
        self.buffers.htod(self.engine.address[self.input], self.host_in[:n], self.engine.stream)
        self.engine.enqueue()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.run({self.input: batch})[0]

    def close(self) -> None:
        self._release([self.engine])


class TrtDdimBackend(_DeviceHeatmap):
    """DiffAD on TensorRT with the latent on the device: the four engines share one stream, read each
    other's buffers (their tensor addresses are wired together), and the `ddim_step` kernel updates the
    latent in place between denoiser runs; with `cuda_graph` the whole loop + heatmap is one graph.
    `plan`: the bundle's DDIM plan (steps, alphas, seeded start), resolved at load; this is the loop on
    the device, as `DdimPlan.sample_host` is the loop on the host."""

    def __init__(self, plans: dict[str, bytes], plan: DdimPlan, spec: HeatmapSpec, *, buffers: str = "auto",
                 cuda_graph: bool = True) -> None:
        self.buffers = open_buffers(buffers)
        self.enc = TrtEngine(plans["encoder"], self.buffers)
        stream = self.enc.stream
        self.den, self.dec, self.seg = (TrtEngine(plans[p], self.buffers, stream) for p in ("denoiser", "decoder", "segmentation"))
        self.engine, self.cuda_graph = self.enc, cuda_graph
        self.plan = plan
        self.max_batch = nmax = min(e.max_batch for e in (self.enc, self.den, self.dec, self.seg))
        self._wire()
        self.latent_count = int(np.prod(plan.latent_shape))
        self.host_in = self.buffers.pinned((nmax, *self.enc.shapes["images"][1:]), np.uint8)
        self.host_start = self.buffers.pinned((nmax, *plan.latent_shape), np.float32)
        self.host_start[:] = plan.start
        self.host_t = self.buffers.pinned((plan.steps, nmax), np.float32)
        self.host_t[:] = np.asarray(plan.timesteps, np.float32)[:, None]
        self.h, self.w = self.seg.shapes[self.seg.outputs[0]][-2:]
        self.raw = self.seg.address[self.seg.outputs[0]]
        self._setup_heatmap(spec, nmax)

    def _wire(self) -> None:
        """Point each engine's inputs at the buffers that produce them."""
        bind = [(self.den, "cond", self.enc, "cond"), (self.dec, "cond", self.enc, "cond"),
                (self.dec, "latent", self.den, "latent"), (self.seg, "images", self.enc, "images"),
                (self.seg, "recon", self.dec, "recon"), (self.seg, "inter", self.dec, "inter")]
        for consumer, name, producer, source in bind:
            consumer.address[name] = producer.address[source]
            consumer.context.set_tensor_address(name, producer.address[source])

    def _set_batch(self, n: int) -> None:
        for engine in (self.enc, self.den, self.dec, self.seg):
            engine.set_batch(n)

    def _forward(self, n: int) -> None:
        stream, z = self.enc.stream, self.den.address["latent"]
        self.buffers.htod(self.enc.address["images"], self.host_in[:n], stream)
        self.enc.enqueue()
        self.buffers.htod(z, self.host_start[:n], stream)
        for k, (a_t, a_prev) in enumerate(self.plan.alphas()):
            self.buffers.htod(self.den.address["timestep"], self.host_t[k, :n], stream)
            self.den.enqueue()
            self.k.ddim_step_cuda(z, self.den.address["eps"], z, n * self.latent_count, "float32", float(a_t),
                                  float(a_prev), clamp=self.plan.clamp, stream=stream)
        self.dec.enqueue()
        self.seg.enqueue()

    @property
    def steps(self) -> int:
        return self.plan.steps

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw maps to the host (no CUDA graph): what `Detector.infer` and the benchmarks' model mode time."""
        n = len(batch)
        self._set_batch(n)
        self.host_in[:n] = batch
        self._forward(n)
        out = np.empty(self.seg.shape(self.seg.outputs[0]), np.float32)
        self.buffers.dtoh(out, self.raw, self.enc.stream)
        self.buffers.synchronize(self.enc.stream)
        return out

    def close(self) -> None:
        self._release([self.enc, self.den, self.dec, self.seg])


def load_plan(bundle: Bundle, graph: str, *, batch: tuple[int, int, int], build: bool = True) -> bytes:
    """The engine of `graph` for this GPU and TensorRT: from the bundle or cache, else built now."""
    import tensorrt as trt

    key = DeviceKey.current(trt.__version__)
    spec = EngineSpec(graph, "fp16", batch[0], batch[2])
    found = find_engine(bundle, spec, key)
    if found is not None:
        return found.read_bytes()
    carried = describe_engines(bundle)
    if not build:
        raise RuntimeError(f"{bundle.path} has no TensorRT engine for {key.gpu} (sm {key.compute_capability}, "
                           f"TensorRT {key.tensorrt}, {key.platform}); it carries: {carried or 'none'}. "
                           f"Build one with `edge-ad export {bundle.path} --engine`")
    log.warning("no TensorRT engine for %s (sm %s, TensorRT %s) in %s%s; building one from %s now. This takes "
                "minutes (longer on a Jetson) and happens once; `edge-ad export BUNDLE --engine` does it ahead of time",
                key.gpu, key.compute_capability, key.tensorrt, bundle.path,
                f" (it has: {'; '.join(carried)})" if carried else "", graph)
    path, _ = build_and_store(bundle, graph, batch=batch)
    return path.read_bytes()


def open_tensorrt(bundle: Bundle, options: LoadOptions) -> _DeviceHeatmap:
    """The registry's factory: the bundle's FP16 engines for this GPU (built now when missing and
    `options.build_engine`), one backend for a single graph, the device DDIM loop for a diffusion bundle."""
    reason = tensorrt_missing()
    if reason:
        hint = ' (pip install "edge_ad[tensorrt]": TensorRT + cuda-python)' if reason == "TensorRT not installed" else ""
        raise RuntimeError(f"backend 'tensorrt' cannot run here: {reason}{hint}; use backend='onnxruntime'")
    if "fp16" not in bundle.meta:
        raise BundleError(f"{bundle.path} has no FP16 graphs for TensorRT (exported by edge_ad "
                          f"{bundle.meta.get('edge_ad_version')}); re-export it with `edge-ad export RUN --out BUNDLE`")
    spec = HeatmapSpec.from_meta(bundle.meta["heatmap"])
    build = dict(batch=options.batch, build=options.build_engine)
    if options.plan is not None:
        graphs = bundle.meta["pipeline"]["graphs"]
        plans = {part: load_plan(bundle, bundle.meta["fp16"][graph], **build) for part, graph in graphs.items()}
        return TrtDdimBackend(plans, options.plan, spec, cuda_graph=options.cuda_graph)
    plan = load_plan(bundle, bundle.meta["fp16"]["model.onnx"], **build)
    return TrtBackend(plan, spec, cuda_graph=options.cuda_graph,
                      feeds=seeded_inputs(bundle.meta.get("graph_inputs", {}), options.seed))
