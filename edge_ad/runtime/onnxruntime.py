"""ONNX Runtime backend: the CPU provider everywhere, the CUDA provider when a CUDA device is present.

`OrtBackend` runs a single-graph bundle, `LatentDdimBackend` a diffusion bundle's four graphs around
the host DDIM loop; `open_onnxruntime` is the registry's factory that picks one. Needs the `cpu` extra
(onnxruntime) or the `gpu` extra (onnxruntime-gpu).

The CUDA-provider path is unverified: no GPU has run it yet (it is only chosen when a device exists,
and the session's active providers are checked, not the advertised ones)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_ad.bundle import Bundle, BundleError
from edge_ad.runtime.backend import BaseBackend, LoadOptions
from edge_ad.runtime.ddim_plan import DdimPlan
from edge_ad.runtime.devices import gpu_present
from edge_ad.runtime.inputs import seeded_inputs
from edge_ad.runtime.latent_ddim import PARTS, DdimPipeline, session_runner
from edge_ad.runtime.precision import check_precision, graph_for

__all__ = ["LatentDdimBackend", "OrtBackend", "check_image_input", "gpu_present", "open_onnxruntime", "ort_session"]

log = logging.getLogger(__name__)

# What ONNX Runtime raises for a file it cannot take as a model (they derive from Exception only).
_MODEL_ERRORS = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel", "NoSuchFile", "NotFound",
                 "NotImplemented")


def ort_session(model_path: Path, *, device: str = "auto", threads: int | None = None, spinning: bool = False):
    """An InferenceSession on the CPU, or on CUDA when asked for or (device="auto") when a GPU is present;
    returns (session, "cpu" | "cuda") by the provider the session really got."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # ORT's worker threads otherwise keep spinning after run() returns and starve the host-side
    # work that follows (resize, the heatmap kernel's OpenMP threads): on 2 cores that halved the
    # end-to-end frame rate of SimpleNet at 288 px (measured 50 -> 74 FPS, benchmarks/results/fps-cpu.json).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # The CPU memory arena keeps every block it ever grew to and grows again as frames differ: in the
    # 10-minute soak it took the process from 220 to 249 MB (+13%); without it RSS stayed flat (220 ->
    # 223 MB) at the same frame rate (benchmarks/results/soak.json).
    options.enable_cpu_mem_arena = False
    providers = ["CPUExecutionProvider"]
    if device == "cuda" or (device == "auto" and gpu_present()):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = _open(ort, model_path, options, providers)
    active = session.get_providers()
    # onnxruntime-gpu lists CUDA even where its libraries or a GPU are missing, and then falls
    # back to the CPU: what counts is the provider the session ended up with.
    if device == "cuda" and "CUDAExecutionProvider" not in active:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("this ONNX Runtime is the CPU build (edge_ad[cpu]); for its CUDA provider: pip "
                               'uninstall onnxruntime && pip install "edge_ad[gpu]", or use backend=\'onnxruntime-cpu\'')
        raise RuntimeError("ONNX Runtime's CUDA provider is not usable here (no GPU, or the CUDA/cuDNN libraries "
                           "of its release missing); use backend='onnxruntime-cpu' or backend='auto'")
    log.info("ONNX Runtime session for %s on providers %s", Path(model_path).name, active)
    return session, "cuda" if "CUDAExecutionProvider" in active else "cpu"


def _open(ort, model_path: Path, options, providers: list[str]):
    """An InferenceSession, or a BundleError naming the file when ONNX Runtime cannot load it
    (damaged, not ONNX, or from a newer opset) instead of ONNX Runtime's own exception."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    errors = tuple(getattr(state, name) for name in _MODEL_ERRORS if hasattr(state, name))
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers)
    except errors as err:
        detail = str(err).replace(str(model_path), Path(model_path).name).splitlines()[0][:300]
        raise BundleError(f"ONNX Runtime {ort.__version__} cannot load {model_path}: {detail}. The file is damaged, "
                          "not an ONNX model, or needs a newer ONNX Runtime: copy the bundle again, re-export it, "
                          "or upgrade onnxruntime") from None


def check_image_input(session, model_path: Path, input_hw: tuple[int, int] | None = None) -> None:
    """The graph's first input must take what the runtime feeds: uint8 N x H x W x 3, with H x W
    the bundle's input size (meta.json's input/geometry) when `input_hw` is given."""
    first = session.get_inputs()[0]
    shape = list(first.shape)
    fixed = [d if isinstance(d, int) else None for d in shape]          # symbolic or unknown sides: None
    wrong = first.type != "tensor(uint8)" or len(shape) != 4 or fixed[3] not in (3, None)
    if not wrong and input_hw is not None:
        wrong = any(got is not None and got != want for got, want in zip(fixed[1:3], input_hw))
    if wrong:
        expected = f"uint8 [batch, {input_hw[0]}, {input_hw[1]}, 3]" if input_hw else "uint8 [batch, H, W, 3]"
        raise BundleError(f"{model_path} takes {first.type} {shape} as its input {first.name!r}, but the bundle's "
                          f"meta.json promises {expected}: the graph and meta.json do not belong together; re-export "
                          "the bundle")


class OrtBackend(BaseBackend):
    """infer(uint8 N x H x W x 3) -> float32 raw maps N x 1 x h x w.

    `feeds` are the graph's other inputs, fixed for the backend's life (SPR's seeded noise); `input_hw`
    the bundle's input size (meta.json), checked against the graph's input."""

    name = "onnxruntime"
    precision = "fp32"                   # "int8" when open_onnxruntime runs the bundle's INT8 graph

    def __init__(self, model_path: Path, *, device: str = "auto", threads: int | None = None,
                 spinning: bool = False, feeds: dict[str, np.ndarray] | None = None,
                 input_hw: tuple[int, int] | None = None) -> None:
        self.session, self.device = ort_session(model_path, device=device, threads=threads, spinning=spinning)
        check_image_input(self.session, Path(model_path), input_hw)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        first = self.session.get_inputs()[0].shape[0]
        self.max_batch = first if isinstance(first, int) else None       # None: a dynamic batch axis
        self.feeds = dict(feeds or {})
        wanted = {i.name for i in self.session.get_inputs()[1:]}
        if wanted != set(self.feeds):
            raise BundleError(f"{Path(model_path).name} takes inputs {sorted(wanted)} besides the images, "
                             f"the bundle's meta.json provides {sorted(self.feeds)}; re-export the bundle")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: batch, **self.feeds})[0]


class LatentDdimBackend(BaseBackend):
    """A DiffAD bundle on ONNX Runtime: one session per graph, the loop in `DdimPipeline` (the host loop
    of the bundle's `DdimPlan`)."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, plan: DdimPlan, *, device: str = "auto", threads: int | None = None,
                 precision: str | None = None) -> None:
        graphs = bundle.meta["pipeline"]["graphs"]
        self.sessions = {}
        for part in PARTS:
            self.sessions[part], self.device = ort_session(graph_for(bundle, graphs[part], precision), device=device,
                                                           threads=threads)
        self.pipeline = DdimPipeline({p: session_runner(s) for p, s in self.sessions.items()}, plan=plan)

    @property
    def plan(self) -> DdimPlan:
        return self.pipeline.plan

    @property
    def steps(self) -> int:
        return self.pipeline.steps

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.pipeline.infer(batch)


def open_onnxruntime(bundle: Bundle, options: LoadOptions) -> BaseBackend:
    """The registry's factory: the DDIM pipeline for a diffusion bundle, else the bundle's one graph with
    its seeded noise inputs."""
    check_precision(options.precision, "onnxruntime", ("fp32", "int8"))
    if options.plan is not None:
        return LatentDdimBackend(bundle, options.plan, device=options.device, threads=options.threads,
                                 precision=options.precision)
    feeds = seeded_inputs(bundle.meta.get("graph_inputs", {}), options.seed)
    backend = OrtBackend(graph_for(bundle, "model.onnx", options.precision), device=options.device,
                         threads=options.threads, feeds=feeds,
                         input_hw=(bundle.meta["input"]["height"], bundle.meta["input"]["width"]))
    backend.precision = "int8" if options.precision == "int8" else "fp32"
    return backend
