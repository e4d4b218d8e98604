"""The runtime side of the latent diffusion models: four graphs and the few-step DDIM loop between them.

A DiffAD bundle has `pipeline = {"kind": "latent_ddim", "graphs": {...}, ...}` in meta.json and four
ONNX graphs: `encoder` (uint8 frames -> condition latent c), `denoiser` (latent, cond, timestep ->
predicted noise), `decoder` (latent, cond -> reconstruction and interpolation) and `segmentation`
(frames, reconstruction, interpolation -> raw map). `DdimPipeline` chains them around the host loop
of the bundle's `DdimPlan` (edge_ad/runtime/ddim_plan.py: the starting latent drawn once from the
seed; each step one denoiser run and one `ddim_step` kernel call, in place on the latent). The number
of steps is a runtime choice (`steps`, the bundle's default 5).

The parts are any callables; on ONNX Runtime (`LatentDdimBackend` in edge_ad/runtime/onnxruntime.py)
the latents live in host memory between the graphs (CPU provider: where they are anyway). Keeping them on the GPU between steps and capturing the loop in a CUDA graph is the job of
the TensorRT backend (edge_ad/runtime/tensorrt.py) and the torch backend on CUDA. Never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from edge_ad.runtime.ddim_plan import DdimPlan

__all__ = ["DdimPipeline", "PARTS", "session_runner", "sessions_from_dir"]

PARTS = ("encoder", "denoiser", "decoder", "segmentation")
Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class DdimPipeline:
    """infer(uint8 N x H x W x 3) -> raw maps, from four callables {input name: array} -> [outputs].

    `plan`: the resolved DDIM plan; without it, one is resolved from `pipeline` (meta.json's) and
    `steps`/`seed`, as the export's parity check does."""

    def __init__(self, parts: dict[str, Run], pipeline: Mapping | None = None, *, steps: int | None = None,
                 seed: int | None = None, plan: DdimPlan | None = None) -> None:
        missing = set(PARTS) - set(parts)
        if missing:
            raise ValueError(f"the DDIM pipeline needs graphs {PARTS}, missing {sorted(missing)}")
        if plan is None and pipeline is None:
            raise ValueError("DdimPipeline needs the bundle's pipeline meta or a resolved DdimPlan")
        self.parts = parts
        self.plan = plan if plan is not None else DdimPlan.from_pipeline(pipeline, steps=steps, seed=seed)

    @property
    def steps(self) -> int:
        return self.plan.steps

    def _denoise(self, z: np.ndarray, cond: np.ndarray, t: np.ndarray) -> np.ndarray:
        (eps,) = self.parts["denoiser"]({"latent": z, "cond": cond, "timestep": t})
        return eps

    def sample(self, cond: np.ndarray, latent: np.ndarray | None = None) -> np.ndarray:
        """The deterministic DDIM loop from `latent` (default: the seeded start) under condition `cond`."""
        return self.plan.sample_host(cond, self._denoise, latent)

    def infer(self, batch: np.ndarray, latent: np.ndarray | None = None) -> np.ndarray:
        (cond,) = self.parts["encoder"]({"images": batch})
        cond = np.ascontiguousarray(cond, dtype=np.float32)
        z0 = self.sample(cond, latent)
        recon, inter = self.parts["decoder"]({"latent": z0, "cond": cond})
        (raw,) = self.parts["segmentation"]({"images": batch, "recon": recon, "inter": inter})
        return raw


def session_runner(session) -> Run:
    """An ONNX Runtime session as a part of the pipeline: {input name: array} -> [outputs]."""
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, feeds)
    return run


def sessions_from_dir(folder: Path, graphs: dict[str, str]) -> dict[str, Run]:
    """CPU sessions of a bundle's graphs still in their (temporary) folder: the export's parity check."""
    import onnxruntime as ort

    return {part: session_runner(ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"]))
            for part, name in graphs.items()}
