"""The anomaly-detection models (one file each) and their shared parts, behind a small registry."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

_REGISTRY: dict[str, tuple[str, str]] = {
    "simplenet": ("edge_ad.models.simplenet", "SimpleNet"),
}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name; None-valued kwargs are dropped so a model keeps its own defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(**{k: v for k, v in kwargs.items() if v is not None})
