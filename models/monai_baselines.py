"""The baselines a reviewer asks for, built by MONAI (no copies of the networks here): MedNeXt, SegResNet and
SwinUNETR-V2, in 2D and 3D, reading all four modalities (t1, t1ce, t2, flair) as nnU-Net does on BraTS.

- ``mednext_{s,b,m,l}_k{3,5}``: MONAI's ``create_mednext`` (Roy et al., MICCAI 2023) with the variant's widths,
  expansion ratios and block counts, and a depthwise kernel of 3 or 5. With ``deep_supervision=True`` MONAI's
  MedNeXt returns, in training mode, a tuple (full resolution, 1/2, 1/4, 1/8, 1/16) and in eval mode the
  full-resolution logits; a forward hook turns the tuple into the registry's list (same order), so the weights
  keep MONAI's names. MedNeXt's UpKern (a kernel-5 network initialised from a trained kernel-3 one by trilinear
  interpolation of the kernels) is not offered: MONAI does not provide it (see docs/BASELINES.md).
- ``segresnet_16``: MONAI's ``SegResNet`` at the settings of MONAI's BraTS tutorial (init_filters 16,
  blocks 1-2-2-4 down and 1-1-1 up, dropout 0.2); ``segresnet_32``: the same at the BraTS 2018 winner's width
  (Myronenko 2018, 32 initial filters), without the winner's VAE regularisation branch, which MONAI's
  ``SegResNetVAE`` adds with a loss of its own that the suite's training does not take.
- ``swin_unetr_v2``: MONAI's ``SwinUNETR(use_v2=True)`` (He et al., MICCAI 2023: a residual convolution block
  at the start of each Swin stage) with the settings of the suite's ``swin_unetr``.

Settings live in ``channel_configs.py``; each factory checks the patch size up front and names the axis that
does not fit.
"""

from __future__ import annotations

import torch.nn as nn
from monai.networks.nets import SegResNet, SwinUNETR
from monai.networks.nets.mednext import create_mednext

from models.channel_configs import MEDNEXT_KERNELS, MEDNEXT_VARIANTS, SEGRESNET_CONFIGS, SWIN_UNETR_V2_CONFIG
from models.registry import MODALITIES, Published, check_divisible, register_model, spatial_dims
from models.transformers import SWIN_DIVISOR

BASELINE_MODALITIES = MODALITIES  # t1, t1ce, t2, flair: the four channels nnU-Net and the papers' BraTS runs read
MEDNEXT_DIVISOR = 16  # four stride-2 down blocks
SEGRESNET_DIVISOR = 8  # three stride-2 convolutions

# MedNeXt's paper (Roy et al., MICCAI 2023) gives its variants' parameters at kernel 3, in millions.
MEDNEXT_PUBLISHED_K3 = {"s": 5.6e6, "b": 10.5e6, "m": 17.6e6, "l": 61.8e6}
_MEDNEXT_SOURCE = (
    "Roy et al., MICCAI 2023 (MedNeXt), kernel 3, given to 0.1M; built here with 4 input channels "
    "(t1, t1ce, t2, flair), 4 output classes, no deep-supervision heads"
)


def _deep_supervision_as_list(_module: nn.Module, _inputs: tuple, output):
    """MONAI's MedNeXt returns a tuple (full resolution first, each next scale half the previous) in training with
    deep supervision; the registry's contract is a list in that order."""
    return list(output) if isinstance(output, tuple) else output


def build_mednext(name: str, variant: str, kernel: int, dim: str, patch_size: tuple[int, ...], in_channels: int,
                  out_channels: int, deep_supervision: bool = False) -> nn.Module:
    check_divisible(name, patch_size, MEDNEXT_DIVISOR)
    model = create_mednext(variant.upper(), spatial_dims=spatial_dims(dim), in_channels=in_channels,
                           out_channels=out_channels, kernel_size=kernel, deep_supervision=deep_supervision)
    if deep_supervision:
        model.register_forward_hook(_deep_supervision_as_list)
    return model


def _register_mednext(variant: str, kernel: int) -> None:
    name = f"mednext_{variant}_k{kernel}"
    published = Published(int(MEDNEXT_PUBLISHED_K3[variant]), _MEDNEXT_SOURCE) if kernel == 3 else None

    def factory(dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int,
                deep_supervision: bool = False) -> nn.Module:
        return build_mednext(name, variant, kernel, dim, patch_size, in_channels, out_channels, deep_supervision)

    factory.__doc__ = (f"MedNeXt-{variant.upper()} (MONAI create_mednext), kernel {kernel}^d, "
                       "deep supervision at 1/2..1/16 available.")
    register_model(name, modalities=BASELINE_MODALITIES, dims=("2d", "3d"), family="mednext",
                   published=published, deep_supervision=True)(factory)


for _variant in MEDNEXT_VARIANTS:
    for _kernel in MEDNEXT_KERNELS:
        _register_mednext(_variant, _kernel)


def _segresnet(name: str, filters: int, dim: str, patch_size: tuple[int, ...], in_channels: int,
               out_channels: int) -> nn.Module:
    check_divisible(name, patch_size, SEGRESNET_DIVISOR)
    return SegResNet(spatial_dims=spatial_dims(dim), in_channels=in_channels, out_channels=out_channels,
                     **SEGRESNET_CONFIGS[filters])


@register_model("segresnet_16", modalities=BASELINE_MODALITIES, dims=("2d", "3d"), family="segresnet")
def segresnet_16(dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int) -> nn.Module:
    """SegResNet (MONAI), BraTS tutorial settings: init_filters 16, blocks 1-2-2-4 / 1-1-1, dropout 0.2."""
    return _segresnet("segresnet_16", 16, dim, patch_size, in_channels, out_channels)


@register_model("segresnet_32", modalities=BASELINE_MODALITIES, dims=("2d", "3d"), family="segresnet")
def segresnet_32(dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int) -> nn.Module:
    """SegResNet (MONAI) at the BraTS 2018 winner's width: init_filters 32, blocks 1-2-2-4 / 1-1-1, no VAE."""
    return _segresnet("segresnet_32", 32, dim, patch_size, in_channels, out_channels)


@register_model("swin_unetr_v2", modalities=BASELINE_MODALITIES, dims=("2d", "3d"), family="swin_unetr_v2")
def swin_unetr_v2(dim: str, patch_size: tuple[int, ...], in_channels: int, out_channels: int) -> nn.Module:
    """SwinUNETR-V2 (MONAI SwinUNETR, use_v2=True): stage-wise convolutions, feature size 48, window 7."""
    check_divisible("swin_unetr_v2", patch_size, SWIN_DIVISOR)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims(dim),
                     **SWIN_UNETR_V2_CONFIG)
