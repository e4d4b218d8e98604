"""The diffusion models' shared parts: schedules, DDIM timesteps, seeded noise, the U-Net configurations,
DRAEM-style anomaly synthesis and the focal loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edge_ad.runtime.noise_schedules import (alphas_cumprod, ddim_schedule, ddim_timesteps, scaled_linear_betas,
                                      seeded_normal, ve_sigma)
from edge_ad.models.draem import AnomalySynthesizer, focal_loss, perlin
from edge_ad.models.unet import PlainBlock, ResBlock, SelfAttention, UNet


def test_ve_sigma_at_the_scoring_time_is_the_papers() -> None:
    assert float(ve_sigma(1e-3)) == pytest.approx(0.0317, abs=5e-4)          # SPECS: sigma ~ 0.0317
    assert float(ve_sigma(1.0)) == pytest.approx(math.sqrt((25 ** 2 - 1) / (2 * math.log(25))))


def test_scaled_linear_betas_run_from_start_to_end_in_sqrt_space() -> None:
    betas = scaled_linear_betas(1000, 0.0015, 0.02)
    assert betas[0] == pytest.approx(0.0015) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(np.sqrt(betas)), np.diff(np.sqrt(betas))[0])
    abar = alphas_cumprod(betas)
    assert np.all(np.diff(abar) < 0) and abar[-1] < 1e-3
    with pytest.raises(ValueError, match="beta_start < beta_end"):
        scaled_linear_betas(1000, 0.02, 0.0015)


@pytest.mark.parametrize("steps, expected", [(1, [999]), (5, [999, 799, 599, 399, 199]),
                                             (10, list(range(999, 0, -100)))])
def test_ddim_timesteps_start_at_the_last_timestep(steps: int, expected: list[int]) -> None:
    assert ddim_timesteps(1000, steps).tolist() == expected


def test_ddim_schedule_chains_alpha_bars_and_ends_clean() -> None:
    plan = ddim_schedule(5)
    abar = alphas_cumprod(scaled_linear_betas())
    assert list(plan.alpha_bar) == pytest.approx([abar[t] for t in plan.timesteps])
    assert list(plan.alpha_bar_prev[:-1]) == pytest.approx(list(plan.alpha_bar[1:]))
    assert plan.alpha_bar_prev[-1] == 1.0
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        ddim_schedule(0)


def test_seeded_noise_is_reproducible_and_seed_dependent() -> None:
    a, b, c = seeded_normal(3, (2, 4, 8, 8)), seeded_normal(3, (2, 4, 8, 8)), seeded_normal(4, (2, 4, 8, 8))
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(float(a.mean())) < 0.1 and float(a.std()) == pytest.approx(1.0, abs=0.1)


def test_spr_unet_is_table_1() -> None:
    net = UNet(3, 3, (64, 128, 256, 512, 512), block="plain", time_dim=256, shrink_decoder=True)
    blocks = [m for m in net.modules() if isinstance(m, PlainBlock)]
    assert len(blocks) == 9 and all(b.time is not None and b.time.in_features == 256 for b in blocks)
    encoder = [lvl.block.body[0].out_channels for lvl in net.encoder]
    decoder = [lvl.block.body[0].out_channels for lvl in net.decoder]
    assert encoder == [64, 128, 256, 512, 512] and decoder == [256, 128, 64, 64]
    assert all(m.num_groups == 32 for m in net.modules() if isinstance(m, nn.GroupNorm))
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 4
    assert net.head[-1].kernel_size == (1, 1) and net.head[-1].out_channels == 3


def test_unet_configurations_keep_the_resolution() -> None:
    x = torch.randn(2, 8, 16, 16)
    denoiser = UNet(8, 4, (16, 32, 32), block="residual", time_dim=64, attention=(1, 2), down="conv", up="nearest")
    assert denoiser(x, torch.tensor([3.0, 700.0])).shape == (2, 4, 16, 16)
    assert sum(isinstance(m, SelfAttention) for m in denoiser.modules()) == 3      # levels 1, 2 down + 1 up
    assert all(b.time is not None for b in denoiser.modules() if isinstance(b, ResBlock))
    seg = UNet(9, 2, (8, 16, 16), norm="batch", activation="relu", time_dim=None)
    assert seg(torch.randn(2, 9, 32, 32)).shape == (2, 2, 32, 32)
    assert any(isinstance(m, nn.BatchNorm2d) for m in seg.modules()) and seg.time is None


def test_time_embedding_changes_the_output() -> None:
    torch.manual_seed(0)
    net = UNet(3, 3, (8, 16), time_dim=32, time_scale=1000.0).eval()
    x = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(net(x, torch.tensor([1e-3])), net(x, torch.tensor([0.5])))


def test_perlin_noise_is_smooth_and_bounded() -> None:
    noise = perlin(np.random.default_rng(0), (64, 64), (4, 4))
    assert noise.shape == (64, 64) and np.abs(noise).max() < 1.0 and noise.std() > 0.05
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2        # gradient noise: no jumps between pixels


def test_synthesized_anomalies_stay_inside_their_masks() -> None:
    synth = AnomalySynthesizer(32, textures=3, probability=1.0, seed=0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    augmented, masks = synth(x)
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0} and all(m.sum() > 0 for m in masks)
    outside = masks.expand_as(x) == 0
    assert torch.equal(augmented[outside], x[outside])
    assert (augmented - x).abs()[~outside].mean() > 0.05
    none = AnomalySynthesizer(32, textures=3, probability=0.0, seed=0)
    same, empty = none(x)
    assert torch.equal(same, x) and empty.sum() == 0


def test_focal_loss_weights_the_log_loss_by_the_error() -> None:
    p = torch.tensor([0.9, 0.2]).reshape(1, 1, 1, 2)
    probabilities = torch.cat([1 - p, p], dim=1)
    target = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    expected = (-(0.1 ** 2) * math.log(0.9) - (0.2 ** 2) * math.log(0.8)) / 2
    assert float(focal_loss(probabilities, target)) == pytest.approx(expected, rel=1e-5)
