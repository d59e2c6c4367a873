"""ConvNeXt block (Liu et al., CVPR 2022) for 2D and 3D."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers import Conv


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, *spatial)`` map (ConvNeXt's "channels_first" LN)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ConvNeXtBlock(nn.Module):
    """``x + gamma * PW2(GELU(PW1(LN(DWConv_k(x)))))`` with a learnable per-channel layer scale.

    Args:
        spatial_dims: 2 or 3.
        channels: input = output channels.
        kernel_size: depthwise kernel (7 in ConvNeXt).
        expansion: hidden width of the pointwise MLP relative to ``channels`` (4 in ConvNeXt).
        layer_scale: initial value of the layer scale gamma.
    """

    def __init__(
        self, spatial_dims: int, channels: int, kernel_size: int = 7, expansion: int = 4, layer_scale: float = 1e-6
    ):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.dwconv = conv(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = ChannelLayerNorm(channels)
        self.pw1 = conv(channels, channels * expansion, 1)
        self.act = nn.GELU()
        self.pw2 = conv(channels * expansion, channels, 1)
        self.gamma = nn.Parameter(torch.full((channels,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(self.act(self.pw1(self.norm(self.dwconv(x)))))
        return x + y * self.gamma.reshape(1, -1, *([1] * (x.dim() - 2)))


class ConvNeXtStage(nn.Sequential):
    """Width change/downsampling, then ``depth`` ConvNeXt blocks.

    The width change is ConvNeXt's stem order, ``conv (k = s = stride) -> LN`` (a 1x1 conv at
    stride 1); normalising first, as ConvNeXt's later downsamplers do, would erase a one-channel
    (single-modality) input.
    """

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, depth: int = 1, kernel_size: int = 7
    ):
        if stride not in (1, 2):
            raise ValueError(f"ConvNeXtStage: stride must be 1 or 2, got {stride}")
        conv = Conv[Conv.CONV, spatial_dims]
        super().__init__(
            conv(in_ch, out_ch, stride, stride=stride),
            ChannelLayerNorm(out_ch),
            *(ConvNeXtBlock(spatial_dims, out_ch, kernel_size) for _ in range(depth)),
        )
