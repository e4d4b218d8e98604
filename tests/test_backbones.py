"""The offline EfficientNet-Lite0 weights map onto timm's model and classify real photographs."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data

from edge_ad.models.backbones import (OFFLINE_BACKBONE, BackboneError, create_backbone,
                                      load_pretrained, normalization)


def _classify(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    import cv2

    mean, std = normalization(OFFLINE_BACKBONE)
    x = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(2, 0, 1)[None])).softmax(1)[0]


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    model = timm.create_model(OFFLINE_BACKBONE, pretrained=False).eval()
    load_pretrained(model, OFFLINE_BACKBONE)
    return model


def test_chelsea_is_a_cat(classifier) -> None:
    probs = _classify(classifier, data.chelsea())
    assert 281 <= int(probs.argmax()) <= 285          # ImageNet's domestic cat classes
    assert float(probs[281:286].sum()) > 0.8


def test_coffee_is_an_espresso(classifier) -> None:
    assert int(_classify(classifier, data.coffee()).argmax()) == 967


def test_random_weights_do_not_classify(classifier) -> None:
    """The check above can fail: an unmapped model does not find the cat."""
    model = timm.create_model(OFFLINE_BACKBONE, pretrained=False).eval()
    assert float(_classify(model, data.chelsea())[281:286].sum()) < 0.5


def test_features_model_gets_the_same_weights(classifier) -> None:
    features = create_backbone(OFFLINE_BACKBONE, out_indices=(2, 3))
    assert torch.equal(features.conv_stem.weight, classifier.conv_stem.weight)
    assert not any(p.requires_grad for p in features.parameters()) and not features.training
    maps = features(torch.zeros(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == features.feature_info.channels()


def test_local_weights_file(tmp_path, classifier) -> None:
    path = tmp_path / "w.pt"
    torch.save(classifier.state_dict(), path)
    model = create_backbone(OFFLINE_BACKBONE, out_indices=(1,), pretrained=False, weights=path)
    assert torch.equal(model.conv_stem.weight, classifier.conv_stem.weight)


def test_wrong_weights_file_is_refused(tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(3)}, path)
    with pytest.raises(BackboneError, match="do not fit"):
        create_backbone(OFFLINE_BACKBONE, out_indices=(1,), weights=path)
    with pytest.raises(BackboneError, match="not found"):
        create_backbone(OFFLINE_BACKBONE, out_indices=(1,), weights=tmp_path / "nope.pt")


def test_unreachable_hub_says_what_to_do(monkeypatch) -> None:
    import huggingface_hub.constants

    # Offline mode as HF_HUB_OFFLINE=1 sets it (the variable is read at import): no network traffic.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneError, match="weights=PATH"):
        create_backbone("resnet18", out_indices=(1,), pretrained=True)


def test_unknown_backbone() -> None:
    with pytest.raises(BackboneError, match="unknown backbone"):
        create_backbone("no_such_net", out_indices=(1,), pretrained=False)
