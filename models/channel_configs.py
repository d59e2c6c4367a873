"""Every size table of the suite. Sizes xs, s, m, l: channel widths double at each step.

Families read their widths from here and nowhere else, so a new size or variant is a line of data.
"""

from __future__ import annotations

SIZES: tuple[str, ...] = ("xs", "s", "m", "l")


def doubling(xs_widths: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """{"xs": w, "s": 2w, "m": 4w, "l": 8w} for a tuple of stage widths w."""
    return {size: tuple(c * 2**i for c in xs_widths) for i, size in enumerate(SIZES)}


# 3D U-Net (MaxPool and stride-conv variants): five stages, widths doubling with depth.
UNET_CHANNELS = doubling((8, 16, 32, 64, 128))

# Transformers (MONAI): the published settings. UNETR (Hatamizadeh et al. 2022): ViT-B/16 with
# feature_size 16; SwinUNETR: feature_size 48.
UNETR_CONFIG = {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12}
SWIN_UNETR_CONFIG = {"feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)}

# MobileUNETR (hand-written, models/transformers.py): stage widths from full resolution down to
# 1/32 (six stages), and per MobileViT stage (1/8, 1/16, 1/32) the transformer width, depth and
# patch size. 2D follows MobileViT-S, 3D the lighter MobileViT-XS (3D maps are far larger).
MOBILE_UNETR_CONFIGS = {
    "2d": {
        "channels": (16, 32, 64, 96, 128, 160),
        "transformer_dims": (144, 192, 240),
        "depths": (2, 4, 3),
        "patch_sizes": (2, 2, 1),
    },
    "3d": {
        "channels": (16, 24, 48, 64, 80, 96),
        "transformer_dims": (96, 120, 144),
        "depths": (2, 4, 3),
        "patch_sizes": (2, 2, 1),
    },
}

# Dual-/multi-branch U-Nets (models/dualbranch.py, models/multibranch.py): widths of stages 1..5.
# Stages before the fusion stage have these widths in *each* branch (their skips concatenate the
# branches); the fused stages and the decoder have them once.
DUALBRANCH_CHANNELS = doubling((8, 16, 32, 64, 128))
# MobileViT blocks inside them: transformer width = stage width, layers, heads, patch edge.
DUALBRANCH_MVIT = {"depth": 2, "heads": 4, "patch_size": 2}

# nnU-Net v2 (models/nnunet.py; nnunetv2 2.8.1's ExperimentPlanner and ResEnc planners): features start at 32 and
# double per stage, capped at 320 in 3D and 512 in 2D; the coarsest feature map keeps an edge >= 4 voxels. The
# default network (PlainConvUNet) has 2 convolutions per stage in the encoder and in the decoder; the residual
# encoder presets (ResidualEncoderUNet) have 1-3-4-6-6-6-... basic blocks per encoder stage and 1 convolution per
# decoder stage. M, L and XL share this topology: their planners differ in the GPU-memory target (8, 24, 40 GB) and
# so in the patch and batch they choose (docs/NNUNET.md), not in the network built for a given patch.
NNUNET_CONFIG = {
    "base_features": 32,
    "max_features": {"2d": 512, "3d": 320},
    "min_feature_map_edge": 4,
    "plain_convs_per_stage": 2,
    "plain_decoder_convs_per_stage": 2,
    "resenc_blocks_per_stage": (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6),
    "resenc_decoder_convs_per_stage": 1,
}
# The ResEnc presets: the planner's GPU-memory target in GB (nnUNetPlannerResEncM/L/XL).
NNUNET_RESENC_PRESETS = {"m": 8, "l": 24, "xl": 40}

# MedNeXt (Roy et al., MICCAI 2023), built by MONAI's ``create_mednext`` (models/monai_baselines.py): its variants
# S, B, M, L fix the widths (32 at full resolution, doubling), expansion ratios and block counts; the suite adds
# the depthwise kernel sizes of the paper's comparison.
MEDNEXT_VARIANTS: tuple[str, ...] = ("s", "b", "m", "l")
MEDNEXT_KERNELS: tuple[int, ...] = (3, 5)

# SegResNet (MONAI): the settings of MONAI's BraTS tutorial (init_filters 16, blocks 1-2-2-4 down and 1-1-1 up,
# dropout 0.2), and the same at the BraTS 2018 winner's width (Myronenko 2018: 32 initial filters; MONAI's
# SegResNet has no VAE regularisation branch). Keyed by init_filters.
SEGRESNET_CONFIGS = {
    16: {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1), "dropout_prob": 0.2},
    32: {"init_filters": 32, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1), "dropout_prob": 0.2},
}

# SwinUNETR-V2 (He et al., MICCAI 2023): the suite's SwinUNETR settings plus MONAI's stage-wise convolutions.
SWIN_UNETR_V2_CONFIG = {**SWIN_UNETR_CONFIG, "use_v2": True}
