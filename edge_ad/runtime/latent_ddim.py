"""The runtime side of the latent diffusion models: four graphs and the few-step DDIM loop between them.

A DiffAD bundle has `pipeline = {"kind": "latent_ddim", "graphs": {...}, ...}` in meta.json and four
ONNX graphs: `encoder` (uint8 frames -> condition latent c), `denoiser` (latent, cond, timestep ->
predicted noise), `decoder` (latent, cond -> reconstruction and interpolation) and `segmentation`
(frames, reconstruction, interpolation -> raw map). `DdimPipeline` runs the loop: the starting latent
is drawn once from the bundle's seed; each step is one denoiser run and one `ddim_step` kernel call,
in place on the latent. The number of steps is a runtime choice (`steps`, the bundle's default 5).

On ONNX Runtime the latents live in host memory between the graphs (CPU provider: where they are
anyway). Keeping them on the GPU between steps and capturing the loop in a CUDA graph is the job of
the TensorRT and PyTorch CUDA backends, which do not exist yet (the TensorRT issue): unverified and
not claimed here. Never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edge_ad.bundle import Bundle
from edge_ad.runtime.noise_schedules import DdimSchedule, ddim_schedule, seeded_normal
from edge_ad.postprocess import ddim_step

__all__ = ["DdimPipeline", "LatentDdimBackend", "PARTS"]

PARTS = ("encoder", "denoiser", "decoder", "segmentation")
Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class DdimPipeline:
    """infer(uint8 N x H x W x 3) -> raw maps, from four callables {input name: array} -> [outputs]."""

    def __init__(self, parts: dict[str, Run], pipeline: dict, *, steps: int | None = None,
                 seed: int | None = None) -> None:
        missing = set(PARTS) - set(parts)
        if missing:
            raise ValueError(f"the DDIM pipeline needs graphs {PARTS}, missing {sorted(missing)}")
        self.parts = parts
        self.pipeline = pipeline
        self.steps = int(steps or pipeline["steps"])
        self.plan: DdimSchedule = ddim_schedule(self.steps, timesteps=pipeline["timesteps"],
                                                beta_start=pipeline["beta_start"], beta_end=pipeline["beta_end"])
        self.start = seeded_normal(int(pipeline["seed"] if seed is None else seed), (1, *pipeline["latent_shape"]))
        self.clamp = pipeline.get("clamp")

    def sample(self, cond: np.ndarray, latent: np.ndarray | None = None) -> np.ndarray:
        """The deterministic DDIM loop from `latent` (default: the seeded start) under condition `cond`."""
        n = cond.shape[0]
        start = self.start if latent is None else latent
        z = np.broadcast_to(start, cond.shape).astype(np.float32, order="C")      # a copy: updated in place
        for t, a_t, a_prev in zip(self.plan.timesteps, self.plan.alpha_bar, self.plan.alpha_bar_prev):
            (eps,) = self.parts["denoiser"]({"latent": z, "cond": cond, "timestep": np.full(n, t, np.float32)})
            ddim_step(z, np.ascontiguousarray(eps, dtype=np.float32), a_t, a_prev, clamp=self.clamp, out=z)
        return z

    def infer(self, batch: np.ndarray, latent: np.ndarray | None = None) -> np.ndarray:
        (cond,) = self.parts["encoder"]({"images": batch})
        cond = np.ascontiguousarray(cond, dtype=np.float32)
        z0 = self.sample(cond, latent)
        recon, inter = self.parts["decoder"]({"latent": z0, "cond": cond})
        (raw,) = self.parts["segmentation"]({"images": batch, "recon": recon, "inter": inter})
        return raw


class LatentDdimBackend:
    """A DiffAD bundle on ONNX Runtime: one session per graph, the loop in `DdimPipeline`."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, device: str = "auto", threads: int | None = None,
                 steps: int | None = None, seed: int | None = None) -> None:
        from edge_ad.runtime.onnxruntime import ort_session

        pipeline = bundle.meta["pipeline"]
        self.sessions = {}
        for part in PARTS:
            self.sessions[part], self.device = ort_session(bundle.file(pipeline["graphs"][part]), device=device,
                                                           threads=threads)
        self.pipeline = DdimPipeline({p: _runner(s) for p, s in self.sessions.items()}, pipeline,
                                     steps=steps, seed=seed)

    @property
    def steps(self) -> int:
        return self.pipeline.steps

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.pipeline.infer(batch)


def _runner(session) -> Run:
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, feeds)
    return run


def sessions_from_dir(folder: Path, graphs: dict[str, str]) -> dict[str, Run]:
    """CPU sessions of a bundle's graphs still in their (temporary) folder: the export's parity check."""
    import onnxruntime as ort

    return {part: _runner(ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"]))
            for part, name in graphs.items()}
