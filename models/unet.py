"""The U-Net family: one configurable class, registered once per size and downsampling variant.

- ``unet3d_{xs,s,m,l}``: MaxPool downsampling (Çiçek et al., 3D U-Net).
- ``unet3d_stride_{xs,s,m,l}``: stride-2 convolution downsampling (nnU-Net style).
- ``unet3d_2modal_s`` / ``unet3d_4modal_s``: the single-branch models of the modality comparison
  (T1ce+FLAIR, or all four modalities, concatenated as input channels); architecture of ``unet3d_s``.

Widths come from ``channel_configs.UNET_CHANNELS``. Despite the ``unet3d`` names every model also
builds in 2D (``--dim 2d``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
from monai.networks.layers import Pool

from models.channel_configs import SIZES, UNET_CHANNELS
from models.modules.conv import DoubleConv, OutHead, UpBlock
from models.registry import check_divisible, register_model, spatial_dims
from utils.labels import MODALITIES

Downsampling = Literal["maxpool", "stride"]
DOWNSAMPLE_FACTOR = 16  # four downsamplings by 2


class UNet(nn.Module):
    """Five-stage U-Net for 2D or 3D: four encoder stages, a bottleneck, four decoder stages, a 1x1 head.

    Each encoder stage after the first halves the resolution (MaxPool then DoubleConv, or a
    DoubleConv whose first conv has stride 2); each decoder stage upsamples with a transposed
    conv, concatenates the skip of the same scale and applies a DoubleConv. The top-level children
    are the stages in forward order (``encoder1..encoder4, bottleneck, decoder4..decoder1, head``),
    so per-stage measurements can hook them.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (one per modality).
        out_channels: classes of the output logits.
        channels: the five stage widths, full resolution first.
        downsampling: ``"maxpool"`` or ``"stride"`` (stride-2 convolution).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        downsampling: Downsampling = "maxpool",
    ):
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"UNet needs 5 stage widths, got {tuple(channels)}")
        if downsampling not in ("maxpool", "stride"):
            raise ValueError(f"downsampling must be 'maxpool' or 'stride', got {downsampling!r}")
        c1, c2, c3, c4, c5 = channels

        def down(cin: int, cout: int) -> nn.Module:
            if downsampling == "maxpool":
                return nn.Sequential(Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2),
                                     DoubleConv(spatial_dims, cin, cout))
            return DoubleConv(spatial_dims, cin, cout, stride=2)

        self.encoder1 = DoubleConv(spatial_dims, in_channels, c1)
        self.encoder2 = down(c1, c2)
        self.encoder3 = down(c2, c3)
        self.encoder4 = down(c3, c4)
        self.bottleneck = down(c4, c5)
        self.decoder4 = UpBlock(spatial_dims, c5, c4, c4)
        self.decoder3 = UpBlock(spatial_dims, c4, c3, c3)
        self.decoder2 = UpBlock(spatial_dims, c3, c2, c2)
        self.decoder1 = UpBlock(spatial_dims, c2, c1, c1)
        self.head = OutHead(spatial_dims, c1, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.encoder1(x)
        s2 = self.encoder2(s1)
        s3 = self.encoder3(s2)
        s4 = self.encoder4(s3)
        x = self.bottleneck(s4)
        x = self.decoder4(x, s4)
        x = self.decoder3(x, s3)
        x = self.decoder2(x, s2)
        x = self.decoder1(x, s1)
        return self.head(x)


def _build_unet(
    dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int, *,
    name: str, size: str, downsampling: Downsampling,
) -> UNet:
    check_divisible(name, patch_size, DOWNSAMPLE_FACTOR)
    return UNet(spatial_dims(dim), in_channels, out_channels, UNET_CHANNELS[size], downsampling)


# name -> (size, downsampling, modalities, family); every entry is data, the builder is shared.
_VARIANTS: dict[str, tuple[str, Downsampling, tuple[str, ...], str]] = {
    **{f"unet3d_{size}": (size, "maxpool", ("t1ce", "flair"), "unet3d") for size in SIZES},
    **{f"unet3d_stride_{size}": (size, "stride", ("t1ce", "flair"), "unet3d") for size in SIZES},
    "unet3d_2modal_s": ("s", "maxpool", ("t1ce", "flair"), "modality"),
    "unet3d_4modal_s": ("s", "maxpool", MODALITIES, "modality"),
}

for _name, (_size, _down, _modalities, _family) in _VARIANTS.items():
    register_model(
        _name,
        modalities=_modalities,
        dims=("2d", "3d"),
        family=_family,
        description=(
            f"U-Net, {'MaxPool' if _down == 'maxpool' else 'stride-2 conv'} downsampling, "
            f"size {_size} {UNET_CHANNELS[_size]}, input {'+'.join(_modalities)}"
        ),
    )(partial(_build_unet, name=_name, size=_size, downsampling=_down))
