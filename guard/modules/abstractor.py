"""The safety projector: a C-Abstractor (Honeybee, Cha et al. 2024) in plain PyTorch.

Two RegNet stages of SE bottleneck blocks over the vision patch grid, then a Linear-SiLU-Linear readout
to the language model's width. At LLaVA-1.5-7B shapes (24x24x1024 in, 4096 out, width 1088, depth 3)
it has about 40.1M parameters, as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from psaguard.errors import ConfigError

__all__ = ["CAbstractor", "LayerNorm2d", "RegStage", "SqueezeExcite"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a reduced width of ``rd_channels``."""

    def __init__(self, channels: int, rd_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.fc2(F.silu(self.fc1(scale)))
        return x * scale.sigmoid()


class _ConvNormAct(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, groups: int = 1, act: bool = True) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False),
            LayerNorm2d(out_ch),
            nn.SiLU() if act else nn.Identity(),
        )


class _Bottleneck(nn.Module):
    """RegNet bottleneck (bottle ratio 1, depthwise 3x3, SE at 1/4 of the input width)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _ConvNormAct(in_ch, out_ch, 1)
        self.conv2 = _ConvNormAct(out_ch, out_ch, 3, groups=out_ch)  # group size 1: depthwise
        self.se = SqueezeExcite(out_ch, max(1, round(in_ch * 0.25)))
        self.conv3 = _ConvNormAct(out_ch, out_ch, 1, act=False)
        self.shortcut = nn.Identity() if in_ch == out_ch else _ConvNormAct(in_ch, out_ch, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return F.silu(y + self.shortcut(x))


class RegStage(nn.Sequential):
    """``depth`` bottleneck blocks at stride 1; the first maps ``in_ch`` to ``out_ch``."""

    def __init__(self, depth: int, in_ch: int, out_ch: int) -> None:
        super().__init__(*(_Bottleneck(in_ch if i == 0 else out_ch, out_ch) for i in range(depth)))


class CAbstractor(nn.Module):
    """Map (B, N, C_in) patch features on a square grid to (B, N', C_out) safety features."""

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        out_features: int,
        depth: int = 3,
        num_queries: int | None = None,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.s1 = RegStage(depth, in_features, hidden_size)
        self.s2 = RegStage(depth, hidden_size, hidden_size)
        self.readout = nn.Sequential(
            nn.Linear(hidden_size, out_features), nn.SiLU(), nn.Linear(out_features, out_features)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, num_patches, channels = features.shape
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            # A typed error (fail closed): a family adapter must pool its grid onto the projector's square grid.
            raise ConfigError(
                f"C-Abstractor needs a square patch grid, got {num_patches} patches: the model family's adapter "
                "must resample its patches (psaguard.backbones.pool_to_square_grid)"
            )
        x = features.transpose(1, 2).reshape(batch, channels, side, side)
        x = self.s1(x)
        if self.num_queries is not None and self.num_queries != num_patches:
            q = math.isqrt(self.num_queries)
            x = F.adaptive_avg_pool2d(x, (q, q))
        x = self.s2(x)
        return self.readout(x.flatten(2).transpose(1, 2))
