"""The training loop clips the gradient norm to a model's `max_grad_norm` (UniAD's 0.1): exercised on a
loss whose gradient is 1000 times larger, with plain SGD so each step's size is the clipped norm."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from edge_ad.models.base import AnomalyModel
from edge_ad.postprocess import HeatmapSpec
from edge_ad.training.fit import fit


class Steep(AnomalyModel):
    """A model whose loss 1000 * sum(w) has a gradient of norm 1000 * sqrt(16) = 4000 per step."""

    def __init__(self, max_grad_norm: float | None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(16))
        if max_grad_norm is not None:
            self.max_grad_norm = max_grad_norm

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return 1000.0 * self.w.sum() + 0.0 * x.sum()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD([self.w], lr=1.0)]

    def heatmap_spec(self) -> HeatmapSpec:
        return HeatmapSpec(output_size=(1, 1))


def _steps(tmp_path, clip: float | None) -> float:
    model = Steep(clip)
    data = DataLoader([{"image": torch.zeros(3, dtype=torch.uint8)}] * 3, batch_size=1)   # three steps
    fit(model, data, lambda x: x.float(), epochs=1, run_dir=tmp_path / str(clip), device="cpu")
    return float(model.w.detach().norm())


def test_gradient_norm_is_clipped_to_max_grad_norm(tmp_path) -> None:
    assert abs(_steps(tmp_path, 0.1) - 3 * 0.1) < 1e-6          # three steps of exactly 0.1
    assert abs(_steps(tmp_path, None) - 3 * 4000.0) < 1e-2      # unclipped: three steps of 4000
