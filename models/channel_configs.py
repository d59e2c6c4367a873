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

# Dual-/multi-branch U-Nets (models/dualbranch.py, models/multibranch.py): widths of stages 1..5.
# Stages before the fusion stage have these widths in *each* branch (their skips concatenate the
# branches); the fused stages and the decoder have them once.
DUALBRANCH_CHANNELS = doubling((8, 16, 32, 64, 128))
# MobileViT blocks inside them: transformer width = stage width, layers, heads, patch edge.
DUALBRANCH_MVIT = {"depth": 2, "heads": 4, "patch_size": 2}
