"""Registered variants of the multi-branch U-Net (:mod:`models.multibranch`): every name is configuration.

Two tables, each ``name -> (MultiBranchConfig, description)``:

- :data:`DUALBRANCH_VARIANTS` (family ``dualbranch``, sizes xs, s, m, l): a T1ce branch and a FLAIR
  branch; ``dualbranch_01..07/13_unet`` vary the FLAIR branch's block (dilation, RepLK 13^3, FFN,
  MobileViT stages), ``dualbranch_mobilenetv2_dilated[_fixed]`` is a light MobileNetV2 variant, and
  ``dualbranch_14_*`` is the backbone comparison (one block kind in both branches and the fused stages).
- :data:`MODALITY_VARIANTS` (family ``modality``, size s only): the modality comparison with two
  and four single-modality branches: plain double-conv branches, MaxPool, fused at stage 5, U-Net
  decoder. The attention variant weights the four branches with a learned softmax gate
  (``model.modality_weights``, ``model.modality_names``), which measures each modality's
  contribution. Its single-branch baselines (``unet3d_2modal_s``, ``unet3d_4modal_s``) live with
  the plain U-Nets in :mod:`models.unet`.
"""

from __future__ import annotations

from models.multibranch import BlockSpec, BranchSpec, MultiBranchConfig, dual, register_variants
from utils.labels import MODALITIES


def same_block(block: BlockSpec, **options) -> MultiBranchConfig:
    """Both branches and the fused stages use ``block`` (the backbone comparison)."""
    return dual(block, fused_block=block, **options)


REPLK13 = BlockSpec("replk", dilations=(1,), kernel_size=13)
MBV2_DILATED = BlockSpec("mbv2", dilations=(1, 2), expand_ratio=6)
MBV2_DILATED_CONFIG = dict(downsample="stride", fusion_stage=3, shuffle_on_merge=True)

# ---- dual-branch family (family "dualbranch")
# name -> (configuration, description). Every variant exists in sizes xs, s, m, l.
DUALBRANCH_VARIANTS: dict[str, tuple[MultiBranchConfig, str]] = {
    "dualbranch_01_unet": (dual(), "dual-branch U-Net (T1ce | FLAIR), MaxPool, fused at stage 5"),
    "dualbranch_02_unet": (dual(downsample="stride"), "dual-branch U-Net, stride-2 conv downsampling"),
    "dualbranch_03_unet": (
        dual(flair=BlockSpec(dilations=(2, 2))), "dual-branch U-Net, dilated (rate 2) convs in the FLAIR branch"
    ),
    "dualbranch_04_unet": (dual(flair=REPLK13), "dual-branch U-Net, RepLK 13^3 block in the FLAIR branch"),
    "dualbranch_05_unet": (
        dual(flair=BlockSpec("replk", (1,), 13, ffn_expansion=2)), "dual-branch U-Net, FLAIR RepLK 13^3 + FFN2"
    ),
    "dualbranch_06_unet": (
        dual(flair=REPLK13, mvit_stages=(4, 5)), "dual-branch U-Net, FLAIR RepLK 13^3, MobileViT at stages 4 and 5"
    ),
    "dualbranch_07_unet": (
        dual(flair=REPLK13, mvit_stages=(5,)), "dual-branch U-Net, FLAIR RepLK 13^3, MobileViT at stage 5"
    ),
    "dualbranch_13_unet": (
        dual(flair=REPLK13, mvit_stages=(3, 4, 5)),
        "dual-branch U-Net, FLAIR RepLK 13^3, MobileViT extended to stages 3, 4 and 5",
    ),
    "dualbranch_mobilenetv2_dilated": (
        same_block(MBV2_DILATED, decoder="additive", **MBV2_DILATED_CONFIG),
        "MobileNetV2 (dilated) dual branch fused at stage 3 with channel shuffle; light additive decoder",
    ),
    "dualbranch_mobilenetv2_dilated_fixed": (
        same_block(MBV2_DILATED, decoder="unet", **MBV2_DILATED_CONFIG),
        "dualbranch_mobilenetv2_dilated with the fixed decoder: U-Net decoder (transposed conv + concatenated "
        "full-width skips + double conv) instead of the additive decoder that squeezes each skip to the "
        "decoder width with a 1x1 projection",
    ),
    "dualbranch_14_mobilenetv2_expand2": (
        same_block(BlockSpec("mbv2", (1, 1), expand_ratio=2), downsample="stride"),
        "backbone comparison: MobileNetV2 inverted residuals, expand ratio 2",
    ),
    "dualbranch_14_ghostnet": (
        same_block(BlockSpec("ghost", (1, 1), expand_ratio=2), downsample="stride"),
        "backbone comparison: Ghost bottlenecks",
    ),
    "dualbranch_14_dilated": (
        same_block(BlockSpec("conv", (1, 2, 5))), "backbone comparison: hybrid dilated convs, rates 1, 2, 5"
    ),
    "dualbranch_14_convnext": (
        same_block(BlockSpec("convnext", (1,), kernel_size=7), downsample="stride"),
        "backbone comparison: ConvNeXt blocks (7^3 depthwise, LayerNorm, GELU MLP)",
    ),
    "dualbranch_14_shufflenetv2": (
        same_block(BlockSpec("shuffle", (1, 1)), downsample="stride"), "backbone comparison: ShuffleNetV2 units"
    ),
    "dualbranch_14_shufflenetv2_dilated": (
        same_block(BlockSpec("shuffle", (1, 2)), downsample="stride"),
        "backbone comparison: ShuffleNetV2 units, second unit dilated (rate 2)",
    ),
    "dualbranch_14_shufflenetv2_lk": (
        same_block(BlockSpec("shuffle", (1, 1), kernel_size=7), downsample="stride"),
        "backbone comparison: ShuffleNetV2 units with large (7^3) depthwise kernels",
    ),
}

register_variants(DUALBRANCH_VARIANTS, family="dualbranch")


# ---- modality comparison (family "modality", size s only)
FOUR_BRANCHES = tuple(BranchSpec(m, (m,)) for m in MODALITIES)

MODALITY_VARIANTS: dict[str, tuple[MultiBranchConfig, str]] = {
    "dualbranch_2modal_unet": (dual(), "modality comparison: two branches (T1ce | FLAIR), concatenation fusion"),
    "quadbranch_4modal_unet": (
        MultiBranchConfig(FOUR_BRANCHES),
        "modality comparison: four branches (T1 | T1ce | T2 | FLAIR), concatenation fusion, no attention",
    ),
    "quadbranch_4modal_attention_unet": (
        MultiBranchConfig(FOUR_BRANCHES, modality_attention=True),
        "modality comparison: four branches weighted by a softmax modality-attention gate, then concatenated",
    ),
}

register_variants(MODALITY_VARIANTS, family="modality", sizes=("s",))
