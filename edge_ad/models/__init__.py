"""The anomaly-detection models (one file each) and their shared parts, behind a small registry.

Every model subclasses `AnomalyModel` (models/base.py: the hooks training and export call) and carries
`DEFAULTS = {"paper": {...}, "cpu": {...}}`: training epochs, batch size and constructor arguments, as
its paper trains it and as the short CPU budget that the synthetic accuracy figures
(benchmarks/results/accuracy-synthetic.json) were measured with.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry itself never imports torch: `edge-ad stream` runs without it
    from edge_ad.models.base import AnomalyModel

_REGISTRY: dict[str, tuple[str, str]] = {
    "simplenet": ("edge_ad.models.simplenet", "SimpleNet"),
    "mkd": ("edge_ad.models.mkd", "MKD"),
    "uniad": ("edge_ad.models.uniad", "UniAD"),
    "spr": ("edge_ad.models.spr", "SPR"),
    "diffad": ("edge_ad.models.diffad", "DiffAD"),
}

BUDGETS = ("paper", "cpu")


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> "type[AnomalyModel]":
    """The registered class of `name`; it must subclass AnomalyModel (models/base.py), the interface
    training, export and the torch backend rely on."""
    from edge_ad.models.base import AnomalyModel

    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    module, attr = _REGISTRY[name]
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, AnomalyModel)):
        raise TypeError(f"model {name!r} is registered as {module}.{attr}, which is not a subclass of "
                        "edge_ad.models.base.AnomalyModel; derive it from AnomalyModel (see models/base.py)")
    return cls


def create_model(name: str, **kwargs: Any) -> "AnomalyModel":
    """Build a model by name; None-valued kwargs are dropped so a model keeps its own defaults."""
    cls = model_class(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return cls(**kwargs)
    except TypeError as err:          # e.g. --backbone for a model trained from scratch
        if "unexpected keyword" not in str(err):
            raise
        raise ValueError(f"model {name!r} does not take that option ({err}); see its constructor for the "
                         "options it has") from err


def training_defaults(name: str, budget: str = "paper") -> dict:
    """{"epochs", "batch_size", "model_kwargs"} of a model under the "paper" or "cpu" budget."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    defaults = model_class(name).DEFAULTS
    if budget not in defaults:
        raise ValueError(f"model {name!r} declares no {budget!r} budget in its DEFAULTS; it has {', '.join(defaults)}")
    return dict(defaults[budget])
