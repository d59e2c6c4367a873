"""Transformer family: UNETR and SwinUNETR (from MONAI) and MobileUNETR (hand-written, 2D and 3D).

- ``unetr``: MONAI ``UNETR`` with the published ViT-B/16 settings; ``img_size`` is the patch size.
- ``swin_unetr``: MONAI ``SwinUNETR``, feature size 48.
- ``mobile_unetr`` (2D only) and ``mobile_unetr_3d``: MobileUNETR-style networks (Perera et al.,
  2024: a MobileViT encoder with a light U-shaped decoder). Written here because neither MONAI,
  torch nor timm offers them (timm's MobileViT is a 2D classifier with BatchNorm); the MobileViT
  block lives in ``models/modules/mvit.py`` and serves 2D and 3D from one code path.

Settings live in ``channel_configs.py``. Each factory checks the patch size up front and names
the axis that does not fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock
from monai.networks.nets import UNETR, SwinUNETR

from models.channel_configs import MOBILE_UNETR_CONFIGS, SWIN_UNETR_CONFIG, UNETR_CONFIG
from models.modules.conv import OutHead, UpBlock, conv_norm_act
from models.modules.mobilenet import InvertedResidual
from models.modules.mvit import MobileViTBlock
from models.registry import check_divisible, register_model, spatial_dims

UNETR_PATCH = 16  # ViT patch edge: the input must be divisible by it
SWIN_DIVISOR = 32  # patch embedding (2) and four patch mergings
MOBILE_UNETR_DIVISOR = 32  # five downsamplings by 2


def _drop_unused_cross_attention_norms(model: nn.Module) -> nn.Module:
    """MONAI's ``TransformerBlock`` always owns a ``norm_cross_attn`` LayerNorm, used only with
    cross-attention. Its parameters never receive a gradient, which makes DDP without
    ``find_unused_parameters`` fail; replace it by an identity where cross-attention is off."""
    for module in model.modules():
        if isinstance(module, TransformerBlock) and not module.with_cross_attention:
            module.norm_cross_attn = nn.Identity()
    return model


@register_model("unetr", dims=("2d", "3d"), family="transformer")
def unetr(dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int) -> nn.Module:
    """UNETR (MONAI): ViT-B/16 encoder (hidden 768, MLP 3072, 12 heads), feature size 16."""
    check_divisible("unetr", patch_size, UNETR_PATCH)
    model = UNETR(
        in_channels=in_channels, out_channels=out_channels, img_size=patch_size,
        spatial_dims=spatial_dims(dim), **UNETR_CONFIG,
    )
    return _drop_unused_cross_attention_norms(model)


@register_model("swin_unetr", dims=("2d", "3d"), family="transformer")
def swin_unetr(dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int) -> nn.Module:
    """SwinUNETR (MONAI): Swin transformer encoder, feature size 48, window 7."""
    check_divisible("swin_unetr", patch_size, SWIN_DIVISOR)
    return SwinUNETR(
        in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims(dim), **SWIN_UNETR_CONFIG
    )


class MobileUNETR(nn.Module):
    """MobileUNETR-style network for 2D or 3D: MobileViT encoder, light U-Net decoder, full-resolution logits.

    Stages (top-level children, in forward order), with the scale of their output:
    ``encoder0`` conv stem (1), ``encoder1``/``encoder2`` MobileNetV2 blocks (1/2, 1/4),
    ``encoder3``/``encoder4``/``bottleneck`` a stride-2 MobileNetV2 block then a MobileViT block
    (1/8, 1/16, 1/32); ``decoder4..decoder0`` transposed-conv upsampling + skip + two convs; ``head``
    a 1x1 conv. Input sizes must be divisible by 32 and, at each MobileViT stage, by its patch size.

    Hand-written: no library provides MobileUNETR, nor a 3D MobileViT.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (one per modality).
        out_channels: classes of the output logits.
        channels: six widths, for scales 1, 1/2, 1/4, 1/8, 1/16, 1/32.
        transformer_dims: transformer width of the three MobileViT stages (1/8, 1/16, 1/32).
        depths: transformer layers of the three MobileViT stages.
        patch_sizes: unfolding patch size of the three MobileViT stages.
        heads: attention heads of every MobileViT block.
        expand_ratio: expansion of the MobileNetV2 blocks.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        transformer_dims: Sequence[int],
        depths: Sequence[int],
        patch_sizes: Sequence[int] = (2, 2, 1),
        heads: int = 4,
        expand_ratio: int = 4,
    ):
        super().__init__()
        if len(channels) != 6 or not len(transformer_dims) == len(depths) == len(patch_sizes) == 3:
            raise ValueError("MobileUNETR needs 6 channels and 3 transformer_dims, depths and patch_sizes")
        sd = spatial_dims
        c0, c1, c2, c3, c4, c5 = channels

        def mv2(cin: int, cout: int, stride: int = 1) -> InvertedResidual:
            return InvertedResidual(sd, cin, cout, stride=stride, expand_ratio=expand_ratio)

        def mvit_stage(cin: int, cout: int, i: int) -> nn.Sequential:
            return nn.Sequential(
                mv2(cin, cout, stride=2),
                MobileViTBlock(sd, cout, transformer_dims[i], depths[i], patch_sizes[i], heads),
            )

        self.encoder0 = conv_norm_act(sd, in_channels, c0, kernel_size=3)
        self.encoder1 = nn.Sequential(mv2(c0, c1, stride=2), mv2(c1, c1))
        self.encoder2 = nn.Sequential(mv2(c1, c2, stride=2), mv2(c2, c2))
        self.encoder3 = mvit_stage(c2, c3, 0)
        self.encoder4 = mvit_stage(c3, c4, 1)
        self.bottleneck = mvit_stage(c4, c5, 2)
        self.decoder4 = UpBlock(sd, c5, c4, c4)
        self.decoder3 = UpBlock(sd, c4, c3, c3)
        self.decoder2 = UpBlock(sd, c3, c2, c2)
        self.decoder1 = UpBlock(sd, c2, c1, c1)
        self.decoder0 = UpBlock(sd, c1, c0, c0)
        self.head = OutHead(sd, c0, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.encoder0(x)
        s1 = self.encoder1(s0)
        s2 = self.encoder2(s1)
        s3 = self.encoder3(s2)
        s4 = self.encoder4(s3)
        x = self.bottleneck(s4)
        x = self.decoder4(x, s4)
        x = self.decoder3(x, s3)
        x = self.decoder2(x, s2)
        x = self.decoder1(x, s1)
        x = self.decoder0(x, s0)
        return self.head(x)


def _build_mobile_unetr(name: str, dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int):
    cfg = MOBILE_UNETR_CONFIGS[dim]
    # Five downsamplings, and the MobileViT stages (scales 1/8, 1/16, 1/32) unfold patches.
    divisor = math.lcm(MOBILE_UNETR_DIVISOR, *(s * p for s, p in zip((8, 16, 32), cfg["patch_sizes"])))
    check_divisible(name, patch_size, divisor)
    return MobileUNETR(spatial_dims(dim), in_channels, out_channels, **cfg)


@register_model("mobile_unetr", dims=("2d",), family="transformer")
def mobile_unetr(dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int) -> nn.Module:
    """MobileUNETR (2D, hand-written): MobileViT-S-like encoder, light U-Net decoder."""
    return _build_mobile_unetr("mobile_unetr", dim, patch_size, in_channels, out_channels)


@register_model("mobile_unetr_3d", dims=("3d",), family="transformer")
def mobile_unetr_3d(dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int) -> nn.Module:
    """MobileUNETR 3D (hand-written): MobileViT-XS-like 3D encoder, light U-Net decoder."""
    return _build_mobile_unetr("mobile_unetr_3d", dim, patch_size, in_channels, out_channels)
