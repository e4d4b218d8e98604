"""MKD, multiresolution knowledge distillation (Salehi et al., CVPR 2021; paper 003), as SPECS.md gives it.

A frozen pretrained *source* network and a small *cloner* trained on normal images to reproduce the
source's activations at four points (VGG-16's max-pools 2-5: strides 4, 8, 16, 32). On an anomaly the
cloner, which only learned normal appearance, fails to follow the source.

Loss (both training and detection): sum over points of (1 - cos(flatten S, flatten C)) + lambda * MSE(S, C),
lambda = 0.5. The paper writes L_val + lambda * L_dir; the authors' code puts the weight on the MSE
term, and we follow the code. The detection score is the same loss per image over the last 3 points.

Localization has two modes:
- `gradient` (the paper): |dL/dx| summed over colour channels, Gaussian sigma 4, then a 3x3 elliptical
  morphological opening. Needs a backward pass, so it exists only in PyTorch (`localize`).
- `discrepancy` (what `forward` returns, and so what bundles and engines compute): forward-only, the
  per-location 1 - cos over channels + lambda * mean squared error, each point up-sampled to the finest
  point's grid and summed. A departure from the paper; `edge-ad eval` measures both on the same data.

Source: `vgg16` by default, as in the paper (pool outputs, inputs in [0, 1] without ImageNet
normalization, as in the paper). When its pretrained weights cannot be had (no hub, no local file) the
model falls back to the offline EfficientNet-Lite0, says so in the log, and records the source it really
used in `config`; Lite0's stage outputs at strides 4-32 take the place of the pools, with its own input
normalization. Lite0's stage outputs are signed (they end in a linear projection), so the cloner's last
conv before each point has no ReLU there, or it could not reproduce them.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from edge_ad.models.base import AnomalyModel
from edge_ad.models.backbones import OFFLINE_BACKBONE, create_backbone, load_pretrained, normalization, resolve_backbone
from edge_ad.postprocess import HeatmapSpec, heatmap

__all__ = ["MKD", "Cloner", "VGGSource"]

log = logging.getLogger(__name__)

VGG_POOL_POINTS = (2, 3, 4, 5)   # 1-based max-pools of VGG `features` whose outputs are distilled


class VGGSource(nn.Module):
    """VGG `features` up to the last distilled pool, returning the outputs of the distilled pools."""

    def __init__(self, name: str, *, pretrained: bool, weights: str | None) -> None:
        super().__init__()
        full = timm.create_model(name, pretrained=False)
        if pretrained or weights is not None:
            load_pretrained(full, name, weights)
        pools = [i for i, layer in enumerate(full.features) if isinstance(layer, nn.MaxPool2d)]
        self.taps = [pools[p - 1] for p in VGG_POOL_POINTS]
        self.features = full.features[: self.taps[-1] + 1]
        self.channels = [self._out_channels(i) for i in self.taps]

    def _out_channels(self, index: int) -> int:
        convs = [m for m in self.features[:index] if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs


class Cloner(nn.Module):
    """The compact bias-free cloner: 3x3 convs, ReLU, max-pools; BatchNorm on convs not followed by a pool.

    Per block: conv(16) [+BN] -> conv(16 or the point's channels) -> pool. Block 1 is 16,16,M; blocks
    2-5 end with the source's channels at that point, so their pool outputs line up with the source's.
    With `linear_points`, the conv feeding a distilled pool has no ReLU (signed source features).
    """

    def __init__(self, point_channels: list[int], *, width: int = 16, linear_points: bool = False) -> None:
        super().__init__()
        first, *rest = point_channels
        plan = [[width, width], [width, first]] + [[width, width, c] for c in rest]
        blocks, cin = [], 3
        for b, convs in enumerate(plan):
            layers: list[nn.Module] = []
            for j, cout in enumerate(convs):
                last = j == len(convs) - 1
                layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
                if not last:
                    layers.append(nn.BatchNorm2d(cout))
                if not (last and linear_points and b > 0):
                    layers.append(nn.ReLU(inplace=True))
                cin = cout
            layers.append(nn.MaxPool2d(2, 2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for b, block in enumerate(self.blocks):
            x = block(x)
            if b > 0:
                outs.append(x)
        return outs


class MKD(AnomalyModel):
    """forward(x) -> N x 1 x h x w discrepancy map (higher = more anomalous) at the finest point's grid."""

    localization_modes = ("discrepancy", "gradient")   # the first is what bundles compute
    DEFAULTS = {
        "paper": {"epochs": 600, "batch_size": 64},          # SPECS gives batch 64; epochs are our choice
        "cpu": {"epochs": 100, "batch_size": 16},          # ~1 min per category on 2 cores
    }

    def __init__(self, source: str = "vgg16", *, lam: float = 0.5, lr: float = 1e-3, cloner_width: int = 16,
                 image_size: int = 128, resize_size: int | None = None, imagenet_norm: bool | None = None,
                 detection_points: int = 3, pretrained: bool = True, weights: str | None = None,
                 fallback: bool = True, requested_source: str | None = None) -> None:
        super().__init__()
        requested = requested_source or source
        source = resolve_backbone(source, pretrained=pretrained, weights=weights,
                                  fallback=OFFLINE_BACKBONE if fallback else None)
        vgg = source.startswith("vgg")
        if imagenet_norm is None:
            imagenet_norm = not vgg          # the paper feeds VGG [0, 1] inputs; other sources their own norm
        self.config = dict(source=source, requested_source=requested, lam=lam, lr=lr, cloner_width=cloner_width,
                           image_size=image_size, resize_size=resize_size or image_size, imagenet_norm=imagenet_norm,
                           detection_points=detection_points, fallback=fallback)
        if vgg:
            self.source = VGGSource(source, pretrained=pretrained, weights=weights)
            channels = self.source.channels
        else:
            self.source = create_backbone(source, _stride_indices(source, (4, 8, 16, 32)),
                                          pretrained=pretrained, weights=weights)
            channels = self.source.feature_info.channels()
        for p in self.source.parameters():
            p.requires_grad_(False)
        self.source.eval()
        self.cloner = Cloner(list(channels), width=cloner_width, linear_points=not vgg)
        self.lam = lam
        self.mean, self.std = normalization(source) if imagenet_norm else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def train(self, mode: bool = True) -> "MKD":
        super().train(mode)
        self.source.eval()   # frozen
        return self

    def pairs(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(source, cloner) activations at each distilled point, finest first.

        No torch.no_grad() around the source: its weights are frozen, so training builds no graph
        through it anyway, and the gradient localization needs dL/dx through both networks."""
        return list(zip(self.source(x), self.cloner(x)))

    def per_image_loss(self, x: torch.Tensor, points: slice = slice(None)) -> torch.Tensor:
        """N-vector: sum over the chosen points of (1 - cos) + lam * MSE, each image on its own."""
        total = x.new_zeros(x.shape[0])
        for s, c in self.pairs(x)[points]:
            s, c = s.flatten(1), c.flatten(1)
            total = total + (1 - F.cosine_similarity(s, c, dim=1)) + self.lam * ((s - c) ** 2).mean(dim=1)
        return total

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.per_image_loss(x).mean()

    def detection_score(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's image score: the loss over the last `detection_points` points."""
        return self.per_image_loss(x, slice(-self.config["detection_points"], None))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.cloner.parameters(), lr=self.config["lr"])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Discrepancy map: per location 1 - cos over channels + lam * mean squared error, summed over points."""
        out = None
        for s, c in self.pairs(x):
            d = (1 - F.cosine_similarity(s, c, dim=1, eps=1e-6)) + self.lam * ((s - c) ** 2).mean(dim=1)
            d = d[:, None]
            if out is None:
                out = d
            else:
                out = out + F.interpolate(d, size=out.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def heatmap_spec(self) -> HeatmapSpec:
        """Bilinear to the input size, Gaussian sigma 4 (as the paper's gradient maps), score = max."""
        size = self.config["image_size"]
        return HeatmapSpec(output_size=(size, size), smooth="gaussian", sigma=4.0, score_from="smoothed")

    def localize(self, x: torch.Tensor, mode: str | None = "gradient") -> tuple[np.ndarray, np.ndarray]:
        """Full-size maps (N x H x W) and image scores (N) of one localization mode, in PyTorch: the paper's
        `gradient` maps here, `discrepancy` (what bundles compute) by the base class."""
        if mode == "gradient":
            return self._gradient_maps(x)
        return super().localize(x, mode)

    def input_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """dL/dx of each image's loss (all points), through the source and the cloner; eval mode."""
        self.eval()
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.per_image_loss(x).sum(), x)
        return grad

    def _gradient_maps(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The paper's maps: |dL/dx| over channels -> Gaussian sigma 4 -> 3x3 elliptical opening.
        Scores are the paper's detection score; BatchNorm is in eval mode, so images do not interact."""
        saliency = self.input_gradient(x).abs().sum(dim=1).float().cpu().numpy()
        h, w = saliency.shape[-2:]
        blurred, _ = heatmap(np.ascontiguousarray(saliency), (h, w), smooth="gaussian", sigma=4.0)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        maps = np.stack([cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel) for m in blurred])
        with torch.no_grad():
            scores = self.detection_score(x).float().cpu().numpy()
        return maps, scores


def _stride_indices(name: str, strides: tuple[int, ...]) -> tuple[int, ...]:
    """The timm feature indices whose reductions are `strides` (the last stage of each stride)."""
    info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    reductions = info.reduction()
    picks = []
    for s in strides:
        matches = [i for i, r in enumerate(reductions) if r == s]
        if not matches:
            raise ValueError(f"source {name!r} has no features at stride {s} (it has {reductions})")
        picks.append(matches[-1])
    return tuple(picks)
