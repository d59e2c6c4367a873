"""The model registry: every name of the specification, spec fields, argument errors, doubling sizes."""

from __future__ import annotations

import re

import pytest
import torch

from models import create_model, list_models, model_spec
from models.channel_configs import SIZES, UNET_CHANNELS
from models.registry import MODALITIES

# Every model name of the specification, written out so that a typo in a family's registration loop shows.
SINGLE_BRANCH_NAMES = [
    "unet3d_xs", "unet3d_s", "unet3d_m", "unet3d_l",
    "unet3d_stride_xs", "unet3d_stride_s", "unet3d_stride_m", "unet3d_stride_l",
    "unetr", "swin_unetr", "mobile_unetr", "mobile_unetr_3d",
    "unet3d_2modal_s", "unet3d_4modal_s",
]  # fmt: skip

DUAL_BRANCH_NAMES = [
    "dualbranch_01_unet_xs", "dualbranch_01_unet_s", "dualbranch_01_unet_m", "dualbranch_01_unet_l",
    "dualbranch_02_unet_xs", "dualbranch_02_unet_s", "dualbranch_02_unet_m", "dualbranch_02_unet_l",
    "dualbranch_03_unet_xs", "dualbranch_03_unet_s", "dualbranch_03_unet_m", "dualbranch_03_unet_l",
    "dualbranch_04_unet_xs", "dualbranch_04_unet_s", "dualbranch_04_unet_m", "dualbranch_04_unet_l",
    "dualbranch_05_unet_xs", "dualbranch_05_unet_s", "dualbranch_05_unet_m", "dualbranch_05_unet_l",
    "dualbranch_06_unet_xs", "dualbranch_06_unet_s", "dualbranch_06_unet_m", "dualbranch_06_unet_l",
    "dualbranch_07_unet_xs", "dualbranch_07_unet_s", "dualbranch_07_unet_m", "dualbranch_07_unet_l",
    "dualbranch_mobilenetv2_dilated_xs", "dualbranch_mobilenetv2_dilated_s",
    "dualbranch_mobilenetv2_dilated_m", "dualbranch_mobilenetv2_dilated_l",
    "dualbranch_mobilenetv2_dilated_fixed_xs", "dualbranch_mobilenetv2_dilated_fixed_s",
    "dualbranch_mobilenetv2_dilated_fixed_m", "dualbranch_mobilenetv2_dilated_fixed_l",
    "dualbranch_13_unet_xs", "dualbranch_13_unet_s", "dualbranch_13_unet_m", "dualbranch_13_unet_l",
    "dualbranch_14_mobilenetv2_expand2_xs", "dualbranch_14_mobilenetv2_expand2_s",
    "dualbranch_14_mobilenetv2_expand2_m", "dualbranch_14_mobilenetv2_expand2_l",
    "dualbranch_14_ghostnet_xs", "dualbranch_14_ghostnet_s", "dualbranch_14_ghostnet_m", "dualbranch_14_ghostnet_l",
    "dualbranch_14_dilated_xs", "dualbranch_14_dilated_s", "dualbranch_14_dilated_m", "dualbranch_14_dilated_l",
    "dualbranch_14_convnext_xs", "dualbranch_14_convnext_s", "dualbranch_14_convnext_m", "dualbranch_14_convnext_l",
    "dualbranch_14_shufflenetv2_xs", "dualbranch_14_shufflenetv2_s",
    "dualbranch_14_shufflenetv2_m", "dualbranch_14_shufflenetv2_l",
    "dualbranch_14_shufflenetv2_dilated_xs", "dualbranch_14_shufflenetv2_dilated_s",
    "dualbranch_14_shufflenetv2_dilated_m", "dualbranch_14_shufflenetv2_dilated_l",
    "dualbranch_14_shufflenetv2_lk_xs", "dualbranch_14_shufflenetv2_lk_s",
    "dualbranch_14_shufflenetv2_lk_m", "dualbranch_14_shufflenetv2_lk_l",
    "dualbranch_2modal_unet_s", "quadbranch_4modal_unet_s", "quadbranch_4modal_attention_unet_s",
]  # fmt: skip

ALL_SPEC_NAMES = SINGLE_BRANCH_NAMES + DUAL_BRANCH_NAMES


def test_expected_lists_are_complete():
    assert len(ALL_SPEC_NAMES) == len(set(ALL_SPEC_NAMES)) == 85


@pytest.mark.parametrize(
    "group, expected",
    [("single-branch (U-Net, transformers, modality)", SINGLE_BRANCH_NAMES), ("dual/quad-branch", DUAL_BRANCH_NAMES)],
    ids=["single_branch", "dual_branch"],
)
def test_every_spec_name_is_registered(group, expected):
    """Fails with the list of names of the specification that the registry lacks, per group."""
    registered = set(list_models())
    missing = [n for n in expected if n not in registered]
    assert not missing, f"{len(missing)} {group} model(s) of the specification are not registered: {', '.join(missing)}"


def test_list_models_is_sorted_and_filters():
    names = list_models()
    assert names == sorted(names)
    assert list_models("unet3d_stride_*") == [f"unet3d_stride_{s}" for s in ("l", "m", "s", "xs")]


def test_every_spec_has_canonical_modalities_and_dims():
    for name in list_models():
        spec = model_spec(name)
        assert spec.name == name
        assert spec.modalities and spec.modalities == tuple(m for m in MODALITIES if m in spec.modalities), name
        assert spec.dims and spec.dims == tuple(d for d in ("2d", "3d") if d in spec.dims), name
        assert spec.in_channels == len(spec.modalities)


@pytest.mark.parametrize(
    "name, modalities, dims",
    [
        ("unet3d_xs", ("t1ce", "flair"), ("2d", "3d")),
        ("unet3d_stride_l", ("t1ce", "flair"), ("2d", "3d")),
        ("unet3d_2modal_s", ("t1ce", "flair"), ("2d", "3d")),
        ("unet3d_4modal_s", ("t1", "t1ce", "t2", "flair"), ("2d", "3d")),
        ("unetr", ("t1ce", "flair"), ("2d", "3d")),
        ("swin_unetr", ("t1ce", "flair"), ("2d", "3d")),
        ("mobile_unetr", ("t1ce", "flair"), ("2d",)),
        ("mobile_unetr_3d", ("t1ce", "flair"), ("3d",)),
    ],
)
def test_model_spec_fields(name, modalities, dims):
    spec = model_spec(name)
    assert spec.modalities == modalities
    assert spec.dims == dims
    assert spec.description


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"Unknown model 'unet3d_xxl'.*--list_models"):
        model_spec("unet3d_xxl")
    with pytest.raises(ValueError, match="Unknown model"):
        create_model("no_such_model")


@pytest.mark.parametrize(
    "name, dim, supported",
    [("mobile_unetr", "3d", "2d"), ("mobile_unetr_3d", "2d", "3d"), ("unet3d_xs", "4d", "2d or 3d")],
)
def test_unsupported_dim(name, dim, supported):
    with pytest.raises(ValueError, match=f"supports --dim {supported}, not {dim}"):
        create_model(name, dim, (64, 64, 64))


@pytest.mark.parametrize(
    "name, dim, patch_size, message",
    [
        # not divisible: the message names the axis, its size and the divisor
        ("unet3d_xs", "3d", (32, 32, 40), "X=40, which is not divisible by 16"),
        ("unet3d_stride_s", "3d", (24, 32, 32), "Z=24, which is not divisible by 16"),
        ("unet3d_xs", "2d", (32, 56), "X=56, which is not divisible by 16"),
        ("unetr", "3d", (32, 40, 32), "Y=40, which is not divisible by 16"),
        ("swin_unetr", "3d", (64, 48, 64), "Y=48, which is not divisible by 32"),
        ("swin_unetr", "2d", (64, 80), "X=80, which is not divisible by 32"),
        ("mobile_unetr", "2d", (96, 80), "X=80, which is not divisible by 32"),
        ("mobile_unetr_3d", "3d", (48, 64, 64), "Z=48, which is not divisible by 32"),
        # a single voxel at the coarsest scale cannot be instance-normalised
        ("unet3d_xs", "3d", (16, 16, 16), "single voxel after downsampling by 16"),
        ("swin_unetr", "3d", (32, 32, 32), "single voxel after downsampling by 32"),
        ("mobile_unetr", "2d", (32, 32), "use at least 64 along one axis"),
        # wrong number of values
        ("unet3d_xs", "3d", (64, 64), r"3 values \(Z Y X\)"),
        ("unet3d_xs", "2d", (64,), r"2 values \(Y X\) or 3"),
    ],
)
def test_bad_patch_size(name, dim, patch_size, message):
    with pytest.raises(ValueError, match=message) as info:
        create_model(name, dim, patch_size)
    if "divisible" in message:
        assert name in str(info.value)


def test_2d_uses_the_last_two_patch_values():
    # (Z, Y, X) = (5, 32, 64): Z is ignored in 2D, so the odd 5 is no error.
    model = create_model("unet3d_xs", "2d", (5, 32, 64))
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 2, 32, 64)).shape == (1, 4, 32, 64)


def test_unet_channel_table_doubles():
    for smaller, larger in zip(SIZES, SIZES[1:]):
        assert UNET_CHANNELS[larger] == tuple(2 * c for c in UNET_CHANNELS[smaller])


def _sized_families() -> dict[str, list[str]]:
    families: dict[str, list[str]] = {}
    for name in list_models():
        match = re.fullmatch(r"(.+)_(xs|s|m|l)", name)
        if match:
            families.setdefault(match.group(1), []).append(match.group(2))
    return {family: sizes for family, sizes in families.items() if sorted(sizes) == sorted(SIZES)}


def test_sized_families_are_found():
    families = _sized_families()
    assert {"unet3d", "unet3d_stride"} <= set(families)


@pytest.mark.parametrize("family", sorted(_sized_families()))
def test_parameter_count_grows_with_size(family):
    """xs < s < m < l in parameters (built on the meta device: no memory, no initialisation)."""
    dim = "3d" if "3d" in model_spec(f"{family}_xs").dims else "2d"
    counts = []
    for size in SIZES:
        with torch.device("meta"):
            model = create_model(f"{family}_{size}", dim, (128, 128, 128))
        counts.append(sum(p.numel() for p in model.parameters()))
    assert counts == sorted(set(counts)), f"{family}: parameters by size {dict(zip(SIZES, counts))}"
