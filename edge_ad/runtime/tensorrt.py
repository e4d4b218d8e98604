"""TensorRT runtime: a bundle's FP16 engine on the GPU, post-processing on the device.

Unverified: TensorRT cannot be installed on the machines this was written on and no GPU has run it.
It is written against the TensorRT 10 Python API (the Jetson/JetPack 6 line; 11.x keeps these calls);
the engine, its contexts and the calls it makes are in edge_ad/runtime/trt_engine.py, the CUDA graphs
in edge_ad/runtime/cuda_graphs.py. The decisions (which context for which batch, when a graph is
captured or replayed, what a failed capture does, return values, output types) ran against a test
double of TensorRT and of the CUDA helpers (tests/test_tensorrt_double.py), never a GPU.

Per frame batch: the frames are copied into a pinned host buffer and from there to the engine's
input on one CUDA stream; the engine runs (the context of that batch size: one per size, its shapes
never change); the `heatmap` kernel turns the raw map into full-size maps and scores in device memory;
only the scores (and the maps, when asked for) come back. With `cuda_graph=True` that whole sequence
(copy in, enqueue, heatmap, copy out) is captured once per batch size (and maps or not) as a CUDA
graph, after one plain run, and replayed: addresses and shapes are fixed, which is why every frame goes
through the same pinned and device buffers. A capture that fails turns graphs off for the backend
(logged), as trtexec does.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_ad.bundle import Bundle, BundleError
from edge_ad.runtime.backend import BaseBackend, LoadOptions
from edge_ad.runtime.buffers import CudaBuffers, open_buffers
from edge_ad.runtime.cuda_graphs import CudaGraphs
from edge_ad.runtime.ddim_plan import DdimPlan
from edge_ad.runtime.devices import tensorrt_missing
from edge_ad.runtime.engine_builder import build_and_store
from edge_ad.runtime.engines import DeviceKey, EngineSpec, describe_engines, find_engine
from edge_ad.runtime.precision import check_precision, graph_for
from edge_ad.runtime.trt_engine import TrtEngine, kernel_dtype
from edge_ad.postprocess import HeatmapSpec
from edge_ad.runtime.inputs import seeded_inputs

log = logging.getLogger(__name__)

__all__ = ["TrtBackend", "TrtDdimBackend", "TrtEngine", "load_plan", "open_tensorrt", "tensorrt_missing"]


def _buffers(buffers: str | CudaBuffers) -> CudaBuffers:
    return buffers if isinstance(buffers, CudaBuffers) else open_buffers(buffers)


def _kernels(kernels: Any) -> Any:
    if kernels is None:
        from edge_ad import _kernels as kernels
    return kernels


class _DeviceHeatmap(BaseBackend):
    """The device side shared by the TensorRT backends: heatmap buffers, the copy out, CUDA graphs.

    Subclasses set `self.engine` (whose stream everything runs on), `self.raw` (address of the raw
    map), `self.raw_dtype` (its kernel type name), `self.h`, `self.w`, `self.host_in`, and implement
    `_set_batch(n)` (every engine's batch-n context) and `_forward(n)` (copy in + engines)."""

    name = "tensorrt"
    device_heatmap = True

    def _setup_heatmap(self, spec: HeatmapSpec, max_batch: int, cuda_graph: bool, kernels: Any) -> None:
        self.k = _kernels(kernels)
        self.spec = spec
        self.cuda_graph = cuda_graph
        self.graphs = CudaGraphs(self.k, self.buffers.synchronize, enabled=cuda_graph)
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

    def _set_batch(self, n: int) -> None:
        raise NotImplementedError

    def _forward(self, n: int) -> None:
        raise NotImplementedError

    def _sequence(self, n: int, with_maps: bool) -> None:
        """Copy in, the engines, heatmap, copy out: all asynchronous on the engine's stream."""
        stream = self.engine.stream
        self._forward(n)
        args = self._kernel_args(n)
        ws = args.pop("workspace_bytes")
        maps = self.maps if with_maps else 0                  # 0: the kernel writes no full-size map
        self.k.heatmap_cuda(self.raw, self.raw_dtype, n, self.h, self.w, self.out_h, self.out_w, maps,
                            self.scores, 0, self.workspace, ws, stream, **args)
        self.buffers.dtoh(self.host_scores[:n], self.scores, stream)
        if with_maps:
            self.buffers.dtoh(self.host_maps[:n], self.maps, stream)

    def infer_heatmap(self, batch: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        n = len(batch)
        self._set_batch(n)
        self.host_in[:n] = batch
        stream = self.engine.stream
        self.graphs.run((n, maps), stream, lambda: self._sequence(n, maps))
        self.buffers.synchronize(stream)
        return (self.host_maps[:n].copy() if maps else None), self.host_scores[:n].copy()

    def _release(self, engines: list[TrtEngine]) -> None:
        self.graphs.close()
        for engine in engines:
            engine.close()
        self.buffers.close()


class TrtBackend(_DeviceHeatmap):
    """A single-graph bundle on TensorRT, the heatmap kernel on the engine's output buffer.

    `infer(batch)` returns the raw maps (host, float32), like the other backends; `infer_heatmap(batch,
    maps=...)` is what the Detector calls: the full-size maps (or None) and scores. A context manager.
    `buffers` names a memory source (or is one); `trt` and `kernels` default to the tensorrt module and
    edge_ad._kernels (tests pass test doubles)."""

    def __init__(self, plan: bytes, spec: HeatmapSpec, *, buffers: str | CudaBuffers = "auto",
                 cuda_graph: bool = True, feeds: dict[str, np.ndarray] | None = None,
                 trt: Any = None, kernels: Any = None) -> None:
        self.buffers = _buffers(buffers)
        self.engine = e = TrtEngine.load(plan, self.buffers, trt=trt)
        self.input, self.output = e.inputs[0], e.outputs[0]
        self.h, self.w = e.shapes[self.output][-2:]               # raw map N x 1 x h x w
        self.raw = e.address[self.output]
        self.raw_dtype = kernel_dtype(e.dtypes[self.output], f"the raw map {self.output!r}")
        self.host_in = self.buffers.pinned((e.max_batch, *e.shapes[self.input][1:]), e.dtypes[self.input])
        self._setup_heatmap(spec, e.max_batch, cuda_graph, kernels)
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
        return self.engine.run({self.input: batch})[0].astype(np.float32, copy=False)

    def close(self) -> None:
        self._release([self.engine])


class TrtDdimBackend(_DeviceHeatmap):
    """DiffAD on TensorRT with the latent on the device: the four engines share one stream, read each
    other's buffers (their tensor addresses are wired together), and the `ddim_step` kernel updates the
    latent in place between denoiser runs; with `cuda_graph` the whole loop + heatmap is one graph per
    batch size (each engine's batch-n context). `plan`: the bundle's DDIM plan (steps, alphas, seeded
    start), resolved at load; this is the loop on the device, as `DdimPlan.sample_host` is the loop on
    the host. The host buffers and kernel types follow the engines' tensor types."""

    def __init__(self, plans: dict[str, bytes], plan: DdimPlan, spec: HeatmapSpec, *,
                 buffers: str | CudaBuffers = "auto", cuda_graph: bool = True,
                 trt: Any = None, kernels: Any = None) -> None:
        self.buffers = _buffers(buffers)
        self.enc = TrtEngine.load(plans["encoder"], self.buffers, trt=trt)
        stream = self.enc.stream
        self.den, self.dec, self.seg = (TrtEngine.load(plans[p], self.buffers, stream, trt=trt)
                                        for p in ("denoiser", "decoder", "segmentation"))
        self.engine = self.enc
        self.plan = plan
        self.max_batch = nmax = min(e.max_batch for e in self._engines())
        self._wire()
        self.latent_count = int(np.prod(plan.latent_shape))
        self.latent_dtype = kernel_dtype(self.den.dtypes["latent"], "the denoiser's latent")
        if self.den.dtypes["eps"] != self.den.dtypes["latent"]:
            raise RuntimeError(f"the denoiser's eps is {self.den.dtypes['eps']} and its latent "
                               f"{self.den.dtypes['latent']}; the DDIM kernel needs one type: re-export the bundle")
        self.host_in = self.buffers.pinned((nmax, *self.enc.shapes["images"][1:]), self.enc.dtypes["images"])
        self.host_start = self.buffers.pinned((nmax, *plan.latent_shape), self.den.dtypes["latent"])
        self.host_start[:] = plan.start
        self.host_t = self.buffers.pinned((plan.steps, nmax), self.den.dtypes["timestep"])
        self.host_t[:] = np.asarray(plan.timesteps, np.float64)[:, None]
        out = self.seg.outputs[0]
        self.h, self.w = self.seg.shapes[out][-2:]
        self.raw = self.seg.address[out]
        self.raw_dtype = kernel_dtype(self.seg.dtypes[out], f"the raw map {out!r}")
        self._setup_heatmap(spec, nmax, cuda_graph, kernels)

    def _engines(self) -> tuple[TrtEngine, ...]:
        return self.enc, self.den, self.dec, self.seg

    def _wire(self) -> None:
        """Point each engine's inputs at the buffers that produce them (every context of it)."""
        bind = [(self.den, "cond", self.enc, "cond"), (self.dec, "cond", self.enc, "cond"),
                (self.dec, "latent", self.den, "latent"), (self.seg, "images", self.enc, "images"),
                (self.seg, "recon", self.dec, "recon"), (self.seg, "inter", self.dec, "inter")]
        for consumer, name, producer, source in bind:
            if consumer.dtypes[name] != producer.dtypes[source]:
                raise RuntimeError(f"{name!r} is {producer.dtypes[source]} out of one engine and "
                                   f"{consumer.dtypes[name]} into the next; re-export the bundle")
            consumer.bind(name, producer.address[source])

    def _set_batch(self, n: int) -> None:
        for engine in self._engines():
            engine.set_batch(n)

    def _forward(self, n: int) -> None:
        stream, z = self.enc.stream, self.den.address["latent"]
        self.buffers.htod(self.enc.address["images"], self.host_in[:n], stream)
        self.enc.enqueue()
        self.buffers.htod(z, self.host_start[:n], stream)
        for k, (a_t, a_prev) in enumerate(self.plan.alphas()):
            self.buffers.htod(self.den.address["timestep"], self.host_t[k, :n], stream)
            self.den.enqueue()
            self.k.ddim_step_cuda(z, self.den.address["eps"], z, n * self.latent_count, self.latent_dtype,
                                  float(a_t), float(a_prev), clamp=self.plan.clamp, stream=stream)
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
        out = self.seg.outputs[0]
        raw = np.empty(self.seg.shape(out), self.seg.dtypes[out])
        self.buffers.dtoh(raw, self.raw, self.enc.stream)
        self.buffers.synchronize(self.enc.stream)
        return raw.astype(np.float32, copy=False)

    def close(self) -> None:
        self._release(list(self._engines()))


def load_plan(bundle: Bundle, graph: str, *, batch: tuple[int, int, int], build: bool = True,
              precision: str = "fp16") -> bytes:
    """The engine of `graph` (an FP16 graph, or an INT8 Q/DQ one with `precision` "int8") for this GPU and
    TensorRT: from the bundle or cache, else built now."""
    import tensorrt as trt

    key = DeviceKey.current(trt.__version__)
    spec = EngineSpec(graph, precision, batch[0], batch[2])
    found = find_engine(bundle, spec, key)
    if found is not None:
        return found.read_bytes()
    carried = describe_engines(bundle)
    if not build:
        raise RuntimeError(f"{bundle.path} has no TensorRT engine for {key.gpu} (sm {key.compute_capability}, "
                           f"TensorRT {key.tensorrt}, {key.platform}); it carries: {carried or 'none'}. "
                           f"Build one with `edge-ad export {bundle.path} --engine{' --int8' if precision == 'int8' else ''}`")
    log.warning("no TensorRT engine for %s (sm %s, TensorRT %s) in %s%s; building one from %s now. This takes "
                "minutes (longer on a Jetson) and happens once; `edge-ad export BUNDLE --engine` does it ahead of time",
                key.gpu, key.compute_capability, key.tensorrt, bundle.path,
                f" (it has: {'; '.join(carried)})" if carried else "", graph)
    path, _ = build_and_store(bundle, graph, batch=batch, precision=precision)
    return path.read_bytes()


def _graph(bundle: Bundle, graph: str, precision: str | None) -> tuple[str, str]:
    """(file TensorRT builds from, its precision) for the bundle's FP32 `graph`: its FP16 twin, or with
    precision "int8" its INT8 twin (a BundleError with the re-export hint when the bundle has none at all;
    a diffusion part the export left unquantized keeps its FP16 twin)."""
    int8 = bundle.meta.get("int8") or {}
    if precision == "int8" and (graph in int8 or not int8):
        return graph_for(bundle, graph, precision).name, "int8"
    return bundle.meta["fp16"][graph], "fp16"


def open_tensorrt(bundle: Bundle, options: LoadOptions) -> _DeviceHeatmap:
    """The registry's factory: the bundle's FP16 engines for this GPU (built now when missing and
    `options.build_engine`), one backend for a single graph, the device DDIM loop for a diffusion bundle.
    precision "int8": the engines of the bundle's Q/DQ INT8 graphs (explicit quantization; unverified)."""
    check_precision(options.precision, "tensorrt", ("fp16", "int8"))
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
        plans = {}
        for part, graph in graphs.items():
            source, precision = _graph(bundle, graph, options.precision)
            plans[part] = load_plan(bundle, source, precision=precision, **build)
        return TrtDdimBackend(plans, options.plan, spec, cuda_graph=options.cuda_graph)
    source, precision = _graph(bundle, "model.onnx", options.precision)
    plan = load_plan(bundle, source, precision=precision, **build)
    return TrtBackend(plan, spec, cuda_graph=options.cuda_graph,
                      feeds=seeded_inputs(bundle.meta.get("graph_inputs", {}), options.seed))
