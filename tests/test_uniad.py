"""UniAD: the neighbour mask, masked attention, layer-wise queries, jittering, the map and its export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_ad.models import create_model
from edge_ad.models.uniad import DecoderLayer, EncoderLayer, UniAD, neighbour_mask

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def model() -> UniAD:
    torch.manual_seed(0)
    return create_model("uniad", backbone=LITE0, pretrained=False).eval()


def test_neighbour_mask_blocks_exactly_the_7x7_window() -> None:
    mask = neighbour_mask(14, 14, 7)
    blocked = (mask == -1e4).reshape(14, 14, 14, 14)
    assert blocked[7, 7].sum() == 49 and blocked[0, 0].sum() == 16 and blocked[0, 7].sum() == 28
    assert blocked[7, 7, 4:11, 4:11].all() and blocked[7, 7, 3, 7].item() is False
    assert set(mask.unique().tolist()) == {-1e4, 0.0}
    assert np.isfinite(mask.numpy().astype(np.float16)).all()       # FP16 engines stay finite


def _change(call, j: int, i: int = 105) -> float:
    """How much token i's output (row 7, col 7) moves when input token j changes."""
    torch.manual_seed(1)
    x = torch.randn(196, 2, 32)
    y = x.clone()
    y[j] += 5.0
    with torch.no_grad():
        return float((call(y)[i] - call(x)[i]).abs().max())


NEAR, FAR = 8 * 14 + 9, 0          # (8, 9) is inside the 7x7 window of (7, 7); (0, 0) is not


def test_encoder_attention_ignores_the_neighbourhood() -> None:
    layer = EncoderLayer(32, 4, 64, 0.0).eval()
    pos, mask = torch.randn(196, 1, 32), neighbour_mask(14, 14, 7)
    call = lambda x: layer(x, pos, mask)  # noqa: E731
    assert _change(call, NEAR) < 1e-5 and _change(call, FAR) > 1e-3


def test_decoder_layer_ignores_the_neighbourhood_even_the_token_itself() -> None:
    layer = DecoderLayer(32, 4, 64, 0.0, 196).eval()
    torch.nn.init.normal_(layer.query)
    pos, mask = torch.randn(196, 1, 32), neighbour_mask(14, 14, 7)
    call = lambda x: layer(x, x, pos, mask)  # noqa: E731
    assert _change(call, NEAR) < 1e-5 and _change(call, 105) < 1e-5 and _change(call, FAR) > 1e-3


def test_every_decoder_layer_has_its_own_query(model) -> None:
    queries = [layer.query for layer in model.decoder]
    assert len(queries) == 4 and all(q.shape == (196, 256) for q in queries)
    assert len({id(q) for q in queries}) == 4
    assert not torch.equal(queries[0], queries[1])


def test_features_are_four_stages_on_the_14x14_grid(model) -> None:
    f = model.features(torch.rand(2, 3, 224, 224))
    assert f.shape == (2, 16 + 24 + 40 + 112, 14, 14)
    out = model(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1, 14, 14) and (out >= 0).all()


def test_map_is_the_l2_norm_of_the_reconstruction_error(monkeypatch) -> None:
    """With the reconstruction off by a known vector at every token, the map is that vector's L2 norm
    over the channels (not L1, not squared): 3-4-5 in two channels gives exactly 5."""
    torch.manual_seed(0)
    m = create_model("uniad", backbone=LITE0, pretrained=False).eval()
    offset = torch.zeros(1, 192, 1, 1)
    offset[0, 3], offset[0, 100] = 3.0, -4.0
    monkeypatch.setattr(m, "reconstruct", lambda f: f + offset)
    with torch.no_grad():
        out = m(torch.rand(2, 3, 224, 224))
    torch.testing.assert_close(out, torch.full((2, 1, 14, 14), 5.0))
    monkeypatch.setattr(m, "reconstruct", lambda f: f.clone())
    with torch.no_grad():
        assert m(torch.rand(1, 3, 224, 224)).abs().max().item() == 0.0


def test_jitter_only_in_training_and_scaled_by_token_norm(model) -> None:
    tokens = torch.randn(196, 4, 192) * 3
    torch.manual_seed(0)
    noise = model.jitter(tokens) - tokens
    ratio = noise.std(dim=-1) / (tokens.norm(dim=-1) / 192 * 20)
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.05)
    # in eval mode the jitter is never drawn: forward never calls it
    calls = []
    original = model.jitter
    model.jitter = lambda t: calls.append(1) or original(t)
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 224, 224))
        assert calls == []
        model.train()
        model.reconstruct(model.features(torch.rand(1, 3, 224, 224)))
        assert calls == [1]                                           # and in training it is
    finally:
        model.eval()
        del model.jitter


def test_spec_is_the_papers_and_grad_clipping_is_declared(model) -> None:
    spec = model.heatmap_spec()
    assert spec.output_size == (224, 224) and spec.align_corners and spec.smooth == "box" and spec.window == 16
    assert model.max_grad_norm == 0.1
    (opt,) = model.optimizers()
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 1e-4
    trained = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in model.backbone.parameters())


def test_image_size_must_fit_the_stride() -> None:
    with pytest.raises(ValueError, match="multiple of the feature stride"):
        create_model("uniad", backbone=LITE0, pretrained=False, image_size=200)
