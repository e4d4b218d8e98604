"""DiffAD: the parts, the DDIM loop against the runtime's kernel loop, and the training stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_ad.models.diffad import DiffAD
from edge_ad.runtime.noise_schedules import ddim_schedule
from edge_ad.postprocess import ddim_step

TINY = dict(image_size=32, ae_channels=(8, 8, 16), ae_attention=False, unet_channels=(16, 16), unet_attention=(1,),
            seg_channels=(8, 8, 16))


def tiny(**kw) -> DiffAD:
    torch.manual_seed(0)
    return DiffAD(**{**TINY, **kw}).eval()


def test_parts_have_the_papers_shapes() -> None:
    model = tiny()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        c = model.encode(x)
        assert c.shape == (2, 4, 8, 8) and model.latent_shape == (4, 8, 8)
        assert model.denoise(c, c, torch.tensor([0.0, 999.0])).shape == c.shape
        recon, inter = model.decode_pair(c, torch.zeros_like(c))
        assert recon.shape == inter.shape == x.shape
        assert torch.allclose(inter, model.autoencoder.decode(0.5 * c / model.latent_scale), atol=1e-5)
        heat = model(x)
    assert heat.shape == (2, 1, 32, 32) and float(heat.min()) >= 0 and float(heat.max()) <= 1
    assert DiffAD(image_size=256, pretrained=False).latent_shape == (4, 32, 32)      # the paper's 4 x 32 x 32


@pytest.mark.parametrize("steps", [1, 5, 10])
def test_torch_ddim_loop_matches_the_kernel_loop(steps: int) -> None:
    model = tiny()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        c = model.encode(x)
        expected = model.sample(c, steps=steps).numpy()
        z = np.repeat(model.start_latent.numpy(), 2, axis=0)
        plan = ddim_schedule(steps)
        for t, a, a_prev in zip(plan.timesteps, plan.alpha_bar, plan.alpha_bar_prev):
            eps = model.denoise(torch.from_numpy(z), c, torch.full((2,), float(t))).numpy()
            z = ddim_step(z, np.ascontiguousarray(eps), a, a_prev)
    assert np.allclose(z, expected, rtol=1e-4, atol=1e-4)


def test_stages_train_only_their_own_part() -> None:
    model = tiny(lr=1e-3, ae_lr=1e-3, seg_lr=1e-3)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    for stage in DiffAD.STAGES:
        model.set_stage(stage)
        model.train()
        if stage == "denoiser":
            model.prepare_training([x])
            assert float(model.latent_scale) != 1.0
        frozen = {n: p.clone() for n, p in model.named_parameters() if not n.startswith(stage)}
        opt = model.optimizers()[0]
        opt.zero_grad()
        loss = model.training_loss(x)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen), stage
    with pytest.raises(ValueError, match="stages are autoencoder, denoiser, segmentation"):
        model.set_stage("decoder")


def test_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="must divide by"):
        DiffAD(**{**TINY, "image_size": 36})
