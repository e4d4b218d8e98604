"""SimpleNet (Liu et al., CVPR 2023; paper 004), as ../shared/SPECS.md specifies it.

A frozen pretrained backbone gives features of two stages. Each location's 3x3 neighbourhood is
flattened (C*9) and average-pooled to 768 values per stage; the deeper stage is resized to the
shallower grid (bilinear, align_corners=False) and the two are concatenated (1536). A linear
adaptor maps them to the target domain; a small discriminator tells adapted features from copies
with Gaussian noise added, and the patch score is -D(q).

Departure from the paper (constructor flag `standardize`, on by default): the pooled features are
standardized per dimension with the mean/std of the normal training images, computed once before
training. The paper's noise level (std 0.015) was set for WRN-50's post-ReLU features; the offline
EfficientNet-Lite0's stage outputs are linear projections with std ~5, next to which that noise is
invisible and the discriminator collapses to D = 0 (loss stuck at 1.0, measured). In standardized
units the default noise is 0.25: on the synthetic conveyor category, 150 steps of batch 8 at 224 px
gave image/pixel AUROC 0.80/0.33 with noise 0.015, 0.85/0.95 with 0.1 and 0.905/0.993 with 0.25.
With standardize=False (noise 0.015) and wide_resnet50_2 the model is the paper's.

The pooling is a fixed linear map, so it is a 3x3 convolution with a constant weight. Adaptor and
the discriminator's first Linear are linear too, so `folded()` composes pool -> adaptor -> Linear
-> BatchNorm into one 3x3 convolution per stage: exact, and about 7x less head compute, for export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_ad.models.base import AnomalyModel
from edge_ad.models.backbones import OFFLINE_BACKBONE, create_backbone, normalization
from edge_ad.postprocess import HeatmapSpec

__all__ = ["SimpleNet", "FoldedSimpleNet", "adaptive_pool_matrix"]


def adaptive_pool_matrix(length: int, bins: int) -> torch.Tensor:
    """(bins x length) matrix equal to F.adaptive_avg_pool1d(x, bins) on length-`length` vectors."""
    matrix = torch.zeros(bins, length, dtype=torch.float64)
    for j in range(bins):
        start = (j * length) // bins
        end = -((-(j + 1) * length) // bins)  # ceil
        matrix[j, start:end] = 1.0 / (end - start)
    return matrix


class SimpleNet(AnomalyModel):
    """forward(x) -> N x 1 x h x w raw patch scores (higher = more anomalous) at stride `strides[0]`."""

    DEFAULTS = {
        "paper": {"epochs": 160, "batch_size": 8},
        # the demo's budget: 45 epochs of batch 8 at 224 px (the paper's 256 -> 224 setting)
        "cpu": {"epochs": 45, "batch_size": 8, "model_kwargs": {"image_size": 224, "resize_size": 256}},
    }

    def __init__(self, backbone: str = OFFLINE_BACKBONE, layers: tuple[int, int] = (2, 3), *,
                 embed_dim: int = 768, adaptor_bias: bool = True, disc_hidden: int = 1024,
                 noise_std: float | None = None, margin: float = 0.5, lr_disc: float = 2e-4,
                 lr_adaptor: float = 1e-4, standardize: bool = True, image_size: int = 288,
                 resize_size: int = 329, pretrained: bool = True, weights: str | None = None) -> None:
        super().__init__()
        if noise_std is None:
            noise_std = 0.25 if standardize else 0.015
        self.config = dict(backbone=backbone, layers=tuple(layers), embed_dim=embed_dim,
                           adaptor_bias=adaptor_bias, disc_hidden=disc_hidden, noise_std=noise_std,
                           margin=margin, lr_disc=lr_disc, lr_adaptor=lr_adaptor, standardize=standardize,
                           image_size=image_size, resize_size=resize_size)
        self.backbone = create_backbone(backbone, tuple(layers), pretrained=pretrained, weights=weights)
        channels = self.backbone.feature_info.channels()
        self.strides = tuple(self.backbone.feature_info.reduction())
        for i, c in enumerate(channels):
            pool = adaptive_pool_matrix(c * 9, embed_dim).reshape(embed_dim, c, 3, 3)
            self.register_buffer(f"pool{i}", pool.float(), persistent=False)
        dim = embed_dim * len(channels)
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_inv_std", torch.ones(dim))
        self.adaptor = nn.Linear(dim, dim, bias=adaptor_bias)
        self.discriminator = nn.Sequential(
            nn.Linear(dim, disc_hidden), nn.BatchNorm1d(disc_hidden), nn.LeakyReLU(0.2),
            nn.Linear(disc_hidden, 1, bias=False),
        )
        self.noise_std = noise_std
        self.margin = margin
        self.mean, self.std = normalization(backbone)
        self._init_heads()

    def _init_heads(self) -> None:
        for m in [self.adaptor, *self.discriminator]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ the model as specified
    def local_features(self, x: torch.Tensor) -> torch.Tensor:
        """N x 1536 x h x w pooled 3x3-neighbourhood features of both stages, on the first grid."""
        with torch.no_grad():
            maps = self.backbone(x)
        pooled = [F.conv2d(m, getattr(self, f"pool{i}"), padding=1) for i, m in enumerate(maps)]
        size = pooled[0].shape[-2:]
        pooled = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
        features = torch.cat(pooled, dim=1)
        return (features - self.feature_mean[None, :, None, None]) * self.feature_inv_std[None, :, None, None]

    @torch.no_grad()
    def prepare_training(self, batches) -> None:
        """Per-dimension mean/std of the pooled features over all locations of the training images."""
        if not self.config["standardize"]:
            return
        self.feature_mean.zero_()
        self.feature_inv_std.fill_(1.0)
        total = total_sq = None
        count = 0
        for x in batches:
            f = self.local_features(x).double()
            s1, s2 = f.sum(dim=(0, 2, 3)), (f * f).sum(dim=(0, 2, 3))
            total = s1 if total is None else total + s1
            total_sq = s2 if total_sq is None else total_sq + s2
            count += f.shape[0] * f.shape[2] * f.shape[3]
        mean = total / count
        std = torch.sqrt(torch.clamp(total_sq / count - mean * mean, min=0.0)) + 1e-6
        self.feature_mean.copy_(mean.float())
        self.feature_inv_std.copy_((1.0 / std).float())

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """The adaptor, applied per location: N x C x h x w -> N x C x h x w."""
        return torch.einsum("oc,nchw->nohw", self.adaptor.weight, features) + (
            0 if self.adaptor.bias is None else self.adaptor.bias[None, :, None, None])

    def discriminate(self, q: torch.Tensor) -> torch.Tensor:
        """D(q) per location: N x C x h x w -> N x 1 x h x w."""
        n, c, h, w = q.shape
        flat = q.permute(0, 2, 3, 1).reshape(-1, c)
        return self.discriminator(flat).reshape(n, h, w, 1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.discriminate(self.adapt(self.local_features(x)))

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Hinge loss: adapted features score above +margin, noisy copies below -margin."""
        q = self.adapt(self.local_features(x))
        fake = q + torch.randn_like(q) * self.noise_std
        scores = self.discriminate(torch.cat([q, fake]))
        true_scores, fake_scores = scores[: len(q)], scores[len(q):]
        return F.relu(self.margin - true_scores).mean() + F.relu(self.margin + fake_scores).mean()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the discriminator (lr 2e-4, wd 1e-5), AdamW for the adaptor (lr 1e-4), as SPECS."""
        return [torch.optim.Adam(self.discriminator.parameters(), lr=self.config["lr_disc"], weight_decay=1e-5),
                torch.optim.AdamW(self.adaptor.parameters(), lr=self.config["lr_adaptor"])]

    def train(self, mode: bool = True) -> "SimpleNet":
        super().train(mode)
        self.backbone.eval()  # frozen, always in inference mode
        return self

    def heatmap_spec(self) -> HeatmapSpec:
        """Bilinear to the crop size, Gaussian sigma 4, image score = max of the raw patch scores."""
        size = self.config["image_size"]
        return HeatmapSpec(output_size=(size, size), smooth="gaussian", sigma=4.0, score_from="raw")

    def folded(self) -> "FoldedSimpleNet":
        return FoldedSimpleNet(self)


class FoldedSimpleNet(nn.Module):
    """SimpleNet for inference: pool -> adaptor -> Linear -> BatchNorm composed into one 3x3 conv per stage.

    conv_i = BN o W1 o A_i o P_i (all linear; A_i is the adaptor's column block of stage i), so
    raw = -W2 . leaky(conv_0(f_0) + resize(conv_1(f_1)) + b). Composed in float64, stored in float32.
    """

    def __init__(self, model: SimpleNet) -> None:
        super().__init__()
        self.backbone = model.backbone
        lin1, bn, act, lin2 = model.discriminator
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double()
        w1 = lin1.weight.double() * scale[:, None]                                       # BN o W1
        # Standardization folds into the adaptor: A ((f - m) s) + a = (A diag(s)) f + (a - A diag(s) m).
        adaptor_w = model.adaptor.weight.double() * model.feature_inv_std.double()[None, :]
        adaptor_shift = -adaptor_w @ model.feature_mean.double()
        embed = model.config["embed_dim"]
        self.convs = nn.ModuleList()
        for i in range(len(model.strides)):
            pool = getattr(model, f"pool{i}").double()                                  # E x C x 3 x 3
            block = w1 @ adaptor_w[:, i * embed:(i + 1) * embed]                         # H x E
            weight = torch.einsum("he,ecyx->hcyx", block, pool)
            conv = nn.Conv2d(pool.shape[1], weight.shape[0], 3, padding=1, bias=(i == 0))
            conv.weight.data = weight.float()
            if i == 0:  # all constant terms: BN(W1 (A f + a) + b1) = w1 A f + w1 a + (b1 - mu) s + beta
                a = model.adaptor.bias
                a = (a.double() if a is not None else torch.zeros(adaptor_w.shape[0], dtype=torch.float64)) + adaptor_shift
                bias = w1 @ a + (lin1.bias.double() - bn.running_mean.double()) * scale + bn.bias.double()
                conv.bias.data = bias.float()
            self.convs.append(conv)
        self.slope = act.negative_slope
        self.head = nn.Conv2d(w1.shape[0], 1, 1, bias=False)
        self.head.weight.data = -lin2.weight.detach().reshape(1, -1, 1, 1).clone()       # score = -D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        out = self.convs[0](maps[0])
        for conv, m in zip(self.convs[1:], maps[1:]):
            out = out + F.interpolate(conv(m), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(F.leaky_relu(out, self.slope))

