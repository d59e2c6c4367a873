"""MobileNetV2 inverted residual (with dilation) and a light additive decoder block, 2D and 3D.

Built from the suite's conv -> instance norm [-> activation] unit, ``modules.conv.conv_norm_act``,
like the other lightweight blocks of this folder (GhostNet, ShuffleNet).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.modules.conv import conv_norm_act


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand -> depthwise kxk (stride, dilation) -> 1x1 linear project.

    Args:
        spatial_dims: 2 or 3.
        in_ch: input channels.
        out_ch: output channels.
        stride: 1, or 2 to halve every spatial axis.
        expand_ratio: hidden (depthwise) width relative to ``in_ch``; 1 drops the expansion conv.
        dilation: dilation of the depthwise convolution.
        kernel_size: kernel of the depthwise convolution.

    The identity shortcut is used when ``stride == 1`` and ``in_ch == out_ch``.
    """

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, expand_ratio: int = 6,
        dilation: int = 1, kernel_size: int = 3,
    ):
        super().__init__()
        if expand_ratio < 1:
            raise ValueError(f"InvertedResidual: expand_ratio must be >= 1, got {expand_ratio}")
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        hidden = in_ch * expand_ratio
        layers = [conv_norm_act(spatial_dims, in_ch, hidden, 1)] if expand_ratio > 1 else []
        layers += [
            conv_norm_act(spatial_dims, hidden, hidden, kernel_size, stride=stride, dilation=dilation, groups=hidden),
            conv_norm_act(spatial_dims, hidden, out_ch, 1, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class AdditiveUpBlock(nn.Module):
    """Light decoder step: interpolate x to the skip's size, project both to ``out_ch`` (1x1), add,
    refine with one inverted residual.

    Cheaper than the U-Net ``UpBlock`` (no transposed conv, no concatenation): the skip is squeezed
    to ``out_ch`` channels by a 1x1 projection before it is added.
    """

    def __init__(self, spatial_dims: int, in_ch: int, skip_ch: int, out_ch: int, expand_ratio: int = 2):
        super().__init__()
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.proj_up = conv_norm_act(spatial_dims, in_ch, out_ch, 1, act=False)
        self.proj_skip = conv_norm_act(spatial_dims, skip_ch, out_ch, 1, act=False)
        self.refine = InvertedResidual(spatial_dims, out_ch, out_ch, expand_ratio=expand_ratio)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return self.refine(self.proj_up(x) + self.proj_skip(skip))
