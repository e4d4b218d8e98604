"""The runtime: load a bundle and run it, with no PyTorch on this path (the torch backend aside).

backend="auto": TensorRT when it imports and a CUDA GPU is present, else ONNX Runtime with the CUDA
provider when it works, else, on an x86-64 CPU where OpenVINO is installed, the faster of OpenVINO (f32
hint) and ONNX Runtime for this bundle, timed at load (edge_ad.runtime.auto_cpu), else ONNX Runtime on the CPU. Or name one (edge_ad.runtime.registry holds them):

- "tensorrt": the bundle's FP16 engine for this GPU (built on first use; unverified, see tensorrt.py);
- "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda";
- "openvino", "openvino-cpu", "openvino-gpu" (an Intel GPU; unverified): the `openvino` extra;
- "torch", "torch-cpu", "torch-cuda": the bundle's checkpoint in PyTorch (needs torch, the `train` extra;
  on CUDA with FP16 autocast and CUDA graphs): the reference TensorRT is compared with, and the fallback;
- "triton": a Triton Inference Server holding the bundle's model repository (`triton_url=`).

A backend whose library is missing is refused with the extra that installs it: `cpu` (onnxruntime),
`gpu` (onnxruntime-gpu), `openvino`, `tensorrt` (TensorRT + cuda-python), `train` (torch), `triton`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edge_ad.bundle import Bundle, read_bundle
from edge_ad.postprocess import HeatmapSpec
from edge_ad.runtime.backend import Backend, LoadOptions
from edge_ad.runtime.ddim_plan import DdimPlan
from edge_ad.runtime.precision import PRECISIONS, check_precision
from edge_ad.runtime.detector import Detector
from edge_ad.runtime.registry import PIPELINES, BackendUnavailable, backend_names, register_backend, resolve
from edge_ad.runtime.result import InferenceError, Result
from edge_ad.runtime.thresholds import threshold_in_use

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "Detector", "InferenceError", "Result", "load",
           "register_backend"]


def __getattr__(name: str):
    """BACKENDS: "auto" and every registered backend name, as registered now."""
    if name == "BACKENDS":
        return backend_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(bundle: str | Path, backend: str = "auto", *, color: str = "BGR", threads: int | None = None,
         steps: int | None = None, seed: int | None = None, batch: tuple[int, int, int] = (1, 1, 8),
         cuda_graph: bool = True, build_engine: bool = True, triton_url: str | None = None,
         threshold: float | None = None, sensitivity: float | None = None,
         precision: str | None = None) -> Detector:
    """Open a bundle (checking its format and checksums) and build a Detector on the chosen backend.

    `steps`: DDIM steps of a diffusion bundle (DiffAD; default the bundle's, 5). `seed`: the seed of
    the inference noise (SPR's perturbations, DiffAD's starting latent; default the bundle's).
    TensorRT: `batch` = (min, opt, max) of the engine's profile, `cuda_graph` captures each frame's work,
    `build_engine=False` refuses to build a missing engine. `triton_url`: host:port of the gRPC endpoint.
    `threshold` (raw score units) or `sensitivity` (0..1, 0.5 = the calibrated threshold, higher flags
    more): the image threshold to use instead of the bundle's (Detector.set_threshold; at most one).
    `precision`: None (the backend's default; for "auto" on a CPU box the fastest configuration that keeps
    the bundle's verdict set, edge_ad.runtime.auto_cpu), "fp32", "bf16"/"fp16" (OpenVINO's hint), "int8"
    (the bundle's INT8 graph) or "int8+bf16" (OpenVINO: its float parts at bf16): edge_ad.runtime.precision."""
    threshold_in_use(0.0, (0.0, 1.0), threshold, sensitivity)     # a bad value fails before any backend opens
    check_precision(precision, backend, PRECISIONS)
    entry = resolve(backend)
    b = read_bundle(bundle)
    kind = pipeline_kind(b)
    if steps is not None and kind != "latent_ddim":
        raise ValueError(f"steps apply to diffusion bundles; {b.model_name} has no DDIM loop")
    if kind not in entry.pipelines:
        raise ValueError(f"backend {entry.name!r} serves {' and '.join(entry.pipelines)} bundles; {b.model_name} "
                         f"needs the {kind!r} pipeline: use backend 'onnxruntime' or 'tensorrt'")
    plan = DdimPlan.from_pipeline(b.meta["pipeline"], steps=steps, seed=seed) if kind == "latent_ddim" else None
    options = LoadOptions(device=entry.device, threads=threads, seed=seed, plan=plan, batch=batch,
                          cuda_graph=cuda_graph, build_engine=build_engine, triton_url=triton_url,
                          precision=precision)
    in_use = _threshold_asked(b, threshold, sensitivity)
    detector = Detector(b, _open(backend, entry, b, options, kind, in_use), color=color)
    detector.set_threshold(threshold, sensitivity=sensitivity)
    return detector


def _threshold_asked(bundle: Bundle, threshold: float | None, sensitivity: float | None) -> float | None:
    """The image threshold the detector will use when the caller overrides the bundle's (else None), for
    auto's verdict check; the Detector validates the calibration itself."""
    if threshold is None and sensitivity is None:
        return None
    cal = bundle.meta.get("calibration") or {}
    try:
        return threshold_in_use(float(cal["image_threshold"]), tuple(cal["image_norm"]), threshold, sensitivity)
    except (KeyError, TypeError, ValueError):
        return None                                 # a broken calibration: the Detector says what is wrong


def _open(requested: str, entry, bundle: Bundle, options: LoadOptions, kind: str,
          threshold: float | None = None) -> Backend:
    """The entry's backend; for "auto" on OpenVINO (a CPU box) the fastest configuration of OpenVINO and
    ONNX Runtime that keeps the bundle's verdicts at `threshold` (None: the calibrated one)
    (edge_ad.runtime.auto_cpu; a named precision keeps to its graph); a diffusion bundle on ONNX Runtime."""
    if requested != "auto" or entry.name != "openvino" or options.precision not in (None, "fp32", "int8"):
        return entry.open(bundle, options)
    from edge_ad.runtime.auto_cpu import fastest_backend
    from edge_ad.runtime.registry import get_backend

    ort = get_backend("onnxruntime-cpu")
    if kind == "latent_ddim":                       # not probed; a named precision still applies
        return entry.open(bundle, options) if ort.missing() else ort.open(bundle, replace(options, device="cpu"))
    if options.precision == "int8" and not bundle.meta.get("int8"):
        return entry.open(bundle, options)          # graph_for says how to get an INT8 graph
    size = (bundle.meta["input"]["height"], bundle.meta["input"]["width"])
    candidates = _cpu_candidates(entry, None if ort.missing() else ort, bundle, options, threshold)
    return fastest_backend(candidates, *size)


def _cpu_candidates(openvino, ort, bundle: Bundle, options: LoadOptions, threshold: float | None = None) -> list:
    """auto's candidates on a CPU box, in the order the probe-less load tries them (auto_cpu); reduced
    precisions checked on the bundle's verdict set at `threshold` (None: the calibrated one)."""
    from edge_ad.runtime.auto_cpu import Candidate
    from edge_ad.runtime.verdict_check import read_verdict_set, verdicts_kept

    check_set = read_verdict_set(bundle)
    if check_set is not None and threshold is not None:
        check_set = check_set._replace(threshold=float(threshold))
    spec = HeatmapSpec.from_meta(bundle.meta["heatmap"])
    check = (lambda backend: verdicts_kept(backend, spec, check_set)) if check_set is not None else None
    has_int8 = bool(bundle.meta.get("int8"))
    wanted = options.precision
    plan = [("openvino", "int8"), ("openvino", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "fp32"),
            ("openvino", "int8+bf16"), ("openvino", "bf16")]
    out = []
    for library, precision in plan:
        if precision.startswith("int8") and not has_int8 or library == "onnxruntime" and ort is None:
            continue
        if wanted is not None and precision != wanted or "bf16" in precision and check is None:
            continue
        chosen = openvino if library == "openvino" else ort
        device = options.device if library == "openvino" else "cpu"
        out.append(Candidate(f"{library}:{precision}",
                             lambda e=chosen, p=precision, d=device: e.open(bundle, replace(options, precision=p,
                                                                                             device=d)),
                             None if precision == "fp32" else check))
    return out


def pipeline_kind(bundle: Bundle) -> str:
    """The bundle's pipeline ("single" graph or "latent_ddim"); a ValueError for one this version does not know."""
    kind = bundle.meta.get("pipeline", {}).get("kind", "single")
    if kind not in PIPELINES:
        raise ValueError(f"{bundle.path} needs pipeline {kind!r}, which this edge_ad "
                         f"{bundle.meta.get('edge_ad_version')} does not know; upgrade edge_ad")
    return kind
