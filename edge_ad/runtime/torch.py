"""PyTorch backend: the bundle's checkpoint run in PyTorch, the reference and the fallback of TensorRT.

On the CPU: eager FP32, the model as the bundle's graph computes it (folded where the model folds).
On CUDA: FP16 autocast, the heatmap CUDA kernel on the raw map in device memory, and with `cuda_graph`
each batch size's forward + heatmap captured once as a CUDA graph (`torch.cuda.graph`) and replayed,
with the frames copied into a fixed input tensor. Only the scores and maps come back to the host.

The CUDA path is unverified: no GPU has run it yet. Needs torch (this module alone imports it; the
rest of edge_ad.runtime never does), and the bundle's checkpoint.pt, read with `weights_only=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_ad.bundle import Bundle, BundleError

log = logging.getLogger(__name__)

__all__ = ["TorchBackend"]


class TorchBackend:
    """infer(uint8 N x H x W x 3) -> raw maps; on CUDA also infer_heatmap(batch, maps=...)."""

    name = "torch"

    def __init__(self, bundle: Bundle, *, device: str = "auto", steps: int | None = None, seed: int | None = None,
                 cuda_graph: bool = True) -> None:
        import torch

        from edge_ad.models import create_model
        from edge_ad.training.adapter import UInt8Input

        self.torch = torch
        if "checkpoint.pt" not in bundle.meta.get("files", {}):
            raise BundleError(f"{bundle.path} carries no checkpoint.pt, which the torch backend runs; bundles from "
                              "`edge-ad export RUN --out BUNDLE` have one")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("backend 'torch-cuda' needs a CUDA build of torch and a GPU; use 'torch-cpu'")
        self.device = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
        config = {**bundle.meta["config"], "pretrained": False}
        if seed is not None:
            config["noise_seed"] = int(seed)
        model = create_model(bundle.model_name, **config)
        state = _load_weights(torch, bundle.file("checkpoint.pt"))
        model.load_state_dict(state["model"])
        model.eval()
        self.diffusion = getattr(model, "PIPELINE", None) == "latent_ddim"
        if steps is not None and not self.diffusion:
            raise ValueError(f"steps apply to diffusion bundles; {bundle.model_name} has no DDIM loop")
        self.steps = int(steps or bundle.meta.get("pipeline", {}).get("steps", 0)) or None
        core = model.folded() if hasattr(model, "folded") else model
        self.module = UInt8Input(core, model.mean, model.std).eval().to(self.device)
        self.spec = bundle.meta["heatmap"]
        self.cuda_graph = cuda_graph
        self.graphs: dict[tuple[int, ...], tuple] = {}
        if self.device.type == "cuda":
            self.infer_heatmap = self._infer_heatmap_cuda
        log.info("torch backend for %s on %s%s", bundle.model_name, self.device,
                 " (FP16 autocast, CUDA graphs)" if self.device.type == "cuda" and cuda_graph else "")

    def _forward(self, images):
        torch = self.torch
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda",
                                                    cache_enabled=False):
            if self.diffusion:
                raw = self.module.model(self.module.normalize(images), steps=self.steps)
            else:
                raw = self.module(images)
        return raw.float()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        images = self.torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return self._forward(images).cpu().numpy()

    def _post(self, raw):
        from edge_ad.postprocess import heatmap

        s = self.spec
        return heatmap(raw.contiguous(), tuple(s["output_size"]), smooth=s["smooth"], sigma=s["sigma"],
                       window=s["window"], align_corners=s["align_corners"], score_from=s["score_from"])

    def _infer_heatmap_cuda(self, batch: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        torch = self.torch
        host = torch.from_numpy(np.ascontiguousarray(batch))
        if not self.cuda_graph:
            out, scores = self._post(self._forward(host.to(self.device, non_blocking=True)))
        else:
            static_in, out, scores, graph = self._graph_for(tuple(batch.shape))
            static_in.copy_(host, non_blocking=False)
            graph.replay()
        scores_host = scores.cpu().numpy()
        return (out.cpu().numpy() if maps else None), scores_host

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
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def _load_weights(torch, path: Path) -> dict:
    """Tensors and plain values only (weights_only=True): a checkpoint that would unpickle anything
    else, such as code, is refused with the file named."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise BundleError(f"{path} holds more than weights (pickled objects); refusing to load it: "
                          "re-export the bundle from a training run you trust") from err
