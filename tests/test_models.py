"""Every registered model x each of its dims, built and run on the CPU at tiny shapes.

The rule that keeps this whole file under ~90 s on 2 cores with ~85 models:

- Each (model, dim) is built at the smallest patch its factory accepts: candidates are tried in
  order of voxel count, anisotropic ones included (so an axis mix-up shows in the output shape);
  the factory's own up-front checks decide what is valid.
- Full check, in train mode with batch 2: output ``(2, 4, *patch)`` for input
  ``(2, len(spec.modalities), *patch)``, finite, and every parameter gets a non-None finite
  gradient from ``output.mean().backward()`` (a model with output heads at several scales is built with
  deep supervision and the means of all its outputs are summed, so every head is checked).
  Applies to the ``xs`` size of each sized family and
  to every model that has one size only, in each of its dims, except the pairs in ``HEAVY``.
- Light check, in eval mode under ``torch.no_grad`` with batch 1: construction, output shape,
  finite. Applies to size ``s`` (the code of ``xs`` with wider channels) and to the pairs in
  ``HEAVY``, whose 3D backward costs 8-11 s of CPU even at their smallest patch; their gradients
  are checked in 2D (the same code, only ``spatial_dims`` differs), and their full 3D check runs
  under the ``slow`` marker.
- Shape check on the meta device (construction and forward without memory or arithmetic), in
  eval mode with batch 1: sizes ``m`` and ``l``, whose real initialisation and forward would take
  most of the time budget (up to 5 s each in 3D). Forward code must therefore not read tensor
  values (``.item()``, data-dependent branches), which ``torch.compile`` dislikes as well.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from models import create_model, list_models, model_spec

# (model, dim) pairs whose CPU backward is too costly for the default run (CPU seconds for one
# train step at the smallest patch): SwinUNETR's 48-channel full-resolution stages (11 s at
# 32x32x64); RepLK 13^3 depthwise convolutions, whose CPU backward is slow, at the 32^3 that the
# stage-5 MobileViT needs (8-9 s); SwinUNETR-V2 (6 s at 32x32x64) and MedNeXt-L (3 s at 16x16x32, 61M
# parameters), whose gradients are checked in 2D.
HEAVY = {
    ("swin_unetr", "3d"),
    ("swin_unetr_v2", "3d"),
    ("mednext_l_k3", "3d"),
    ("mednext_l_k5", "3d"),
    ("dualbranch_06_unet_xs", "3d"),
    ("dualbranch_07_unet_xs", "3d"),
    ("dualbranch_13_unet_xs", "3d"),
}

EDGES = (16, 32, 64, 128)
CANDIDATES = {
    "3d": sorted(itertools.combinations_with_replacement(EDGES, 3), key=lambda p: (p[0] * p[1] * p[2], p)),
    "2d": sorted(itertools.combinations_with_replacement(EDGES, 2), key=lambda p: (p[0] * p[1], p)),
}

NAMES = set(list_models())
CASES = [(name, dim) for name in sorted(NAMES) for dim in model_spec(name).dims]


def _check_mode(name: str, dim: str) -> str:
    """"full", "eval" or "meta" by the rule of the module docstring."""
    family, _, size = name.rpartition("_")
    sized = size in ("s", "m", "l") and f"{family}_xs" in NAMES
    if sized and size in ("m", "l"):
        return "meta"
    return "eval" if sized or (name, dim) in HEAVY else "full"


def build_smallest(name: str, dim: str, deep_supervision: bool = False) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The model built at the first candidate patch that its factory accepts."""
    errors = []
    for patch in CANDIDATES[dim]:
        try:
            return create_model(name, dim, patch, deep_supervision=deep_supervision), patch
        except ValueError as err:
            errors.append(str(err))
    raise AssertionError(f"{name} ({dim}) accepts none of {CANDIDATES[dim]}; last error: {errors[-1]}")


def check_model(name: str, dim: str, mode: str) -> None:
    torch.manual_seed(0)
    spec = model_spec(name)
    full = mode == "full"
    batch = 2 if full else 1
    # a model with output heads at several scales is trained with all of them (deep supervision), so that every
    # head is checked for gradients (nnU-Net's networks always have them; without deep supervision they are unused)
    heads = full and spec.deep_supervision
    with torch.device("meta" if mode == "meta" else "cpu"):
        model, patch = build_smallest(name, dim, deep_supervision=heads)
        x = torch.randn(batch, len(spec.modalities), *patch)
        if full:
            outs = model.train()(x)
            if heads:
                assert isinstance(outs, list) and len(outs) >= 2, f"{name} ({dim}): deep supervision gives {type(outs)}"
                assert all(o.shape[:2] == (batch, 4) for o in outs[1:]), [tuple(o.shape) for o in outs]
            else:
                outs = [outs]
            out = outs[0]
        else:
            with torch.no_grad():
                out = model.eval()(x)

    assert out.shape == (batch, 4, *patch), f"{name} ({dim}) at {patch}: output {tuple(out.shape)}"
    if mode == "meta":
        return
    assert torch.isfinite(out).all(), f"{name} ({dim}): non-finite output"
    if not full:
        return

    sum(o.mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    not_finite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not no_grad, f"{name} ({dim}): parameters without gradient: {no_grad}"
    assert not not_finite, f"{name} ({dim}): non-finite gradients: {not_finite}"


@pytest.mark.parametrize("name, dim", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_model(name, dim):
    check_model(name, dim, _check_mode(name, dim))


@pytest.mark.slow
@pytest.mark.parametrize("name, dim", sorted(HEAVY & set(CASES)), ids=lambda v: v)
def test_heavy_model_full_check(name, dim):
    check_model(name, dim, "full")


@pytest.mark.parametrize("name", ["unet3d_xs", "unet3d_stride_xs", "mobile_unetr_3d"])
def test_top_level_children_are_stages_in_forward_order(name):
    """Per-stage memory hooks the top-level children: they must run once each, in declared order."""
    torch.manual_seed(0)
    model, patch = build_smallest(name, "3d")
    called: list[str] = []
    for child_name, child in model.named_children():
        child.register_forward_hook(lambda *_, n=child_name: called.append(n))
    with torch.no_grad():
        model.eval()(torch.randn(1, len(model_spec(name).modalities), *patch))
    children = [n for n, _ in model.named_children()]
    assert called == children
    assert children[-1] == "head" and "bottleneck" in children


def test_unet_stages_and_downsampling():
    maxpool = create_model("unet3d_xs", "3d", (32, 32, 32))
    stride = create_model("unet3d_stride_xs", "3d", (32, 32, 32))
    expected = ["encoder1", "encoder2", "encoder3", "encoder4", "bottleneck"]
    expected += ["decoder4", "decoder3", "decoder2", "decoder1", "head"]
    assert [n for n, _ in maxpool.named_children()] == expected
    assert any(isinstance(m, torch.nn.MaxPool3d) for m in maxpool.modules())
    assert not any(isinstance(m, torch.nn.MaxPool3d) for m in stride.modules())
    assert stride.encoder2[0].conv.stride == (2, 2, 2)


def test_mobilevit_block_unfold_fold_roundtrip_and_shape():
    from models.modules.mvit import MobileViTBlock, fold_patches, unfold_patches

    x = torch.randn(2, 6, 4, 6, 8)
    tokens = unfold_patches(x, (2, 3, 2))
    assert tokens.shape == (2 * 12, 2 * 2 * 4, 6)
    assert torch.equal(fold_patches(tokens, (2, 3, 2), (4, 6, 8)), x)
    # Sequence p of sample b gathers pixel p of every patch: pixel (0, 0, 0) of each 2x3x2 patch.
    assert torch.equal(tokens[0], x[0, :, ::2, ::3, ::2].reshape(6, -1).T)

    for spatial_dims, shape in ((2, (2, 8, 12, 16)), (3, (1, 8, 4, 8, 6))):
        block = MobileViTBlock(spatial_dims, channels=8, transformer_dim=16, depth=1, patch_size=2, heads=2)
        assert block(torch.randn(*shape)).shape == shape
    with pytest.raises(ValueError, match="spatial axis 1"):
        MobileViTBlock(2, 8, 16, 1, patch_size=2, heads=2)(torch.randn(1, 8, 8, 7))
