"""DiffAD, surface anomaly detection with a latent diffusion model (Zhang et al., ICCV 2023; paper 001).

Reconstruct, then compare. Four parts, each its own exported graph and engine:

1. `autoencoder` (encoder + decoder): image [-1, 1] <-> latent 4 x H/8 x W/8, scaled to unit variance
   by `latent_scale` (measured on the training images when the denoiser stage starts).
2. `denoiser`: a U-Net on cat[z_t, c] (8 channels in, 4 out) predicting the noise, with the timestep
   embedded and added in every residual block and self-attention at the lower resolutions. DDPM with
   T = 1000 and the scaled-linear betas 0.0015..0.02 (`runtime/noise_schedules.py`).
3. Noisy condition embedding: c = encode(x). Training feeds the encoding of a (possibly synthetically
   anomalous) image, noised to its own random timestep (uniform below `condition_noise`, by default
   T), and asks for the noise of the clean normal
   image's latent; so the denoiser learns to produce the normal latent from a condition that may carry
   an anomaly. At test c is the clean encoding of the input.
4. Test: deterministic DDIM (eta = 0), `steps` steps (5 by default, the paper's timing), from a starting
   latent drawn once from a seed (`runtime.noise_schedules.seeded_normal`); x_r = decode(z0), x_inter =
   decode(0.5 z0 + 0.5 c). The segmentation head (DRAEM's discriminative U-Net) reads cat[x_r,
   x_inter, x] and its softmax's anomaly channel is the map; the image score is the max of its 21 x 21
   box average. A bundle's heat-map spec smooths map and score alike, so bundles show the box-averaged
   map (a departure for display only; the image score is the paper's).

Training runs in three stages (`STAGES`), each a `fit` of its own parameters with the earlier parts
frozen: the autoencoder (L1 + small KL), the denoiser (epsilon MSE, DRAEM-style synthetic anomalies in
the condition) and the segmentation head (focal loss, gamma 2, on synthetic anomalies reconstructed by
the real DDIM loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edge_ad.models.autoencoder import Autoencoder
from edge_ad.models.base import LATENT_DDIM, AnomalyModel
from edge_ad.runtime.noise_schedules import alphas_cumprod, ddim_schedule, scaled_linear_betas, seeded_normal
from edge_ad.models.draem import AnomalySynthesizer, focal_loss
from edge_ad.models.unet import UNet
from edge_ad.postprocess import HeatmapSpec

__all__ = ["DiffAD"]

STAGES = ("autoencoder", "denoiser", "segmentation")


class DiffAD(AnomalyModel):
    """forward(x, latent=None) -> N x 1 x H x W anomaly probability map of the segmentation head."""

    STAGES = STAGES
    PIPELINE = LATENT_DDIM          # exported as four graphs with the DDIM loop in the runtime
    DEFAULTS = {
        "paper": {"epochs": {"autoencoder": 200, "denoiser": 800, "segmentation": 700}, "batch_size": 8},
        # The CPU budget's condition noise stays below t = 250: with the full range and 60 denoiser epochs
        # the reconstructions were too rough and the image AUROC on `weave` was 0.63 (measured).
        "cpu": {"epochs": {"autoencoder": 40, "denoiser": 250, "segmentation": 80}, "batch_size": 8,
                "model_kwargs": {"image_size": 128, "ae_channels": (32, 64, 64, 128), "ae_attention": False,
                                 "unet_channels": (64, 128, 128), "seg_channels": (16, 32, 64, 128, 128),
                                 "ae_lr": 1e-3, "lr": 5e-4, "seg_lr": 1e-3, "condition_noise": 250}},
    }

    def __init__(self, *, image_size: int = 256, ae_channels: tuple[int, ...] = (128, 256, 512, 512),
                 ae_attention: bool = True, latent_channels: int = 4, unet_channels: tuple[int, ...] = (128, 256, 512),
                 unet_attention: tuple[int, ...] = (1, 2), seg_channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512),
                 timesteps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.02, steps: int = 5,
                 interpolation: float = 0.5, window: int = 21, noise_seed: int = 0, ae_lr: float = 1e-4,
                 lr: float = 1e-4, seg_lr: float = 1e-4, gamma: float = 2.0, condition_noise: int | None = None,
                 resize_size: int | None = None,
                 pretrained: bool = False) -> None:
        super().__init__()
        factor = 2 ** (len(ae_channels) - 1)
        latent_size = image_size // factor
        self._check_sizes(image_size, factor, latent_size, unet_channels, seg_channels)
        self.config = dict(image_size=image_size, resize_size=resize_size or image_size, ae_channels=list(ae_channels),
                           ae_attention=ae_attention, latent_channels=latent_channels,
                           unet_channels=list(unet_channels), unet_attention=list(unet_attention),
                           seg_channels=list(seg_channels), timesteps=timesteps, beta_start=beta_start,
                           beta_end=beta_end, steps=steps, interpolation=interpolation, window=window,
                           noise_seed=noise_seed, ae_lr=ae_lr, lr=lr, seg_lr=seg_lr, gamma=gamma,
                           condition_noise=condition_noise or timesteps)
        self.latent_shape = (latent_channels, latent_size, latent_size)
        self.autoencoder = Autoencoder(tuple(ae_channels), latent=latent_channels, attention=ae_attention)
        self.denoiser = UNet(2 * latent_channels, latent_channels, tuple(unet_channels), block="residual",
                             time_dim=4 * unet_channels[0], attention=tuple(unet_attention), down="conv", up="nearest")
        self.segmentation = UNet(9, 2, tuple(seg_channels), block="plain", norm="batch", activation="relu",
                                 time_dim=None, down="maxpool", up="bilinear")
        self.register_buffer("latent_scale", torch.ones(()))
        abar = alphas_cumprod(scaled_linear_betas(timesteps, beta_start, beta_end))
        self.register_buffer("alpha_bar", torch.from_numpy(abar).float(), persistent=False)
        start = seeded_normal(noise_seed, (1, *self.latent_shape))
        self.register_buffer("start_latent", torch.from_numpy(start), persistent=False)
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)        # [0, 1] -> [-1, 1]
        self.stage = STAGES[-1]
        self._synth: AnomalySynthesizer | None = None

    @staticmethod
    def _check_sizes(image: int, factor: int, latent: int, unet: tuple, seg: tuple) -> None:
        if image % factor or latent % 2 ** (len(unet) - 1):
            raise ValueError(f"image_size {image} must divide by {factor * 2 ** (len(unet) - 1)} "
                             f"(autoencoder factor {factor}, then {len(unet)} denoiser levels)")
        if image % 2 ** (len(seg) - 1):
            raise ValueError(f"image_size {image} must divide by {2 ** (len(seg) - 1)} for {len(seg)} segmentation levels")

    # --- the parts, as the exported graphs compute them -------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image [-1, 1] -> scaled latent c."""
        return self.autoencoder.encode(x) * self.latent_scale

    def denoise(self, z_t: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise of z_t at timesteps t (float, N) under condition c."""
        return self.denoiser(torch.cat([z_t, c], dim=1), t)

    def decode_pair(self, z0: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_r, x_inter) = decode(z0), decode(a z0 + (1 - a) c), in one batched decoder pass."""
        a = self.config["interpolation"]
        both = torch.cat([z0, a * z0 + (1 - a) * c]) / self.latent_scale
        out = self.autoencoder.decode(both)
        return out[: z0.shape[0]], out[z0.shape[0]:]

    def segment(self, x: torch.Tensor, recon: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
        """Anomaly-class probability map N x 1 x H x W."""
        logits = self.segmentation(torch.cat([recon, inter, x], dim=1))
        return torch.softmax(logits, dim=1)[:, 1:2]

    # --- inference ---------------------------------------------------------------------------------
    def sample(self, c: torch.Tensor, latent: torch.Tensor | None = None, steps: int | None = None) -> torch.Tensor:
        """The deterministic DDIM loop (the `ddim_step` kernel's formula), from `latent` or the seeded one."""
        plan = ddim_schedule(steps or self.config["steps"], timesteps=self.config["timesteps"],
                             beta_start=self.config["beta_start"], beta_end=self.config["beta_end"])
        z = (self.start_latent if latent is None else latent).expand(c.shape[0], -1, -1, -1)
        for t, a_t, a_prev in zip(plan.timesteps, plan.alpha_bar, plan.alpha_bar_prev):
            eps = self.denoise(z, c, torch.full((c.shape[0],), float(t), device=c.device))
            x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
            z = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        return z

    def forward(self, x: torch.Tensor, latent: torch.Tensor | None = None, steps: int | None = None) -> torch.Tensor:
        c = self.encode(x)
        recon, inter = self.decode_pair(self.sample(c, latent, steps), c)
        return self.segment(x, recon, inter)

    def reconstruct(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """x_r alone (for looking at what the reconstructive sub-network makes of an image)."""
        c = self.encode(x)
        return self.decode_pair(self.sample(c, None, steps), c)[0]

    def heatmap_spec(self) -> HeatmapSpec:
        size = self.config["image_size"]
        return HeatmapSpec(output_size=(size, size), smooth="box", window=self.config["window"], score_from="smoothed")

    # --- training ----------------------------------------------------------------------------------
    def set_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown DiffAD stage {stage!r}; the stages are {', '.join(STAGES)}")
        self.stage = stage

    def synthesizer(self) -> AnomalySynthesizer:
        if self._synth is None:
            seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())      # follows torch.manual_seed
            self._synth = AnomalySynthesizer(self.config["image_size"], seed=seed)
        return self._synth

    def prepare_training(self, batches) -> None:
        """Before the denoiser stage: scale latents to unit variance (latent diffusion's scale_by_std)."""
        if self.stage != "denoiser":
            return
        with torch.no_grad():
            latents = torch.cat([self.autoencoder.encode(b) for b in batches])
        self.latent_scale.fill_(1.0 / float(latents.std().clamp_min(1e-6)))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        part, lr = {"autoencoder": (self.autoencoder, "ae_lr"), "denoiser": (self.denoiser, "lr"),
                    "segmentation": (self.segmentation, "seg_lr")}[self.stage]
        return [torch.optim.Adam(part.parameters(), lr=self.config[lr])]

    def train(self, mode: bool = True) -> "DiffAD":
        super().train(mode)
        if mode:            # frozen parts stay in eval mode during the later stages
            for name in STAGES[: STAGES.index(self.stage)]:
                getattr(self, name).eval()
        return self

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.stage == "autoencoder":
            augmented, _ = self.synthesizer()(x)      # foreign textures too, so c can carry an anomaly
            return self.autoencoder.loss(augmented)
        if self.stage == "denoiser":
            return self._denoiser_loss(x)
        return self._segmentation_loss(x)

    def _noised(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[t][:, None, None, None]
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def _denoiser_loss(self, x: torch.Tensor) -> torch.Tensor:
        n, T = x.shape[0], self.config["timesteps"]
        with torch.no_grad():
            augmented, _ = self.synthesizer()(x)
            z0, c = self.encode(x), self.encode(augmented)
            s = torch.randint(0, self.config["condition_noise"], (n,), device=x.device)
            c = self._noised(c, s, torch.randn_like(c))
        t = torch.randint(0, T, (n,), device=x.device)
        noise = torch.randn_like(z0)
        return F.mse_loss(self.denoise(self._noised(z0, t, noise), c, t.float()), noise)

    def _segmentation_loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            augmented, mask = self.synthesizer()(x)
            c = self.encode(augmented)
            recon, inter = self.decode_pair(self.sample(c, torch.randn(x.shape[0], *self.latent_shape, device=x.device)), c)
        logits = self.segmentation(torch.cat([recon, inter, augmented], dim=1))
        return focal_loss(torch.softmax(logits, dim=1), mask, self.config["gamma"])

