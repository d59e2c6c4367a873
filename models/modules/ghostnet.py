"""GhostNet blocks (Han et al., CVPR 2020) for 2D and 3D.

A Ghost module makes half of its output channels with an ordinary 1x1 convolution and the other
half "cheaply" with a depthwise convolution of those, then concatenates them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.modules.conv import conv_norm_act


class GhostModule(nn.Module):
    """``out_ch`` channels from ``ceil(out_ch / ratio)`` primary (1x1) plus cheap depthwise ones.

    Args:
        spatial_dims: 2 or 3.
        in_ch: input channels.
        out_ch: output channels.
        ratio: output channels per primary channel (2 in GhostNet).
        dw_kernel: kernel of the cheap depthwise convolution.
        act: whether both parts end in an activation (False for the linear output of a bottleneck).
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, ratio: int = 2, dw_kernel: int = 3,
                 act: bool = True):
        super().__init__()
        if ratio < 2:
            raise ValueError(f"GhostModule: ratio must be >= 2, got {ratio}")
        self.out_ch = out_ch
        primary = math.ceil(out_ch / ratio)
        self.primary = conv_norm_act(spatial_dims, in_ch, primary, 1, act=act)
        self.cheap = conv_norm_act(spatial_dims, primary, primary * (ratio - 1), dw_kernel, groups=primary, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)[:, : self.out_ch]


class GhostBottleneck(nn.Module):
    """Ghost bottleneck: Ghost (expand) -> [depthwise stride-2] -> Ghost (linear), plus a shortcut.

    Args:
        spatial_dims: 2 or 3.
        in_ch: input channels.
        out_ch: output channels.
        stride: 1, or 2 to halve every spatial axis.
        expand_ratio: hidden width relative to ``in_ch``.
        kernel_size: kernel of the depthwise convolutions.

    The shortcut is the identity when shapes agree, else depthwise (stride) + 1x1 projection.
    """

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, expand_ratio: int = 2, kernel_size: int = 3
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"GhostBottleneck: stride must be 1 or 2, got {stride}")
        hidden = max(in_ch * expand_ratio, 2)
        layers: list[nn.Module] = [GhostModule(spatial_dims, in_ch, hidden)]
        if stride == 2:
            layers.append(conv_norm_act(spatial_dims, hidden, hidden, kernel_size, stride=2, groups=hidden, act=False))
        layers.append(GhostModule(spatial_dims, hidden, out_ch, act=False))
        self.block = nn.Sequential(*layers)
        if stride == 1 and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                conv_norm_act(spatial_dims, in_ch, in_ch, kernel_size, stride=stride, groups=in_ch, act=False),
                conv_norm_act(spatial_dims, in_ch, out_ch, 1, act=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)
