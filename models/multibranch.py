"""Modality comparison: two and four single-modality branches (size s only).

The single-branch baselines (``unet3d_2modal_s``, ``unet3d_4modal_s``) live with the plain U-Nets;
the branched ones here are :class:`models.dualbranch.MultiBranchUNet` configurations: plain
double-conv branches, MaxPool, fused at stage 5, U-Net decoder. The attention variant weights the
four branches with a learned softmax gate (``model.modality_weights``, ``model.modality_names``),
which measures each modality's contribution.
"""

from __future__ import annotations

from models.dualbranch import BranchSpec, MultiBranchConfig, dual, register_variants
from models.registry import MODALITIES

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
