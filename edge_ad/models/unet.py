"""One U-Net for the diffusion models' networks, configured per paper.

- SPR's score network (paper 000, Table 1): `block="plain"` (two conv3x3 + GroupNorm(32) + Swish), the
  time embedding added after every block, max-pool down, bilinear up, decoder levels one width narrower
  (`shrink_decoder=True`), 1x1 conv out.
- DiffAD's denoiser (latent diffusion style): `block="residual"` with the time embedding added inside
  each residual block, self-attention at the lower resolutions, strided-conv down, nearest + conv up.
- DRAEM's discriminative network (DiffAD's segmentation head): `block="plain"`, BatchNorm + ReLU, no
  time embedding.

One block per level on the way down and one on the way up (latent diffusion uses two; the smaller
count keeps CPU training short and is a constructor argument away from the paper's depth only in
channel width). Attention is written with matmul + softmax so the ONNX graph uses only operators the
TensorRT parser takes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "ResBlock", "SelfAttention", "TimeEmbedding", "sinusoidal_embedding", "norm_layer"]


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """N -> N x dim: sin and cos of t at geometrically spaced frequencies (the transformer embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeEmbedding(nn.Module):
    """t (N,) -> N x dim: sinusoidal embedding of t * scale, then Linear-Swish-Linear."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # The embedding is computed in FP32 (large arguments); the MLP runs in its weights' dtype, so
        # a model cast to FP16 works (seen failing on an H100: "mat1 and mat2 must have the same dtype").
        return self.mlp(sinusoidal_embedding(t * self.scale, self.dim).to(self.mlp[0].weight.dtype))


def norm_layer(kind: str, channels: int, groups: int = 32) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, groups), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}; use 'group' or 'batch'")


def _activation(kind: str) -> nn.Module:
    if kind == "swish":
        return nn.SiLU()
    if kind == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {kind!r}; use 'swish' or 'relu'")


class PlainBlock(nn.Module):
    """[conv3x3 -> norm -> act] x 2, then + Linear(time embedding) broadcast over the map."""

    def __init__(self, cin: int, cout: int, *, norm: str, activation: str, groups: int, time_dim: int | None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers += [nn.Conv2d(c, cout, 3, padding=1), norm_layer(norm, cout, groups), _activation(activation)]
        self.body = nn.Sequential(*layers)
        self.time = nn.Linear(time_dim, cout) if time_dim else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        x = self.body(x)
        return x if self.time is None else x + self.time(temb)[:, :, None, None]


class ResBlock(nn.Module):
    """norm-swish-conv, + Linear(time embedding), norm-swish-dropout-conv, + skip (1x1 when widths differ)."""

    def __init__(self, cin: int, cout: int, *, groups: int = 32, time_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm_layer("group", cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout) if time_dim else None
        self.norm2, self.conv2 = norm_layer("group", cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time is not None:
            h = h + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual: GroupNorm, q/k/v 1x1, softmax(qk^T/sqrt(c)) v."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = norm_layer("group", channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        weights = torch.softmax(torch.matmul(q.transpose(1, 2), k) * (c ** -0.5), dim=-1)   # N x hw x hw
        out = torch.matmul(v, weights.transpose(1, 2)).reshape(n, c, h, w)
        return x + self.proj(out)


class _Level(nn.Module):
    """One block (+ attention) at one resolution."""

    def __init__(self, cin: int, cout: int, *, block: str, norm: str, activation: str, groups: int,
                 time_dim: int | None, attention: bool, dropout: float) -> None:
        super().__init__()
        if block == "plain":
            self.block = PlainBlock(cin, cout, norm=norm, activation=activation, groups=groups, time_dim=time_dim)
        elif block == "residual":
            self.block = ResBlock(cin, cout, groups=groups, time_dim=time_dim, dropout=dropout)
        else:
            raise ValueError(f"unknown block {block!r}; use 'plain' or 'residual'")
        self.attention = SelfAttention(cout, groups) if attention else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        x = self.block(x, temb)
        return x if self.attention is None else self.attention(x)


class UNet(nn.Module):
    """forward(x, t=None) -> out_channels map at the input resolution; the sides must divide by 2^(levels-1).

    `channels` are the encoder widths, one level each; `attention` the level indices (0 = full
    resolution) that get self-attention; `time_dim` None builds a network without time input.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: tuple[int, ...] = (64, 128, 256, 512, 512), *,
                 block: str = "plain", norm: str = "group", activation: str = "swish", groups: int = 32,
                 time_dim: int | None = 256, time_scale: float = 1.0, attention: tuple[int, ...] = (),
                 down: str = "maxpool", up: str = "bilinear", shrink_decoder: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError("a U-Net needs at least two levels")
        self.levels = len(channels)
        self.up_mode = up
        kw = dict(block=block, norm=norm, activation=activation, groups=groups, time_dim=time_dim, dropout=dropout)
        self.time = TimeEmbedding(time_dim, time_scale) if time_dim else None
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1) if block == "residual" else nn.Identity()
        cin = channels[0] if block == "residual" else in_channels
        self.encoder = nn.ModuleList()
        for i, c in enumerate(channels):
            self.encoder.append(_Level(cin, c, attention=i in attention, **kw))
            cin = c
        self.downs = nn.ModuleList(_Down(down, c) for c in channels[:-1])
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(self.levels - 1)):
            cout = channels[max(i - 1, 0)] if shrink_decoder else channels[i]
            self.ups.append(_Up(up, cin))
            self.decoder.append(_Level(cin + channels[i], cout, attention=i in attention, **kw))
            cin = cout
        head = [norm_layer("group", cin, groups), nn.SiLU()] if block == "residual" else []
        self.head = nn.Sequential(*head, nn.Conv2d(cin, out_channels, 1 if block == "plain" else 3,
                                                   padding=0 if block == "plain" else 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        temb = self.time(t) if self.time is not None else None
        x = self.stem(x)
        skips = []
        for i, level in enumerate(self.encoder):
            x = level(x, temb)
            if i < self.levels - 1:
                skips.append(x)
                x = self.downs[i](x)
        for up, level in zip(self.ups, self.decoder):
            skip = skips.pop()
            x = level(torch.cat([up(x), skip], dim=1), temb)
        return self.head(x)


class _Down(nn.Module):
    def __init__(self, mode: str, channels: int) -> None:
        super().__init__()
        if mode == "maxpool":
            self.op = nn.MaxPool2d(2)
        elif mode == "conv":
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            raise ValueError(f"unknown down-sampling {mode!r}; use 'maxpool' or 'conv'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _Up(nn.Module):
    def __init__(self, mode: str, channels: int) -> None:
        super().__init__()
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"unknown up-sampling {mode!r}; use 'bilinear' or 'nearest'")
        self.mode = mode
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if mode == "nearest" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "bilinear":   # a fixed factor of 2: a constant-scale Resize in the graph
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

