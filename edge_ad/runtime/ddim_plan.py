"""The DDIM plan of a diffusion bundle, resolved once at load: steps, timesteps, alphas, seeded start.

A DiffAD bundle's meta.json `pipeline` holds the few numbers the schedule comes from (timesteps,
beta_start, beta_end, the default steps, the noise seed, the latent shape, the optional clamp). The
user may choose `steps` and `seed` at load. `DdimPlan.from_pipeline` turns both into one object that
every backend runs: ONNX Runtime through `sample_host` (the host loop, written once here), TensorRT
through its device loop (edge_ad/runtime/tensorrt.py) and the torch backend through the model's own
loop, each given the same timesteps, alphas and start latent. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np

from edge_ad.postprocess import ddim_step
from edge_ad.runtime.noise_schedules import DdimSchedule, ddim_schedule, seeded_normal

__all__ = ["DdimPlan", "Denoise"]

# (latent z_t, condition c, timesteps N float32) -> predicted noise, on the host
Denoise = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class DdimPlan:
    """The deterministic DDIM loop of one loaded bundle: per step (t, alpha_bar_t, alpha_bar_prev),
    the seeded starting latent (1 x C x h x w float32) and the optional x0 clamp."""

    schedule: DdimSchedule
    start: np.ndarray = field(repr=False)
    clamp: float | None = None

    @classmethod
    def from_pipeline(cls, pipeline: Mapping, *, steps: int | None = None, seed: int | None = None) -> "DdimPlan":
        """The plan of a bundle's meta.json `pipeline`; `steps`/`seed` override the bundle's defaults."""
        count = int(pipeline["steps"] if steps is None else steps)
        schedule = ddim_schedule(count, timesteps=pipeline["timesteps"], beta_start=pipeline["beta_start"],
                                 beta_end=pipeline["beta_end"])
        start = seeded_normal(int(pipeline["seed"] if seed is None else seed), (1, *pipeline["latent_shape"]))
        return cls(schedule, start, pipeline.get("clamp"))

    @property
    def steps(self) -> int:
        return len(self.schedule)

    @property
    def timesteps(self) -> tuple[int, ...]:
        return self.schedule.timesteps

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.start.shape[1:])

    def alphas(self) -> Iterator[tuple[float, float]]:
        """(alpha_bar_t, alpha_bar_prev) per step, in loop order."""
        return zip(self.schedule.alpha_bar, self.schedule.alpha_bar_prev)

    def sample_host(self, cond: np.ndarray, denoise: Denoise, latent: np.ndarray | None = None) -> np.ndarray:
        """The loop on the host from `latent` (default: the seeded start) under condition `cond`: each step
        one `denoise` call and one `ddim_step` kernel call, in place on the latent."""
        n = cond.shape[0]
        start = self.start if latent is None else latent
        z = np.broadcast_to(start, cond.shape).astype(np.float32, order="C")      # a copy: updated in place
        for t, (a_t, a_prev) in zip(self.timesteps, self.alphas()):
            eps = denoise(z, cond, np.full(n, t, np.float32))
            ddim_step(z, np.ascontiguousarray(eps, dtype=np.float32), a_t, a_prev, clamp=self.clamp, out=z)
        return z
