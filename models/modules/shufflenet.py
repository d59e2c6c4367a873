"""ShuffleNetV2 units (Ma et al., ECCV 2018) and channel shuffle, for 2D and 3D."""

from __future__ import annotations

import torch
import torch.nn as nn

from models.modules.conv import conv_norm_act


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: group-major -> channel-major order."""
    b, c, *spatial = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels cannot be split into {groups} equal groups")
    return x.reshape(b, groups, c // groups, *spatial).transpose(1, 2).reshape(b, c, *spatial)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit.

    With ``stride == 1`` and ``in_ch == out_ch`` the input is split in two halves: one passes
    unchanged, the other goes through 1x1 -> depthwise kxk -> 1x1. Otherwise (downsampling or a
    width change) both halves of the output are computed from the whole input, the left one by
    depthwise kxk (stride) -> 1x1. The halves are concatenated and channel-shuffled.

    Args:
        spatial_dims: 2 or 3.
        in_ch: input channels.
        out_ch: output channels (even).
        stride: 1 or 2.
        kernel_size: depthwise kernel (3; 7 for the large-kernel variant).
        dilation: depthwise dilation.
    """

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, kernel_size: int = 3, dilation: int = 1
    ):
        super().__init__()
        if out_ch % 2:
            raise ValueError(f"ShuffleUnit: out_ch must be even, got {out_ch}")
        if stride not in (1, 2):
            raise ValueError(f"ShuffleUnit: stride must be 1 or 2, got {stride}")
        half = out_ch // 2
        self.split = stride == 1 and in_ch == out_ch
        right_in = half if self.split else in_ch

        def depthwise(ch: int) -> nn.Module:
            return conv_norm_act(spatial_dims, ch, ch, kernel_size, stride=stride, dilation=dilation, groups=ch,
                                 act=False)

        self.right = nn.Sequential(
            conv_norm_act(spatial_dims, right_in, half, 1), depthwise(half), conv_norm_act(spatial_dims, half, half, 1)
        )
        self.left = None if self.split else nn.Sequential(depthwise(in_ch), conv_norm_act(spatial_dims, in_ch, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            keep, work = x.chunk(2, dim=1)
            out = torch.cat([keep, self.right(work)], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)
        return channel_shuffle(out, 2)
