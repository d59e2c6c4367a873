"""Dual-/multi-branch U-Nets: branch splitting, RepLK fusion, modality attention, configuration.

Shape/gradient checks over every registered model are in tests/test_models.py; these tests check
what is specific to the branched family. Small 2D inputs keep them fast on CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from models.dualbranch import DUALBRANCH_VARIANTS
from models.modules.fusion import BranchFusion
from models.modules.replk import RepLKBlock, RepLKConv
from models.modules.shufflenet import channel_shuffle
from models.multibranch import BlockSpec, MultiBranchConfig, MultiBranchUNet, dual
from models.registry import MODALITIES, create_model, model_spec


def _capture(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Run ``model(x)`` and return the outputs of the named top-level children, and the logits."""
    seen: dict[str, object] = {}
    handles = [
        getattr(model, n).register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n in names
    ]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return seen, y


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b))


def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so a fusion bug cannot hide."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))


# ---------------------------------------------------------------- branch splitting


def test_zeroing_flair_changes_only_the_flair_branch():
    torch.manual_seed(0)
    model = create_model("dualbranch_01_unet_xs", "2d", (32, 32)).eval()
    assert model_spec("dualbranch_01_unet_xs").modalities == ("t1ce", "flair")
    x = torch.randn(1, 2, 32, 32)
    x_no_flair = x.clone()
    x_no_flair[:, 1] = 0  # channel order is canonical: (t1ce, flair)
    names = ["branch_t1ce", "branch_flair"]
    a, ya = _capture(model, names, x)
    b, yb = _capture(model, names, x_no_flair)
    assert _same(a["branch_t1ce"], b["branch_t1ce"])
    assert not any(torch.equal(u, v) for u, v in zip(a["branch_flair"], b["branch_flair"]))
    assert not torch.equal(ya, yb)


class _Stop(Exception):
    pass


def _branch_features(model: nn.Module, x: torch.Tensor) -> list[list[torch.Tensor]]:
    """The per-branch features handed to ``model.fusion`` (the forward stops there)."""
    seen: list = []

    def grab(_module, args):
        seen.extend(args[0])
        raise _Stop

    handle = model.fusion.register_forward_pre_hook(grab)
    try:
        with torch.no_grad(), pytest.raises(_Stop):
            model(x)
    finally:
        handle.remove()
    return seen


def test_quad_branch_routes_each_modality_to_its_own_branch():
    torch.manual_seed(0)
    model = create_model("quadbranch_4modal_unet_s", "2d", (32, 32)).eval()
    assert model.modality_names == MODALITIES
    x = torch.randn(1, 4, 32, 32)
    base = _branch_features(model, x)
    for k in range(4):
        x2 = x.clone()
        x2[:, k] = torch.randn(32, 32)
        feats = _branch_features(model, x2)
        changed = [MODALITIES[j] for j in range(4) if not _same(base[j], feats[j])]
        assert changed == [MODALITIES[k]]


def test_wrong_number_of_input_channels_is_rejected():
    model = create_model("dualbranch_01_unet_xs", "2d", (32, 32))
    with pytest.raises(ValueError, match="expected 2 input channels"):
        model(torch.randn(1, 4, 32, 32))


def test_branch_reading_an_absent_modality_is_rejected():
    with pytest.raises(ValueError, match="branch 'flair'"):
        MultiBranchUNet(dual(), (4, 4, 4, 4, 4), in_modalities=("t1", "t1ce"), spatial_dims=2)


# ---------------------------------------------------------------- RepLK


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_replk_reparameterization_is_exact_in_eval_mode(spatial_dims):
    torch.manual_seed(0)
    conv = RepLKConv(spatial_dims, channels=4, kernel_size=13, small_kernel=3)
    _randomize_batchnorm(conv)
    conv.eval()
    x = torch.randn(2, 4, *([14] * spatial_dims))
    large_only = copy.deepcopy(conv)  # the same layer (same large branch) with its small branch removed
    large_only.small = None
    with torch.no_grad():
        before = conv(x)
        small_part = conv.small(x)
        without_small = large_only(x)
        conv.reparameterize()
        after = conv(x)
    assert conv.large is None and conv.small is None
    assert tuple(conv.fused.weight.shape) == (4, 1, *([13] * spatial_dims))
    assert torch.allclose(before, after, atol=1e-5)
    # the small kernel mattered: the same layer without it computes something else, so the fused
    # output above can only match `before` if the small branch was folded in
    assert torch.allclose(before, without_small + small_part, atol=1e-5)
    assert small_part.abs().max() > 1e-1
    assert (after - without_small).abs().max() > 1e-1


def test_whole_model_reparameterization_keeps_outputs():
    torch.manual_seed(0)
    model = create_model("dualbranch_05_unet_xs", "2d", (32, 32))
    _randomize_batchnorm(model, seed=1)
    model.eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        before = model(x)
        n_fused = model.reparameterize()
        after = model(x)
    # one RepLK conv per FLAIR stage (1..4), none in the T1ce branch
    assert n_fused == 4
    assert not any(isinstance(m, RepLKConv) for m in model.branch_t1ce.modules())
    assert torch.allclose(before, after, atol=1e-5)
    assert model.reparameterize() == 0  # idempotent


def test_replk_block_ffn2_has_expansion_two():
    block = RepLKBlock(2, channels=6, kernel_size=7, ffn_expansion=2)
    hidden = block.ffn.ffn[0].conv
    assert (hidden.in_channels, hidden.out_channels) == (6, 12)


# ---------------------------------------------------------------- modality attention


def test_quad_attention_weights_are_stored_normalised_and_input_dependent():
    torch.manual_seed(0)
    model = create_model("quadbranch_4modal_attention_unet_s", "2d", (32, 32)).eval()
    assert model.modality_weights is None
    assert model.modality_names == MODALITIES
    x = torch.randn(3, 4, 32, 32)
    with torch.no_grad():
        model(x)
    w = model.modality_weights
    assert w.shape == (3, 4) and not w.requires_grad
    assert torch.allclose(w.sum(dim=1), torch.ones(3), atol=1e-6)
    assert (w > 0).all()
    # different samples get different weights; new FLAIR content changes them again
    assert (w[0] - w[1]).abs().max() > 1e-6
    x2 = x.clone()
    x2[:, 3] = torch.randn(3, 32, 32)
    with torch.no_grad():
        model(x2)
    assert (model.modality_weights - w).abs().max() > 1e-6


def test_quad_attention_gate_is_trained_through_the_loss():
    torch.manual_seed(0)
    model = create_model("quadbranch_4modal_attention_unet_s", "2d", (32, 32))
    model(torch.randn(2, 4, 32, 32)).square().mean().backward()
    grads = [p.grad for p in model.fusion.attention.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_uniform_attention_weights_leave_features_unchanged():
    fusion = BranchFusion(n_branches=2, deepest_channels=3, attention=True)
    for p in fusion.attention.parameters():
        nn.init.zeros_(p)  # zero logits -> softmax 1/2 each -> scale n * w = 1
    feats = [[torch.randn(1, 3, 4, 4)], [torch.randn(1, 3, 4, 4)]]
    (merged,) = fusion(feats)
    assert torch.allclose(merged, torch.cat([feats[0][0], feats[1][0]], dim=1))
    assert torch.allclose(fusion.last_weights, torch.full((1, 2), 0.5))


def test_channel_shuffle_interleaves_branches():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)  # branch A = 0,1,2; branch B = 3,4,5
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    with pytest.raises(ValueError, match="equal groups"):
        channel_shuffle(x, 4)


# ---------------------------------------------------------------- fusion stage and layout


def _children(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


DECODER_AND_HEAD = ["decoder4", "decoder3", "decoder2", "decoder1", "head"]


@pytest.mark.parametrize(
    ("name", "fused_encoders", "branch_stages"),
    [
        ("dualbranch_01_unet_xs", [], 4),
        ("dualbranch_mobilenetv2_dilated_xs", ["encoder3", "encoder4"], 2),
    ],
)
def test_fusion_stage_position(name, fused_encoders, branch_stages):
    model = create_model(name, "2d", (32, 32)).eval()
    expected = ["branch_t1ce", "branch_flair", "fusion", *fused_encoders, "bottleneck", *DECODER_AND_HEAD]
    assert _children(model) == expected
    feats, y = _capture(model, ["branch_flair", "fusion", "bottleneck"], torch.randn(1, 2, 32, 32))
    assert len(feats["branch_flair"]) == branch_stages
    # the deepest branch map is at stage (fusion_stage - 1) resolution; merged maps concatenate both branches
    assert feats["branch_flair"][-1].shape[-1] == 32 // 2 ** (branch_stages - 1)
    assert [m.shape[1] for m in feats["fusion"]] == [2 * f.shape[1] for f in feats["branch_flair"]]
    assert feats["bottleneck"].shape[-1] == 2 and y.shape == (1, 4, 32, 32)


def _differing_children(a: str, b: str) -> set[str]:
    ma, mb = create_model(a, "2d", (32, 32)), create_model(b, "2d", (32, 32))
    assert _children(ma) == _children(mb)
    return {n for n in _children(ma) if repr(getattr(ma, n)) != repr(getattr(mb, n))}


@pytest.mark.parametrize(
    ("variant", "base", "expected"),
    [
        ("dualbranch_03_unet_xs", "dualbranch_01_unet_xs", {"branch_flair"}),
        ("dualbranch_04_unet_xs", "dualbranch_01_unet_xs", {"branch_flair"}),
        ("dualbranch_05_unet_xs", "dualbranch_04_unet_xs", {"branch_flair"}),
        ("dualbranch_07_unet_xs", "dualbranch_04_unet_xs", {"bottleneck"}),
        ("dualbranch_06_unet_xs", "dualbranch_07_unet_xs", {"branch_t1ce", "branch_flair"}),
        ("dualbranch_13_unet_xs", "dualbranch_06_unet_xs", {"branch_t1ce", "branch_flair"}),
        ("dualbranch_02_unet_xs", "dualbranch_01_unet_xs", {"branch_t1ce", "branch_flair", "bottleneck"}),
        (
            "dualbranch_mobilenetv2_dilated_fixed_xs",
            "dualbranch_mobilenetv2_dilated_xs",
            {"decoder4", "decoder3", "decoder2", "decoder1"},
        ),
        ("dualbranch_2modal_unet_s", "dualbranch_01_unet_s", set()),
    ],
)
def test_configuration_variant_differs_only_where_configured(variant, base, expected):
    assert _differing_children(variant, base) == expected


def test_dilated_flair_branch_really_dilates():
    model = create_model("dualbranch_03_unet_xs", "2d", (32, 32))
    dil = {n: {m.dilation for m in getattr(model, n).modules() if isinstance(m, nn.Conv2d)} for n in
           ("branch_t1ce", "branch_flair")}
    assert dil == {"branch_t1ce": {(1, 1)}, "branch_flair": {(2, 2)}}


def test_size_variants_double_the_widths():
    xs, s = create_model("dualbranch_01_unet_xs", "2d", (32, 32)), create_model("dualbranch_01_unet_s", "2d", (32, 32))
    assert s.head.conv.in_channels == 2 * xs.head.conv.in_channels
    assert s.bottleneck[-1][-1].conv.out_channels == 2 * xs.bottleneck[-1][-1].conv.out_channels


# ---------------------------------------------------------------- arguments and blocks


def test_every_variant_is_registered_in_every_size():
    from models.registry import list_models

    names = set(list_models("*branch*"))
    for base in DUALBRANCH_VARIANTS:
        assert {f"{base}_{size}" for size in ("xs", "s", "m", "l")} <= names
    assert {"dualbranch_2modal_unet_s", "quadbranch_4modal_unet_s", "quadbranch_4modal_attention_unet_s"} <= names
    assert model_spec("quadbranch_4modal_unet_s").modalities == MODALITIES


@pytest.mark.parametrize(
    ("name", "divisor"), [("dualbranch_01_unet_xs", 16), ("dualbranch_07_unet_xs", 32), ("dualbranch_13_unet_xs", 32)]
)
def test_patch_divisibility_is_checked(name, divisor):
    with pytest.raises(ValueError, match=f"not divisible by {divisor}"):
        create_model(name, "3d", (divisor, divisor, divisor + divisor // 2))
    create_model(name, "3d", (divisor, divisor, 2 * divisor))  # accepted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "resnet"}, "kind must be one of"),
        ({"kind": "ghost", "dilations": (1, 2)}, "has no dilation"),
        ({"kernel_size": 4}, "positive odd"),
        ({"ffn_expansion": 2}, "'replk' only"),
    ],
)
def test_bad_block_spec_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlockSpec(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fusion_stage": 1}, "fusion_stage"), ({"downsample": "avgpool"}, "downsample"), ({"mvit_stages": (6,)}, "mvit")],
)
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dual(**kwargs)
    with pytest.raises(ValueError, match="at least two branches"):
        MultiBranchConfig(dual().branches[:1], modality_attention=True)


@pytest.mark.parametrize(
    "spec",
    [
        BlockSpec("conv", (1, 2, 5)),
        BlockSpec("replk", (1,), kernel_size=7, ffn_expansion=2),
        BlockSpec("mbv2", (1, 2), expand_ratio=2),
        BlockSpec("ghost", (1, 1), expand_ratio=2),
        BlockSpec("convnext", (1,), kernel_size=7),
        BlockSpec("shuffle", (1, 2), kernel_size=5),
    ],
    ids=lambda s: s.kind,
)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_block_stage_downsamples_and_changes_width(spec, spatial_dims):
    torch.manual_seed(0)
    stage = spec.build(spatial_dims, in_ch=1, out_ch=8, stride=2)
    x = torch.randn(1, 1, *([8] * spatial_dims))
    y = stage(x)
    assert y.shape == (1, 8, *([4] * spatial_dims))
    y.square().mean().backward()
    assert all(p.grad is not None for p in stage.parameters())


@pytest.mark.parametrize(
    "name", ["dualbranch_06_unet_xs", "dualbranch_mobilenetv2_dilated_xs", "quadbranch_4modal_unet_s"]
)
def test_top_level_children_run_once_in_declared_order(name):
    """Per-stage memory hooks the top-level children: each runs once, in declaration order."""
    model = create_model(name, "2d", (32, 32)).eval()
    called: list[str] = []
    for child_name, child in model.named_children():
        child.register_forward_hook(lambda *_, n=child_name: called.append(n))
    with torch.no_grad():
        model(torch.randn(1, len(model_spec(name).modalities), 32, 32))
    assert called == _children(model)
