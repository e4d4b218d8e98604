"""SPR, anomaly detection by score-based perturbation resilience (Shin et al., ICCV 2023; paper 000).

A score network s(x, t) ~ grad_x log p_t(x) is trained from scratch on normal images by denoising
score matching under the VE SDE. A normal image is resilient: perturbed by small noise n, the score
points straight back (sigma^2 s(x + n) = -n), so the restoration error r = sigma^2 s(x + n) + n is
near zero. On an anomaly the score also pulls towards the normal manifold, and r is not zero.

- Network: the U-Net of the paper's Table 1 (`UNet(block="plain", shrink_decoder=True)`); its raw
  output is divided by sigma(t), so s = out / sigma and sigma^2 s = sigma * out.
- Training: t ~ U(1e-5, 1), loss = sum over pixels of (sigma s(x + sigma z, t) + z)^2; AdamW lr 1e-4,
  weight decay 1e-3; EMA of the weights (decay 0.9999), which are the ones scoring uses. The EMA decay
  is warmed up as min(decay, (1 + n) / (10 + n)) after n steps, so a short run does not score with
  weights that are still mostly the initial ones.
- Scoring: t = 1e-3, K = 3 perturbations n_k = sigma z_k; map = mean over k and channels of r_k^2 at
  the input resolution. The z_k are an input of the exported graph (`noise`, K x 3 x H x W), drawn from
  a seed once per stream (`runtime.noise_schedules.seeded_normal`). The heatmap kernel does the rest: a box average
  and image score = max. The paper up-samples 192 -> 256 and averages over 31 x 31; we keep the map at
  the input size (the masks' size) and scale the box to it (23 at 192 px, 15 at 128 px).

The time input of the network is 1000 t (the DDPM timestep convention), embedded sinusoidally (256).
"""

from __future__ import annotations

import copy
import math

import torch

from edge_ad.runtime.noise_schedules import SIGMA_MAX, seeded_normal
from edge_ad.models.base import AnomalyModel
from edge_ad.models.unet import UNet
from edge_ad.postprocess import HeatmapSpec

__all__ = ["SPR"]


class SPR(AnomalyModel):
    """forward(x, noise=None) -> N x 1 x H x W mean squared restoration error (higher = more anomalous)."""

    DEFAULTS = {
        "paper": {"epochs": 1000, "batch_size": 16},    # the papers give no schedule; ours
        "cpu": {"epochs": 60, "batch_size": 8,
                "model_kwargs": {"channels": (32, 64, 128, 256, 256), "image_size": 128}},
    }

    def __init__(self, channels: tuple[int, ...] = (64, 128, 256, 512, 512), *, image_size: int = 192,
                 resize_size: int | None = None, window: int | None = None, time_dim: int = 256,
                 sigma_max: float = SIGMA_MAX, score_t: float = 1e-3, perturbations: int = 3,
                 t_min: float = 1e-5, t_max: float = 1.0, lr: float = 1e-4, weight_decay: float = 1e-3,
                 ema_decay: float = 0.9999, noise_seed: int = 0, pretrained: bool = False) -> None:
        super().__init__()
        multiple = 2 ** (len(channels) - 1)
        if image_size % multiple:
            raise ValueError(f"image_size {image_size} must be a multiple of {multiple} for {len(channels)} U-Net levels")
        if perturbations < 1:
            raise ValueError(f"perturbations must be at least 1, got {perturbations}")
        channels = tuple(int(c) for c in channels)
        if window is None:      # the paper's 31 px box at 256 px maps, scaled to this size, odd
            window = 2 * int(round(31 * image_size / 256 / 2 - 0.5)) + 1
        self.config = dict(channels=list(channels), image_size=image_size, resize_size=resize_size or image_size,
                           window=window, time_dim=time_dim, sigma_max=sigma_max, score_t=score_t,
                           perturbations=perturbations, t_min=t_min, t_max=t_max, lr=lr, weight_decay=weight_decay,
                           ema_decay=ema_decay, noise_seed=noise_seed)
        self.net = UNet(3, 3, channels, block="plain", norm="group", activation="swish", time_dim=time_dim,
                        time_scale=1000.0, down="maxpool", up="bilinear", shrink_decoder=True)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        noise = seeded_normal(noise_seed, (perturbations, 3, image_size, image_size))
        self.register_buffer("noise", torch.from_numpy(noise), persistent=False)
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)        # [0, 1] -> [-1, 1]

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        s = self.config["sigma_max"]
        return torch.sqrt((torch.pow(torch.as_tensor(s, dtype=t.dtype), 2.0 * t) - 1.0) / (2.0 * math.log(s)))

    def score(self, x: torch.Tensor, t: torch.Tensor, *, ema: bool = True) -> torch.Tensor:
        """s(x, t) = network(x, 1000 t) / sigma(t), with the EMA weights unless ema=False."""
        net = self.ema if ema else self.net
        return net(x, t) / self.sigma(t)[:, None, None, None]

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        t = torch.rand(x.shape[0], device=x.device) * (c["t_max"] - c["t_min"]) + c["t_min"]
        z = torch.randn_like(x)
        sigma = self.sigma(t)[:, None, None, None]
        s = self.score(x + sigma * z, t, ema=False)
        return ((sigma * s + z) ** 2).sum(dim=(1, 2, 3)).mean()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.AdamW(self.net.parameters(), lr=self.config["lr"], weight_decay=self.config["weight_decay"])]

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA update of the scoring weights, decay warmed up over the first steps."""
        n = int(self.ema_steps)
        decay = min(self.config["ema_decay"], (1.0 + n) / (10.0 + n))
        for e, p in zip(self.ema.parameters(), self.net.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.net.buffers()):
            e.copy_(b)
        self.ema_steps += 1

    def graph_inputs(self) -> dict[str, torch.Tensor]:
        """The exported graph's inputs besides the images: the K unit-normal perturbations."""
        return {"noise": self.noise}

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Restoration-error map: mean over the K perturbations and the channels of (sigma^2 s(x + n_k) + n_k)^2."""
        noise = self.noise if noise is None else noise
        n, k = x.shape[0], noise.shape[0]
        t = torch.full((n * k,), self.config["score_t"], dtype=x.dtype, device=x.device)
        sigma = self.sigma(t[:1]).reshape(1, 1, 1, 1, 1)
        perturbation = sigma * noise[None]                                    # 1 x K x 3 x H x W
        perturbed = (x[:, None] + perturbation).reshape(n * k, *x.shape[1:])
        restored = sigma.reshape(1, 1, 1, 1) * self.ema(perturbed, t)         # sigma^2 s = sigma * out
        error = restored.reshape(n, k, *x.shape[1:]) + perturbation
        return (error ** 2).mean(dim=(1, 2))[:, None]

    def heatmap_spec(self) -> HeatmapSpec:
        size = self.config["image_size"]
        return HeatmapSpec(output_size=(size, size), smooth="box", window=self.config["window"], score_from="smoothed")
