"""The model interface: everything training, export and the torch backend may ask of a model.

Every registered model subclasses `AnomalyModel`. Three methods are required (`heatmap_spec`,
`training_loss`, `optimizers`) and three attributes are set by each model's constructor (`config`,
`mean`, `std`) or class (`DEFAULTS`). Every optional hook has a default here that means "this model
does not use it", so callers call hooks unconditionally: nothing outside a model asks
`hasattr(model, ...)` (tests/test_model_interface.py checks that).

The contract of `forward(x)` (docs/architecture.md): a float NCHW batch normalized with `mean`/`std` in, the
raw anomaly map N x 1 x h x w out (higher = more anomalous); up-sampling, blur and the image score are
the heatmap kernel's job, as `heatmap_spec()` describes.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from torch import nn

from edge_ad.postprocess import HeatmapSpec

__all__ = ["AnomalyModel", "EXPORTED_MODE", "LATENT_DDIM", "SINGLE_GRAPH"]

EXPORTED_MODE = "exported"      # the localization mode of a model that has only what its bundle computes
SINGLE_GRAPH = "single"         # PIPELINE: one graph, uint8 images in, raw map out
LATENT_DDIM = "latent_ddim"     # PIPELINE: encoder, denoiser, decoder, segmentation graphs; DDIM loop in the runtime


class AnomalyModel(nn.Module, metaclass=ABCMeta):
    """The base of every model: required members, and the optional hooks with their defaults."""

    # --- required: set by each model ------------------------------------------------------------------
    DEFAULTS: ClassVar[dict[str, dict]]
    """{"paper": {...}, "cpu": {...}}: epochs (per stage for staged models), batch_size, model_kwargs."""
    config: dict[str, Any]
    """The constructor arguments, JSON-shaped (written to run.json and meta.json, and given back to the
    constructor to rebuild the model); includes image_size and resize_size."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    """Per-channel normalization of [0, 1] RGB input, done inside the exported graph (UInt8Input)."""

    # --- optional attributes ---------------------------------------------------------------------------
    STAGES: ClassVar[tuple[str, ...]] = ()
    """Staged models (DiffAD) train in these parts, in order, one `fit` each after `set_stage`; () trains in one go."""
    PIPELINE: ClassVar[str] = SINGLE_GRAPH
    """How the model is exported and run: SINGLE_GRAPH, or LATENT_DDIM (see export's diffusion_graphs.py)."""
    localization_modes: ClassVar[tuple[str, ...]] = (EXPORTED_MODE,)
    """The maps `edge-ad eval` scores; the first is what bundles compute (forward + heatmap kernel)."""
    max_grad_norm: float | None = None
    """When set, fit() clips the gradient norm of the trainable parameters to it before each step."""

    # --- required methods ------------------------------------------------------------------------------
    @abstractmethod
    def heatmap_spec(self) -> HeatmapSpec:
        """The post-processing of the raw map (output size, smoothing, image score) every backend applies."""

    @abstractmethod
    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The scalar loss of one normalized batch (in the current stage for staged models)."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Fresh optimizers of the parameters trained now (the current stage's, for staged models)."""

    # --- optional hooks --------------------------------------------------------------------------------
    def prepare_training(self, batches: Iterable[torch.Tensor]) -> None:
        """Before fitting (each stage): statistics of the normalized training batches (SimpleNet's feature
        standardization, DiffAD's latent scale). Default: nothing to prepare."""

    def after_step(self) -> None:
        """After every optimizer step (SPR's EMA of the weights). Default: nothing."""

    def set_stage(self, stage: str) -> None:
        """Select the stage that `training_loss` and `optimizers` train (staged models only)."""
        raise ValueError(f"{type(self).__name__} trains in one go; it has no stage {stage!r}")

    def folded(self) -> nn.Module:
        """The deployable form, same raw map as forward (SimpleNet composes its linear heads). Default: self."""
        return self

    def graph_inputs(self) -> dict[str, torch.Tensor]:
        """The exported graph's inputs besides the images, seeded by config["noise_seed"] (SPR's noise),
        passed to forward after x in this order. Default: none."""
        return {}

    def localize(self, x: torch.Tensor, mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Full-size maps (N x H x W) and image scores (N) of one of `localization_modes` (None: the first),
        in PyTorch. The default computes the first mode, what bundles compute: forward, then the heatmap
        kernel; a model with more modes overrides this for them."""
        if mode not in (None, self.localization_modes[0]):
            raise ValueError(f"unknown localization mode {mode!r}; choose from {self.localization_modes}")
        with torch.no_grad():
            raw = self(x).float().cpu().numpy()
        return self.heatmap_spec().apply(raw, threads=None)
