"""MKD: source points, the cloner's shape rules, the loss, both localization modes, the source fallback."""

from __future__ import annotations

import huggingface_hub
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edge_ad.models import create_model
from edge_ad.models.mkd import MKD

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite() -> MKD:
    torch.manual_seed(0)
    return create_model("mkd", source=LITE0, pretrained=False).eval()


def test_vgg_points_are_pools_2_to_5_and_the_cloner_matches_them() -> None:
    model = create_model("mkd", source="vgg16", pretrained=False).eval()
    x = torch.rand(2, 3, 128, 128)
    shapes = [(tuple(s.shape), tuple(c.shape)) for s, c in model.pairs(x)]
    assert [s for s, _ in shapes] == [(2, 128, 32, 32), (2, 256, 16, 16), (2, 512, 8, 8), (2, 512, 4, 4)]
    assert all(s == c for s, c in shapes)
    assert model.mean == (0.0, 0.0, 0.0) and model.std == (1.0, 1.0, 1.0)    # the paper: no ImageNet norm


def test_cloner_is_bias_free_with_batchnorm_only_where_no_pool_follows(lite) -> None:
    convs = [m for m in lite.cloner.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert [c.out_channels for c in convs] == [16, 16, 16, 24, 16, 16, 40, 16, 16, 112, 16, 16, 320]
    for block in lite.cloner.blocks:
        layers = list(block)
        conv_positions = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        for i in conv_positions[:-1]:
            assert isinstance(layers[i + 1], nn.BatchNorm2d)
        last = conv_positions[-1]
        assert not any(isinstance(m, nn.BatchNorm2d) for m in layers[last:])
        assert isinstance(layers[-1], nn.MaxPool2d)


def test_lite0_points_are_signed_and_the_cloner_can_reach_negative_values(lite) -> None:
    x = torch.rand(2, 3, 128, 128)
    targets = [s for s, _ in lite.pairs(x)]
    assert all(t.min() < 0 for t in targets)
    assert all(c.min() < 0 for c in lite.cloner(x))


def test_loss_is_cosine_plus_half_mse_over_the_four_points(lite) -> None:
    x = torch.rand(3, 3, 128, 128)
    expected = torch.zeros(3)
    for s, c in lite.pairs(x):
        s, c = s.flatten(1), c.flatten(1)
        cos = (s * c).sum(1) / (s.norm(dim=1) * c.norm(dim=1))
        expected += 1 - cos + 0.5 * ((s - c) ** 2).mean(1)
    torch.testing.assert_close(lite.per_image_loss(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lite.training_loss(x), expected.mean(), rtol=1e-5, atol=1e-5)
    pairs = lite.pairs(x)[1:]
    last3 = sum(1 - F.cosine_similarity(s.flatten(1), c.flatten(1)) + 0.5 * ((s - c) ** 2).flatten(1).mean(1)
                for s, c in pairs)
    torch.testing.assert_close(lite.detection_score(x), last3, rtol=1e-5, atol=1e-5)


def test_discrepancy_map_is_zero_where_the_cloner_copies_the_source(lite) -> None:
    x = torch.rand(2, 3, 128, 128)
    raw = lite(x)
    assert raw.shape == (2, 1, 32, 32) and (raw >= -1e-6).all()
    pairs = lite.pairs(x)
    lite_copy = create_model("mkd", source=LITE0, pretrained=False).eval()
    lite_copy.pairs = lambda _x: [(s, s.clone()) for s, _ in pairs]            # a perfect cloner
    assert lite_copy(x).abs().max() < 1e-4


def test_gradient_localization_gives_full_size_maps_and_the_paper_score(lite) -> None:
    x = torch.rand(2, 3, 128, 128)
    maps, scores = lite.localize(x, "gradient")
    assert maps.shape == (2, 128, 128) and np.isfinite(maps).all() and (maps >= 0).all()
    np.testing.assert_allclose(scores, lite.detection_score(x).detach().numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="discrepancy"):
        lite.localize(x, "magic")


def test_input_gradient_is_the_loss_derivative_through_both_networks() -> None:
    """Directional derivative by central differences (float64) against <dL/dx, d>."""
    torch.manual_seed(0)
    model = create_model("mkd", source=LITE0, pretrained=False).double().eval()
    x, d = torch.rand(1, 3, 64, 64, dtype=torch.float64), torch.randn(1, 3, 64, 64, dtype=torch.float64)
    eps = 1e-7
    with torch.no_grad():
        numeric = (model.per_image_loss(x + eps * d) - model.per_image_loss(x - eps * d)).item() / (2 * eps)
    analytic = float((model.input_gradient(x) * d).sum())
    assert analytic == pytest.approx(numeric, rel=1e-4)


def test_training_lowers_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = create_model("mkd", source=LITE0, pretrained=False)
    (opt,) = model.optimizers()
    x = torch.rand(4, 3, 64, 64)
    model.train()
    first = float(model.training_loss(x).detach())
    for _ in range(30):
        opt.zero_grad()
        model.training_loss(x).backward()
        opt.step()
    assert float(model.training_loss(x).detach()) < 0.8 * first
    assert all(not p.requires_grad for p in model.source.parameters())


def test_vgg_without_weights_falls_back_to_the_offline_source(monkeypatch, caplog) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = create_model("mkd")
    assert model.config["source"] == LITE0 and model.config["requested_source"] == "vgg16"
    assert "falling back" in caplog.text
    with pytest.raises(Exception, match="weights"):
        create_model("mkd", fallback=False)
