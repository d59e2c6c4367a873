"""Plain convolution blocks shared by the U-Net-like families.

Built on MONAI's ``Convolution`` (conv -> instance norm -> LeakyReLU, the nnU-Net choice), for 2D
and 3D alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
NORM = ("instance", {"affine": True})


def conv_norm_act(
    spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1
) -> Convolution:
    return Convolution(
        spatial_dims, in_ch, out_ch, strides=stride, kernel_size=kernel_size, dilation=dilation,
        groups=groups, act=ACT, norm=NORM, bias=False, padding=dilation * (kernel_size - 1) // 2,
    )


class DoubleConv(nn.Sequential):
    """Two conv-norm-act layers; the first may be strided (stride-conv downsampling)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1):
        super().__init__(
            conv_norm_act(spatial_dims, in_ch, out_ch, stride=stride, dilation=dilation),
            conv_norm_act(spatial_dims, out_ch, out_ch, dilation=dilation),
        )


def max_pool(spatial_dims: int) -> nn.Module:
    return (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(kernel_size=2, stride=2)


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


class UpBlock(nn.Module):
    """Transposed-conv upsampling by 2, concatenation with the skip, then DoubleConv."""

    def __init__(self, spatial_dims: int, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        tconv = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        self.up = tconv(in_ch, out_ch, kernel_size=2, stride=2)
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
        self.conv = conv_layer(spatial_dims)(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
