"""OpenVINO backend: Intel and AMD x86-64 CPUs (ARM CPUs too), and Intel GPUs.

`OpenVinoBackend` runs a single-graph bundle, `OpenVinoDdimBackend` a diffusion bundle's four graphs
around the host DDIM loop (`DdimPipeline`); `open_openvino` is the registry's factory. Needs the
`openvino` extra. Device "cpu" (and "auto") is OpenVINO's CPU plugin, "gpu" its Intel GPU plugin; the
GPU path is unverified: no Intel GPU has run it yet.

Precision (`edge_ad.load(precision=)`, edge_ad/runtime/precision.py): None keeps OpenVINO's default
inference-precision hint, bfloat16 on CPUs with AVX512-BF16 or AMX and f16 on GPUs, not FP32, and
`precision` says what it resolved to; "fp32" asks for f32; "bf16"/"fp16" for that hint, refused where
the device does not compute in it (OpenVINO would silently pick another); "int8" runs the bundle's
Q/DQ INT8 graph, its float parts with the f32 hint (as ONNX Runtime runs them), "int8+bf16" the same
graph with its float parts at the bf16 hint.

Compiled with PERFORMANCE_HINT "LATENCY": one synchronous request, the frames of a line one batch at
a time, on all cores (docs/openvino.md has the measurement against "THROUGHPUT"). No model cache:
compiling the demo SimpleNet takes 0.07 s on the CPU (measured, docs/openvino.md).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from edge_ad.bundle import Bundle, BundleError
from edge_ad.runtime.backend import BaseBackend, LoadOptions
from edge_ad.runtime.ddim_plan import DdimPlan
from edge_ad.runtime.inputs import seeded_inputs
from edge_ad.runtime.latent_ddim import PARTS, DdimPipeline, Run
from edge_ad.runtime.precision import INT8, check_precision, graph_for

__all__ = ["OpenVinoBackend", "OpenVinoDdimBackend", "compile_graph", "open_openvino", "read_graph"]

log = logging.getLogger(__name__)

_DEVICES = {"auto": "CPU", "cpu": "CPU", "gpu": "GPU"}
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32", "int8+bf16": "bf16"}  # -> OpenVINO hint
_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "FP32", "int8+bf16": "BF16"}
_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}                       # OpenVINO type -> edge_ad precision
PERFORMANCE_HINT = "LATENCY"

_core = None
_core_lock = threading.Lock()


def ov_core():
    """The process's one ov.Core: its device plugins load once and are shared by every compiled model."""
    global _core
    import openvino as ov

    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def read_graph(path: Path):
    """The ONNX graph as an ov.Model, through OpenVINO's ONNX front end only; a BundleError naming the
    file when OpenVINO cannot read or convert it (damaged, not ONNX, an operator it does not know)."""
    import openvino as ov
    from openvino.frontend import FrontEndManager

    try:
        frontend = FrontEndManager().load_by_framework("onnx")
        model = frontend.convert(frontend.load(str(path)))
    except Exception as err:  # noqa: BLE001 - the front end's failures derive from Exception only
        lines = [ln.strip() for ln in str(err).replace(str(path), Path(path).name).splitlines() if ln.strip()]
        model, detail = None, (lines[-1] if lines else type(err).__name__)[:300]
    if model is not None and model.inputs and model.outputs:
        return model
    if model is not None:                   # protobuf reads stray bytes as an empty model
        detail = "it holds no graph (no inputs or outputs)"
    raise BundleError(f"OpenVINO {ov.__version__.split('-')[0]} cannot load {path}: {detail}. The file is "
                      "damaged, not an ONNX model, or needs a newer OpenVINO: copy the bundle again, re-export it, "
                      "upgrade openvino, or use backend='onnxruntime'") from None


def device_name(core, device: str) -> str:
    """OpenVINO's name for the LoadOptions device; a RuntimeError when OpenVINO does not see it here."""
    name = _DEVICES.get(device)
    if name is None:
        raise ValueError(f"OpenVINO runs on device 'cpu' or 'gpu' (an Intel GPU), not {device!r}")
    if name not in core.available_devices and not any(d.startswith(name + ".") for d in core.available_devices):
        raise RuntimeError(f"OpenVINO sees no {name} here (devices: {', '.join(core.available_devices) or 'none'}); "
                           "an Intel GPU needs its compute runtime (intel-opencl-icd / Level Zero) installed: "
                           "use backend='openvino-cpu' or backend='auto'")
    return name


def config_for(core, device: str, precision: str | None, threads: int | None) -> dict:
    """The compile properties: the latency hint, the thread count, the precision hint asked for (refused
    when the device does not compute in it: OpenVINO would otherwise quietly use another)."""
    config: dict = {"PERFORMANCE_HINT": PERFORMANCE_HINT}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision is not None:
        capabilities = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        if _CAPABILITY[precision] not in capabilities:
            full = core.get_property(device, "FULL_DEVICE_NAME")
            offers = [p for p, cap in _CAPABILITY.items() if cap in capabilities and p not in INT8]
            raise ValueError(f"OpenVINO's {device} ({full}) does not compute in {precision}: it offers "
                             f"{', '.join(offers)}; use precision='fp32', or leave precision out for its default")
        config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
    return config


def compile_graph(core, model, path: Path, device: str, config: dict):
    """The read graph (of file `path`) compiled for `device`; a failure to compile (an operator the device
    plugin lacks) is a BundleError naming the file, like one OpenVINO cannot read."""
    try:
        return core.compile_model(model, device, config)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise BundleError(f"OpenVINO cannot compile {path} for {device}: {(lines[-1] if lines else '')[:300]}; "
                          "upgrade openvino, or use backend='onnxruntime'") from None


def resolved(compiled, precision: str | None) -> str:
    """The precision the compiled model computes in, by edge_ad's names ("fp32", "bf16", "fp16"; "int8"
    for the INT8 graph); a RuntimeError when OpenVINO did not take the hint it was given."""
    got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    name = _NAMES.get(got, got)
    if precision is not None and got != _HINTS[precision]:
        raise RuntimeError(f"OpenVINO was asked for the {_HINTS[precision]} hint and compiled {got}: use "
                           "precision='fp32', or leave precision out")
    return precision if precision in INT8 else name


def check_image_port(port, path: Path, input_hw: tuple[int, int] | None = None) -> None:
    """The graph's first input must take uint8 N x H x W x 3, H x W the bundle's (meta.json) when given:
    the same check and message as ONNX Runtime's (check_image_input)."""
    import openvino as ov

    shape = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    wrong = port.get_element_type() != ov.Type.u8 or len(dims) != 4 or dims[3] not in (3, None)
    if not wrong and input_hw is not None:
        wrong = any(got is not None and got != want for got, want in zip(dims[1:3], input_hw))
    if wrong:
        expected = f"uint8 [batch, {input_hw[0]}, {input_hw[1]}, 3]" if input_hw else "uint8 [batch, H, W, 3]"
        raise BundleError(f"{path} takes {port.get_element_type().get_type_name()} {shape} as its input "
                          f"{port.get_any_name()!r}, but the bundle's meta.json promises {expected}: the graph and "
                          "meta.json do not belong together; re-export the bundle")


class OpenVinoBackend(BaseBackend):
    """infer(uint8 N x H x W x 3) -> float32 raw maps N x 1 x h x w, through one reused InferRequest.

    `feeds` are the graph's other inputs, set once on the request (SPR's seeded noise); `input_hw` the
    bundle's input size, checked against the graph's input. `precision` is what it computes in."""

    name = "openvino"

    def __init__(self, model_path: Path, *, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, feeds: dict[str, np.ndarray] | None = None,
                 input_hw: tuple[int, int] | None = None) -> None:
        import openvino as ov

        core = ov_core()
        self.device = device_name(core, device)
        model = read_graph(model_path)
        image, *others = model.inputs           # the graph's own names (compiling may merge tensor names)
        check_image_port(image, Path(model_path), input_hw)
        first = image.get_partial_shape()[0]
        self.max_batch = first.get_length() if first.is_static else None      # None: a dynamic batch axis
        self.feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (feeds or {}).items()}
        wanted = {p.get_any_name() for p in others}
        if wanted != set(self.feeds):
            raise BundleError(f"{Path(model_path).name} takes inputs {sorted(wanted)} besides the images, "
                              f"the bundle's meta.json provides {sorted(self.feeds)}; re-export the bundle")
        config = config_for(core, self.device, precision, threads)
        self.compiled = compile_graph(core, model, model_path, self.device, config)
        self.precision = resolved(self.compiled, precision)
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()           # one request: calls from several threads take turns
        for name, value in self.feeds.items():
            self.request.set_tensor(name, ov.Tensor(value, shared_memory=True))
        log.info("OpenVINO %s on %s, precision %s", Path(model_path).name, self.device, self.precision)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            out = self.request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)
            return out[0]

    def close(self) -> None:
        self.request = self.compiled = None


def request_runner(compiled) -> Run:
    """A compiled model as a part of the DDIM pipeline: {input name: array} -> [outputs in graph order],
    through one reused InferRequest (outputs copied out: the next call reuses the request's buffers)."""
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = request.infer(feeds, share_inputs=True)
        return [out[i] for i in range(len(compiled.outputs))]
    return run


class OpenVinoDdimBackend(BaseBackend):
    """A DiffAD bundle on OpenVINO: one compiled model per graph, the loop in `DdimPipeline` (the host
    loop of the bundle's `DdimPlan`), all four at the same precision."""

    name = "openvino"

    def __init__(self, bundle: Bundle, plan: DdimPlan, *, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None) -> None:
        core = ov_core()
        self.device = device_name(core, device)
        config = config_for(core, self.device, precision, threads)
        graphs = bundle.meta["pipeline"]["graphs"]
        self.compiled = {}
        for part in PARTS:
            path = graph_for(bundle, graphs[part], precision)
            model = read_graph(path)
            if part == "encoder":
                check_image_port(model.inputs[0], path, (bundle.meta["input"]["height"], bundle.meta["input"]["width"]))
            self.compiled[part] = compile_graph(core, model, path, self.device, config)
        self.precision = resolved(self.compiled["denoiser"], precision)
        self._lock = threading.Lock()
        self.pipeline = DdimPipeline({p: request_runner(c) for p, c in self.compiled.items()}, plan=plan)

    @property
    def plan(self) -> DdimPlan:
        return self.pipeline.plan

    @property
    def steps(self) -> int:
        return self.pipeline.steps

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.pipeline.infer(np.ascontiguousarray(batch))


def open_openvino(bundle: Bundle, options: LoadOptions) -> BaseBackend:
    """The registry's factory: the DDIM pipeline for a diffusion bundle, else the bundle's one graph (its
    INT8 twin for precision "int8" or "int8+bf16") with its seeded noise inputs."""
    check_precision(options.precision, "openvino", ("fp32", "bf16", "fp16", *INT8))
    if options.plan is not None:
        return OpenVinoDdimBackend(bundle, options.plan, device=options.device, precision=options.precision,
                                   threads=options.threads)
    feeds = seeded_inputs(bundle.meta.get("graph_inputs", {}), options.seed)
    return OpenVinoBackend(graph_for(bundle, "model.onnx", options.precision), device=options.device,
                           precision=options.precision, threads=options.threads, feeds=feeds,
                           input_hw=(bundle.meta["input"]["height"], bundle.meta["input"]["width"]))
