"""The convolution unit and the plain U-Net blocks shared by every family, for 2D and 3D alike.

One way to build layers across ``models/``: bare layers come from MONAI's factories
(``Conv[Conv.CONV, spatial_dims]``, ``Conv[Conv.CONVTRANS, ...]``, ``Pool[Pool.MAX, ...]``,
``Norm[...]``), and every conv -> norm [-> activation] unit is :func:`conv_norm_act`, MONAI's
``Convolution`` with instance norm and LeakyReLU (the nnU-Net choice).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv

ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
NORM = ("instance", {"affine": True})


def conv_norm_act(
    spatial_dims: int,
    in_ch: int,
    out_ch: int,
    kernel_size: int = 3,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    act: bool = True,
) -> Convolution:
    """Conv (no bias, "same" padding) -> instance norm -> LeakyReLU; ``act=False`` gives a linear output."""
    return Convolution(
        spatial_dims, in_ch, out_ch, strides=stride, kernel_size=kernel_size, dilation=dilation,
        groups=groups, act=ACT if act else None, norm=NORM, bias=False,
        padding=dilation * (kernel_size - 1) // 2,
    )


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-norm-act layers; the first may be strided (stride-conv downsampling)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__(
            conv_norm_act(spatial_dims, in_ch, out_ch, 3, stride=stride),
            conv_norm_act(spatial_dims, out_ch, out_ch, 3),
        )


class UpBlock(nn.Module):
    """Transposed-conv upsampling by 2, concatenation with the skip, then DoubleConv."""

    def __init__(self, spatial_dims: int, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(spatial_dims, out_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[2:] != skip.shape[2:]:  # odd sizes: pad/crop the upsampled map to the skip's size
            x = _match_size(x, skip.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))


def _match_size(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    pads: list[int] = []
    for have, want in zip(reversed(x.shape[2:]), reversed(size)):
        diff = want - have
        pads += [diff // 2, diff - diff // 2]
    return nn.functional.pad(x, pads)


class OutHead(nn.Module):
    """1x1 convolution to class logits."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
