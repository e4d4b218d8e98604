"""Noise schedules and DDIM timestep selection, in NumPy only.

Shared by the diffusion models (training, PyTorch inference) and the runtime's DDIM loop, which must
not import torch: both compute the same schedule from the same few numbers stored in the bundle.

- SPR: the variance-exploding SDE, sigma(t) = sqrt((sigma_max^(2t) - 1) / (2 ln sigma_max)), t in (0, 1].
- DiffAD: DDPM with T = 1000 and betas linear in sqrt space ("scaled linear", as latent diffusion),
  from 0.0015 to 0.02; alpha_bar_t = prod_{s <= t} (1 - beta_s).
- DDIM: `ddim_timesteps(T, steps)` spaces `steps` timesteps evenly and ends on the last one ("trailing"
  spacing), so even one step starts from t = T - 1, where the loop's pure-noise start belongs. The
  step after the last one uses alpha_bar = 1 (the clean image), as `DdimSchedule` lists it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DdimSchedule", "ddim_schedule", "seeded_normal", "ddim_timesteps", "alphas_cumprod", "scaled_linear_betas", "ve_sigma"]

SIGMA_MAX = 25.0


def ve_sigma(t: np.ndarray | float, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """Noise scale of the VE SDE at time t (SPR): sqrt((sigma_max^(2t) - 1) / (2 ln sigma_max))."""
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt((sigma_max ** (2.0 * t) - 1.0) / (2.0 * np.log(sigma_max)))


def scaled_linear_betas(timesteps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.02) -> np.ndarray:
    """Betas linear in sqrt space, squared (the latent-diffusion schedule DiffAD uses)."""
    if timesteps < 2:
        raise ValueError(f"a diffusion needs at least 2 timesteps, got {timesteps}")
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    return np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), timesteps, dtype=np.float64) ** 2


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """`steps` timesteps in decreasing order, evenly spaced, the first being timesteps - 1."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and {timesteps}, got {steps}")
    return np.round(np.arange(timesteps, 0, -timesteps / steps)).astype(np.int64)[:steps] - 1


@dataclass(frozen=True)
class DdimSchedule:
    """The deterministic DDIM loop's plan: per step the timestep and the (alpha_bar_t, alpha_bar_prev) pair."""

    timesteps: tuple[int, ...]
    alpha_bar: tuple[float, ...]
    alpha_bar_prev: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.timesteps)


def ddim_schedule(steps: int, *, timesteps: int = 1000, beta_start: float = 0.0015,
                  beta_end: float = 0.02) -> DdimSchedule:
    """The DDIM plan for `steps` steps of a scaled-linear DDPM."""
    abar = alphas_cumprod(scaled_linear_betas(timesteps, beta_start, beta_end))
    ts = ddim_timesteps(timesteps, steps)
    prev = [float(abar[t]) for t in ts[1:]] + [1.0]
    return DdimSchedule(tuple(int(t) for t in ts), tuple(float(abar[t]) for t in ts), tuple(prev))


def seeded_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal float32 noise from a seed: the same numbers in PyTorch, at export and in the runtime.

    Noise drawn at inference (SPR's perturbations, DiffAD's starting latent) is a graph input made by
    this function, so a still camera gives a still score and every backend sees the same noise."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
