"""PyTorch backend: the bundle's checkpoint run in PyTorch, the reference and the fallback of TensorRT.

On the CPU: eager FP32, the model as the bundle's graph computes it (folded where the model folds).
On CUDA: FP16 autocast, the heatmap CUDA kernel on the raw map in device memory, and with `cuda_graph`
each batch size's forward + heatmap captured once as a CUDA graph (`torch.cuda.graph`) and replayed,
with the frames staged in pinned host memory and copied into a fixed input tensor. Only the scores and
maps come back to the host. `channels_last` and `autotune` (cuDNN's autotuner while warming up and
capturing) are off by default: on the H100 they changed SimpleNet, MKD and UniAD by -0% to +7% (within
run-to-run spread) and slowed SPR and DiffAD by 8-16% (benchmarks/results/gpu-h100/gpu-check-run2.json).

The CUDA path was verified on an NVIDIA H100 (torch 2.11, CUDA 13.0) on 2026-11-26 by the GPU check
(benchmarks/gpu_check.py; figures in benchmarks/results/gpu-h100/). Needs torch (this module alone
imports it; the rest of edge_ad.runtime never does), and the bundle's checkpoint.pt, read with
`weights_only=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_ad.bundle import Bundle, BundleError
from edge_ad.runtime.backend import BaseBackend, LoadOptions
from edge_ad.runtime.ddim_plan import DdimPlan
from edge_ad.models.base import LATENT_DDIM
from edge_ad.postprocess import HeatmapSpec

log = logging.getLogger(__name__)

__all__ = ["TorchBackend", "model_config", "open_torch"]

MAX_UNRECORDED = 64           # perturbations / latent channels of a bundle that records no shape for them


class TorchBackend(BaseBackend):
    """infer(uint8 N x H x W x 3) -> raw maps; on CUDA also infer_heatmap(batch, maps=...) (`device_heatmap`).

    A diffusion bundle runs the model's own DDIM loop with the bundle's `DdimPlan` (its steps and seeded
    start latent): `plan`, or one resolved from meta.json's pipeline and `steps`/`seed`."""

    name = "torch"

    def __init__(self, bundle: Bundle, *, device: str = "auto", steps: int | None = None, seed: int | None = None,
                 cuda_graph: bool = True, channels_last: bool = False, autotune: bool = False,
                 plan: DdimPlan | None = None) -> None:
        import torch

        from edge_ad.training.adapter import UInt8Input

        self.torch = torch
        if "checkpoint.pt" not in bundle.meta.get("files", {}):
            raise BundleError(f"{bundle.path} carries no checkpoint.pt, which the torch backend runs; bundles from "
                              "`edge-ad export RUN --out BUNDLE` have one")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("backend 'torch-cuda' needs a CUDA build of torch and a GPU; use 'torch-cpu'")
        self.device = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
        config = model_config(bundle)
        if seed is not None:
            config["noise_seed"] = int(seed)
        _check_model_size(torch, bundle, config)
        model = _build(bundle, config)
        state = _load_weights(torch, bundle.file("checkpoint.pt"))
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError, TypeError) as err:
            raise BundleError(f"{bundle.file('checkpoint.pt')} does not fit the model meta.json's config describes "
                              f"({str(err).splitlines()[0][:200]}); re-export the bundle from its run") from err
        model.eval()
        self.diffusion = model.PIPELINE == LATENT_DDIM
        if steps is not None and not self.diffusion:
            raise ValueError(f"steps apply to diffusion bundles; {bundle.model_name} has no DDIM loop")
        self.plan = (plan or DdimPlan.from_pipeline(bundle.meta["pipeline"], steps=steps, seed=seed)) \
            if self.diffusion else None
        core = model.folded()
        self.module = UInt8Input(core, model.mean, model.std).eval().to(self.device)
        on_cuda = self.device.type == "cuda"
        if channels_last and on_cuda:      # NHWC uint8 frames arrive channels-last already
            self.module = self.module.to(memory_format=torch.channels_last)
        self.autotune = autotune and on_cuda
        self.device_heatmap = on_cuda
        self.start_latent = None if self.plan is None else torch.from_numpy(self.plan.start).to(self.device)
        self.spec = HeatmapSpec.from_meta(bundle.meta["heatmap"])
        self.cuda_graph = cuda_graph
        self.graphs: dict[tuple[int, ...], tuple] = {}
        self.staging: dict[tuple[int, ...], object] = {}
        log.info("torch backend for %s on %s%s", bundle.model_name, self.device,
                 " (FP16 autocast, CUDA graphs)" if self.device.type == "cuda" and cuda_graph else "")

    def _forward(self, images):
        torch = self.torch
        cudnn, benchmark = torch.backends.cudnn, torch.backends.cudnn.benchmark
        cudnn.benchmark = benchmark or self.autotune     # the fastest kernels for these shapes, found once
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16,
                                                        enabled=self.device.type == "cuda", cache_enabled=False):
                if self.plan is not None:
                    raw = self.module.model(self.module.normalize(images), latent=self.start_latent,
                                            steps=self.plan.steps)
                else:
                    raw = self.module(images)
        finally:
            cudnn.benchmark = benchmark
        return raw.float()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        images = self.torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return self._forward(images).cpu().numpy()

    @property
    def steps(self) -> int | None:
        """DDIM steps of a diffusion bundle; None for the others."""
        return None if self.plan is None else self.plan.steps

    def _post(self, raw):
        return self.spec.apply(raw.contiguous(), threads=None)

    def infer_heatmap(self, batch: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """On CUDA: forward + heatmap kernel on the device (a CUDA graph per batch shape with `cuda_graph`)."""
        if not self.device_heatmap:
            return super().infer_heatmap(batch, maps=maps)
        host = self._staged(batch)
        if not self.cuda_graph:
            out, scores = self._post(self._forward(host.to(self.device, non_blocking=True)))
        else:
            static_in, out, scores, graph = self._graph_for(tuple(batch.shape))
            static_in.copy_(host, non_blocking=True)
            graph.replay()
        scores_host = scores.cpu().numpy()        # waits for the stream: the staging buffer is free again
        return (out.cpu().numpy() if maps else None), scores_host

    def _staged(self, batch: np.ndarray):
        """The batch in a pinned host buffer of its shape, so the copy to the GPU is one asynchronous DMA."""
        shape = tuple(batch.shape)
        if shape not in self.staging:
            self.staging[shape] = self.torch.empty(shape, dtype=self.torch.uint8, pin_memory=True)
        buffer = self.staging[shape]
        np.copyto(buffer.numpy(), batch, casting="no")
        return buffer

    def _graph_for(self, shape: tuple[int, ...]) -> tuple:
        """Capture forward + heatmap for one input shape (after warm-up runs on a side stream)."""
        if shape not in self.graphs:
            torch = self.torch
            static_in = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._post(self._forward(static_in))
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out, scores = self._post(self._forward(static_in))
            self.graphs[shape] = (static_in, out, scores, graph)
        return self.graphs[shape]

    def close(self) -> None:
        self.graphs.clear()
        self.staging.clear()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def model_config(bundle: Bundle) -> dict:
    """The constructor arguments of the bundle's model, from meta.json's config (its sizes already bounded
    and matched to the graph by the schema): image_size is required, and `weights` (a file outside the
    bundle, which no checksum covers) is refused; pretrained is always off (the checkpoint has the weights)."""
    config = dict(bundle.meta.get("config") or {})
    where = f"{bundle.path}: meta.json field config"
    if "image_size" not in config:
        raise BundleError(f"{where}.image_size is missing, so the model's input size is unknown; re-export the bundle "
                          "with `edge-ad export RUN --out BUNDLE`")
    if "weights" in config:
        raise BundleError(f"{where}.weights names a file outside the bundle, which no checksum covers; refusing it: "
                          "re-export the bundle (its checkpoint.pt has the weights)")
    _check_buffers(bundle, config, where)
    return {**config, "pretrained": False}


def _check_buffers(bundle: Bundle, config: dict, where: str) -> None:
    """The arguments that size a model's fixed per-image buffers (allocated while it is built, before any
    size check could run) must be the sizes meta.json records for them, which the schema bounds: SPR's
    `perturbations` (its noise input, graph_inputs) and DiffAD's `latent_channels` (pipeline.latent_shape)."""
    shapes = [spec.get("shape") for spec in (bundle.meta.get("graph_inputs") or {}).values()]
    latent = (bundle.meta.get("pipeline") or {}).get("latent_shape")
    for key, recorded in (("perturbations", [s[0] for s in shapes if isinstance(s, list) and len(s) == 4]),
                          ("latent_channels", [latent[0]] if isinstance(latent, list) and latent else [])):
        if key in config and not (recorded and config[key] == recorded[0]) and \
                not (not recorded and isinstance(config[key], int) and 1 <= config[key] <= MAX_UNRECORDED):
            raise BundleError(f"{where}.{key} is {config[key]!r}, but the bundle records "
                              f"{recorded[0] if recorded else 'no shape for it'}: the config was edited or damaged; "
                              "re-export the bundle")


def _build(bundle: Bundle, config: dict):
    """create_model, its errors (an unknown option, a backbone timm does not know) as a BundleError."""
    from edge_ad.models import create_model

    try:
        return create_model(bundle.model_name, **config)
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise BundleError(f"{bundle.path}: the model meta.json describes cannot be built ({str(err).splitlines()[0][:200]}); "
                          "re-export the bundle from its run") from err


def _check_model_size(torch, bundle: Bundle, config: dict) -> None:
    """Build the model without memory (torch's meta device) and refuse it when its weights would be more
    than twice the bytes of the checkpoint that must hold them: a tampered config (a huge width) is
    caught before anything is allocated. Models that cannot be built that way are left to load_state_dict."""
    checkpoint = bundle.file("checkpoint.pt")
    try:
        with torch.device("meta"):
            model = _build(bundle, config)
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if torch.is_tensor(t))
    except BundleError:
        raise
    except Exception as err:  # noqa: BLE001 - a model whose construction needs real tensors
        log.debug("size check on the meta device skipped for %s: %s", bundle.model_name, err)
        return
    have = checkpoint.stat().st_size
    if weights > 2 * have + (1 << 20):
        raise BundleError(f"{bundle.path}: meta.json's config describes a model with {weights / 2**20:.0f} MiB of "
                          f"weights, but {checkpoint.name} has {have / 2**20:.0f} MiB: the config does not belong to "
                          "this checkpoint (edited or damaged); refusing to build it: re-export the bundle")


def _load_weights(torch, path: Path) -> dict:
    """Tensors and plain values only (weights_only=True): a checkpoint that would unpickle anything
    else, such as code, is refused with the file named."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise BundleError(f"{path} holds more than weights (pickled objects); refusing to load it: "
                          "re-export the bundle from a training run you trust") from err


def open_torch(bundle: Bundle, options: LoadOptions) -> TorchBackend:
    """The runtime registry's factory ("edge_ad.training.torch_backend:open_torch"): the checkpoint on
    `options.device`, a diffusion bundle with the plan resolved at load. Runs the checkpoint in FP32
    (FP16 autocast on CUDA): an INT8 graph or an OpenVINO hint is refused."""
    from edge_ad.runtime.precision import check_precision

    check_precision(options.precision, "torch", ("fp32",))
    return TorchBackend(bundle, device=options.device, seed=options.seed, cuda_graph=options.cuda_graph,
                        plan=options.plan)
