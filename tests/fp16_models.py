"""Tiny torch models whose FP16 graphs overflow, shared by tests/test_fp16.py and tests/test_fp16_autocast.py."""

from __future__ import annotations

import torch
from torch import nn


class Loud(nn.Module):
    """A conv, then a layer whose activations pass FP16's 65504 (x 3e5), then back down."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.permute(0, 3, 1, 2).float() / 255.0)
        return (self.norm(y * 300.0 * 1000.0) * 1e-5 + y).abs().mean(dim=1, keepdim=True)


class Squares(nn.Module):
    """A GroupNorm over activations near 1000: every tensor within data_max (1e4), but the variance it
    computes squares them past 65504."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.permute(0, 3, 1, 2).float() / 255.0)
        return self.norm(y * 1000.0).abs().mean(dim=1, keepdim=True)
