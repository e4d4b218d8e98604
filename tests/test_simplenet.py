"""SimpleNet: the conv formulation equals the specified unfold/resize/pool, folding is exact, training learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edge_ad.models.simplenet import SimpleNet, adaptive_pool_matrix


@pytest.fixture(scope="module")
def model() -> SimpleNet:
    torch.manual_seed(0)
    net = SimpleNet("resnet18", pretrained=False, image_size=64, resize_size=72, embed_dim=96, disc_hidden=64)
    net.eval()
    net.discriminator[1].running_mean.normal_()        # non-trivial BatchNorm statistics
    net.discriminator[1].running_var.uniform_(0.5, 2.0)
    net.feature_mean.normal_()                         # non-trivial standardization
    net.feature_inv_std.uniform_(0.2, 3.0)
    return net


@pytest.mark.parametrize("length, bins", [(360, 768), (1008, 768), (768, 768), (9216, 768), (7, 3)])
def test_pool_matrix_is_adaptive_avg_pool(length, bins) -> None:
    x = torch.randn(5, 1, length, dtype=torch.float64)
    expected = F.adaptive_avg_pool1d(x, bins)[:, 0]
    assert torch.allclose(x[:, 0] @ adaptive_pool_matrix(length, bins).T, expected, atol=1e-12)


def test_local_features_match_unfold_resize_pool(model) -> None:
    """The literal recipe of the authors' code: unfold 3x3, resize the deeper stage, pool each to 768."""
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.backbone(x)
        h, w = maps[0].shape[-2:]
        stages = []
        for m in maps:
            patches = F.unfold(m, 3, padding=1)                                  # N x C*9 x L
            grid = patches.reshape(m.shape[0], -1, *m.shape[-2:])
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            vectors = grid.permute(0, 2, 3, 1).reshape(-1, 1, grid.shape[1])
            pooled = F.adaptive_avg_pool1d(vectors, model.config["embed_dim"])
            stages.append(pooled.reshape(m.shape[0], h, w, -1).permute(0, 3, 1, 2))
        expected = torch.cat(stages, dim=1)
        expected = (expected - model.feature_mean[None, :, None, None]) * model.feature_inv_std[None, :, None, None]
        ours = model.local_features(x)
    assert ours.shape == expected.shape
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)


def test_folded_model_is_exact(model) -> None:
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        raw = model(x)
        folded = model.folded().eval()(x)
    assert raw.shape == (3, 1, 8, 8)
    assert (raw - folded).abs().max() / raw.abs().max() < 1e-5


def test_training_separates_normal_from_noise() -> None:
    torch.manual_seed(1)
    net = SimpleNet("resnet18", pretrained=False, image_size=32, resize_size=32, embed_dim=32, disc_hidden=32)
    x = torch.randn(4, 3, 32, 32)
    net.prepare_training([x])                       # feature statistics, as training runs it
    optims = net.optimizers()
    net.train()
    losses = []
    for _ in range(40):
        for o in optims:
            o.zero_grad()
        loss = net.training_loss(x)
        loss.backward()
        for o in optims:
            o.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.85 * losses[0]   # frozen or detached heads stay flat
    assert not net.backbone.training and all(not p.requires_grad for p in net.backbone.parameters())
