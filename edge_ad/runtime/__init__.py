"""The runtime: load a bundle and run it, with no PyTorch on this path (the torch backend aside).

backend="auto": TensorRT when it imports and a CUDA GPU is present, else ONNX Runtime with the CUDA
provider when it works, else ONNX Runtime on the CPU. Or name one:

- "tensorrt": the bundle's FP16 engine for this GPU (built on first use; unverified, see tensorrt.py);
- "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda";
- "torch", "torch-cpu", "torch-cuda": the bundle's checkpoint in PyTorch (needs torch; on CUDA with
  FP16 autocast and CUDA graphs): the reference TensorRT is compared with, and the fallback;
- "triton": a Triton Inference Server holding the bundle's model repository (`triton_url=`).
"""

from __future__ import annotations

from pathlib import Path

from edge_ad.bundle import Bundle, read_bundle
from edge_ad.runtime.detector import Detector
from edge_ad.runtime.result import InferenceError, Result

__all__ = ["Detector", "InferenceError", "Result", "load", "BACKENDS"]

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "torch", "torch-cpu",
            "torch-cuda", "triton")


def load(bundle: str | Path, backend: str = "auto", *, color: str = "BGR", threads: int | None = None,
         steps: int | None = None, seed: int | None = None, batch: tuple[int, int, int] = (1, 1, 8),
         cuda_graph: bool = True, build_engine: bool = True, triton_url: str | None = None) -> Detector:
    """Open a bundle (checking its format and checksums) and build a Detector on the chosen backend.

    `steps`: DDIM steps of a diffusion bundle (DiffAD; default the bundle's, 5). `seed`: the seed of
    the inference noise (SPR's perturbations, DiffAD's starting latent; default the bundle's).
    TensorRT: `batch` = (min, opt, max) of the engine's profile, `cuda_graph` captures each frame's work,
    `build_engine=False` refuses to build a missing engine. `triton_url`: host:port of the gRPC endpoint."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    b = read_bundle(bundle)
    kind = b.meta.get("pipeline", {}).get("kind", "single")
    if kind not in ("single", "latent_ddim"):
        raise ValueError(f"{b.path} needs pipeline {kind!r}, which this edge_ad {b.meta.get('edge_ad_version')} "
                         "does not know; upgrade edge_ad")
    if steps is not None and kind != "latent_ddim":
        raise ValueError(f"steps apply to diffusion bundles; {b.model_name} has no DDIM loop")
    if backend == "auto":
        from edge_ad.runtime.tensorrt import tensorrt_missing

        backend = "tensorrt" if tensorrt_missing() is None else "onnxruntime"
    if backend == "tensorrt":
        made = _tensorrt(b, kind, steps=steps, seed=seed, batch=batch, cuda_graph=cuda_graph, build=build_engine)
    elif backend.startswith("torch"):
        from edge_ad.training.torch_backend import TorchBackend

        made = TorchBackend(b, device={"torch-cpu": "cpu", "torch-cuda": "cuda"}.get(backend, "auto"),
                            steps=steps, seed=seed, cuda_graph=cuda_graph)
    elif backend == "triton":
        from edge_ad.runtime.triton_client import TritonBackend

        if kind != "single":
            raise ValueError("the Triton backend serves single-graph bundles; DiffAD's loop runs in edge_ad")
        made = TritonBackend(b, url=triton_url or "localhost:8001", seed=seed)
    else:
        made = _onnxruntime(b, kind, backend, threads=threads, steps=steps, seed=seed)
    return Detector(b, made, color=color)


def _onnxruntime(b: Bundle, kind: str, backend: str, **kw):
    device = {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda"}.get(backend, "auto")
    if kind == "latent_ddim":
        from edge_ad.runtime.latent_ddim import LatentDdimBackend

        return LatentDdimBackend(b, device=device, threads=kw["threads"], steps=kw["steps"], seed=kw["seed"])
    from edge_ad.runtime.inputs import seeded_inputs
    from edge_ad.runtime.onnxruntime import OrtBackend

    feeds = seeded_inputs(b.meta.get("graph_inputs", {}), kw["seed"])
    return OrtBackend(b.file("model.onnx"), device=device, threads=kw["threads"], feeds=feeds,
                      input_hw=(b.meta["input"]["height"], b.meta["input"]["width"]))


def _tensorrt(b: Bundle, kind: str, *, steps, seed, batch, cuda_graph: bool, build: bool):
    from edge_ad.runtime.tensorrt import TrtBackend, TrtDdimBackend, load_plan, tensorrt_missing

    reason = tensorrt_missing()
    if reason:
        raise RuntimeError(f"backend 'tensorrt' cannot run here: {reason}; use backend='onnxruntime'")
    if "fp16" not in b.meta:
        from edge_ad.bundle import BundleError

        raise BundleError(f"{b.path} has no FP16 graphs for TensorRT (exported by edge_ad "
                          f"{b.meta.get('edge_ad_version')}); re-export it with `edge-ad export RUN --out BUNDLE`")
    if kind == "latent_ddim":
        plans = {part: load_plan(b, half, batch=batch, build=build)
                 for part, half in _fp16_parts(b).items()}
        return TrtDdimBackend(plans, b.meta["pipeline"], steps=steps, seed=seed, cuda_graph=cuda_graph,
                              spec=b.meta["heatmap"])
    from edge_ad.runtime.inputs import seeded_inputs

    plan = load_plan(b, b.meta["fp16"]["model.onnx"], batch=batch, build=build)
    return TrtBackend(plan, b.meta["heatmap"], cuda_graph=cuda_graph,
                      feeds=seeded_inputs(b.meta.get("graph_inputs", {}), seed))


def _fp16_parts(b: Bundle) -> dict[str, str]:
    graphs = b.meta["pipeline"]["graphs"]
    return {part: b.meta["fp16"][graph] for part, graph in graphs.items()}
