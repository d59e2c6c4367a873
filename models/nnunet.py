"""nnU-Net v2's networks, built by their library (dynamic-network-architectures), with the topology nnU-Net's
planner gives them for the run's patch and spacing.

- ``nnunet``: ``PlainConvUNet``, the network of nnU-Net's default ``3d_fullres``/``2d`` configurations
  (``ExperimentPlanner``): 2 convolutions per stage in the encoder and in the decoder, instance norm (eps 1e-5,
  affine), leaky ReLU (slope 0.01), convolution bias, no dropout.
- ``nnunet_resenc_m``, ``nnunet_resenc_l``, ``nnunet_resenc_xl``: ``ResidualEncoderUNet`` of the residual-encoder
  presets (``nnUNetPlannerResEncM/L/XL``): 1-3-4-6-6-6... basic blocks per encoder stage, 1 convolution per decoder
  stage. The three planners share this topology; they differ only in their GPU-memory target (8, 24, 40 GB), hence
  in the patch and batch size they choose (docs/NNUNET.md records them on BraTS-shaped data). At the same patch the
  three presets are the same network; they are registered under their names so that a run names the preset whose
  patch it uses.

The topology (:func:`plan_topology`) is nnunetv2's ``get_pool_and_conv_props`` (from
``experiment_planning/experiment_planners/network_topology.py``) and the planner's feature rule, written out here
because nnunetv2 is not a dependency of the suite's environment: it pins its own versions of torch, batchgenerators,
SimpleITK, scikit-image and others, and a planner needs a raw nnU-Net data set and fingerprint on disk, whereas the
suite builds a network from a patch and a spacing alone. tests/test_nnunet.py checks this planner against nnunetv2's
own (run in the separate ``.venv-nnunet``) on several patch/spacing pairs, and the built networks' parameter counts
against nnunetv2's ``get_network_from_plans``.

Given a patch, nnU-Net's planner pools an axis while its edge is at least twice the minimum feature-map edge (4) and
its spacing is within a factor 2 of the finest; the run's patch must then be divisible by ``2 ** pools`` per axis
(nnU-Net pads the patch it plans; the suite trains on the patch it is given, so it asks for a divisible one).
The data of the suite are 1 mm isotropic (nothing is resampled), so the factories plan with spacing 1 on every
axis; :func:`plan_topology` takes any spacing.

Deep supervision: built with ``deep_supervision=True`` a model returns, in training mode, the decoder's logits from
full resolution down (nnU-Net's order; ``len(strides) - 1`` outputs), and in eval mode the full-resolution logits
only (nnU-Net switches ``decoder.deep_supervision`` off for inference; here a forward pre-hook does it from the
module's mode). The segmentation heads of every scale exist in both builds (the library always builds them), so a
state dict trained with deep supervision loads into the model built without it, and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch.nn as nn

from models.channel_configs import NNUNET_CONFIG, NNUNET_RESENC_PRESETS
from models.registry import Published, register_model
from utils.labels import MODALITIES

DNA_INSTALL = "pip install --no-deps dynamic-network-architectures==0.4.4"


def _dna_unets() -> tuple[type[nn.Module], type[nn.Module]]:
    """dynamic-network-architectures' (PlainConvUNet, ResidualEncoderUNet), imported when a network is built, so that
    the rest of the registry works without the package and its absence is one clear error naming the install."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    except ImportError as err:
        raise ImportError(f"nnU-Net's networks need dynamic-network-architectures ({err}); install it with: "
                          f"{DNA_INSTALL}") from None
    return PlainConvUNet, ResidualEncoderUNet

ISOTROPIC_MM = 1.0  # the suite's data: BraTS is distributed at 1 mm isotropic and is not resampled


@dataclass(frozen=True)
class Topology:
    """What nnU-Net's planner decides for a patch and spacing: per stage its stride, kernel and features."""

    strides: tuple[tuple[int, ...], ...]  # stage 0 has stride 1
    kernel_sizes: tuple[tuple[int, ...], ...]
    features: tuple[int, ...]
    pools_per_axis: tuple[int, ...]
    divisible_by: tuple[int, ...]  # the patch must be a multiple of these per axis
    padded_patch: tuple[int, ...]  # nnU-Net's pad_shape of the patch (equal to the patch when divisible)

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def _pad_shape(shape: Sequence[int], divisible_by: Sequence[int]) -> tuple[int, ...]:
    """nnunetv2's ``pad_shape``: each edge rounded up to a multiple of its divisor."""
    return tuple(int(s if s % d == 0 else s + d - s % d) for s, d in zip(shape, divisible_by))


def _pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int], min_feature_map_size: int,
                         max_numpool: int) -> tuple[list[int], list[list[int]], list[list[int]], tuple[int, ...],
                                                   tuple[int, ...]]:
    """nnunetv2's ``get_pool_and_conv_props`` (network_topology.py), step for step."""
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(p) for p in patch_size]
    pool_op_kernel_sizes = [[1] * dim]
    conv_kernel_sizes: list[list[int]] = []
    num_pool_per_axis = [0] * dim
    kernel_size = [1] * dim
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * min_feature_map_size]
        if len(valid) < 1:
            break
        min_spacing_of_valid = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / min_spacing_of_valid < 2]
        valid = [i for i in valid if num_pool_per_axis[i] < max_numpool]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_feature_map_size:
            break
        if len(valid) < 1:
            break
        for d in range(dim):
            if kernel_size[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel_size[d] = 3
        pool = [1] * dim
        for v in valid:
            pool[v] = 2
            num_pool_per_axis[v] += 1
            current_spacing[v] *= 2
            current_size[v] = float(np.ceil(current_size[v] / 2))
        pool_op_kernel_sizes.append(pool)
        conv_kernel_sizes.append(list(kernel_size))
    divisible_by = tuple(int(2 ** n) for n in num_pool_per_axis)
    padded = _pad_shape([int(p) for p in patch_size], divisible_by)
    conv_kernel_sizes.append([3] * dim)  # the bottleneck: always 3x3(x3)
    return num_pool_per_axis, pool_op_kernel_sizes, conv_kernel_sizes, padded, divisible_by


def plan_topology(patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> Topology:
    """nnU-Net v2's network topology for ``patch_size`` (Z, Y, X in 3D; Y, X in 2D) at ``spacing`` (mm per axis,
    same order; default 1 mm isotropic): ``get_pool_and_conv_props(spacing, patch, 4, 999999)`` and features
    ``min(32 * 2**i, 320 in 3D / 512 in 2D)``, as ``ExperimentPlanner.get_plans_for_configuration``."""
    patch = tuple(int(p) for p in patch_size)
    dim = len(patch)
    if dim not in (2, 3):
        raise ValueError(f"nnU-Net plans 2D or 3D patches, got {patch}")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (ISOTROPIC_MM,) * dim))
    if len(spacing) != dim or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must have {dim} positive values, got {spacing}")
    pools, strides, kernels, padded, divisible_by = _pool_and_conv_props(
        spacing, patch, NNUNET_CONFIG["min_feature_map_edge"], 999999)
    cap = NNUNET_CONFIG["max_features"][f"{dim}d"]
    features = tuple(min(cap, NNUNET_CONFIG["base_features"] * 2 ** i) for i in range(len(strides)))
    return Topology(strides=tuple(tuple(s) for s in strides), kernel_sizes=tuple(tuple(k) for k in kernels),
                    features=features, pools_per_axis=tuple(pools), divisible_by=divisible_by, padded_patch=padded)


def _check_patch(name: str, patch: tuple[int, ...], topo: Topology) -> None:
    if topo.padded_patch != patch:
        raise ValueError(f"{name}: nnU-Net's topology for patch {patch} pools {topo.pools_per_axis} times per axis, "
                         f"so the patch must be a multiple of {topo.divisible_by}; use {topo.padded_patch} "
                         "(nnU-Net pads its patch the same way)")
    if topo.n_stages < 2:
        raise ValueError(f"{name}: patch {patch} is too small for a U-Net (nnU-Net's planner pools no axis; "
                         f"an edge of at least {2 * NNUNET_CONFIG['min_feature_map_edge']} is needed)")


def _set_deep_supervision(module: nn.Module, _args: tuple, *, enabled: bool) -> None:
    """Forward pre-hook: the decoder returns every scale in training mode, the full resolution in eval mode."""
    module.decoder.deep_supervision = enabled and module.training


def _norm(dim: int) -> type[nn.Module]:
    return nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d


def _common_kwargs(dim: int, topo: Topology) -> dict:
    """The architecture kwargs every nnU-Net planner writes into its plans (besides the per-stage blocks)."""
    return dict(
        n_stages=topo.n_stages, features_per_stage=topo.features, conv_op=nn.Conv3d if dim == 3 else nn.Conv2d,
        kernel_sizes=topo.kernel_sizes, strides=topo.strides, conv_bias=True, norm_op=_norm(dim),
        norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )


def _finish(net: nn.Module, deep_supervision: bool) -> nn.Module:
    """nnU-Net's initialisation (``network.apply(network.initialize)``: He normal with slope 0.01, biases 0; ResEnc
    also zeroes the last norm of each residual block) and the deep-supervision switch."""
    net.apply(net.initialize)
    net.register_forward_pre_hook(partial(_set_deep_supervision, enabled=bool(deep_supervision)))
    net.decoder.deep_supervision = False
    return net


def _planned(name: str, patch_size: Sequence[int], spacing: Sequence[float] | None) -> tuple[tuple[int, ...], Topology]:
    """The patch as ints and nnU-Net's planned topology for it, refused when nnU-Net would pad the patch."""
    patch = tuple(int(p) for p in patch_size)
    topo = plan_topology(patch, spacing)
    _check_patch(name, patch, topo)
    return patch, topo


def build_plain_unet(patch_size: Sequence[int], in_channels: int, out_channels: int, *,
                     spacing: Sequence[float] | None = None, deep_supervision: bool = False,
                     name: str = "nnunet") -> nn.Module:
    """nnU-Net's default network (``PlainConvUNet``) for ``patch_size`` at ``spacing``."""
    patch, topo = _planned(name, patch_size, spacing)
    n = topo.n_stages
    plain_unet = _dna_unets()[0]
    net = plain_unet(input_channels=in_channels, num_classes=out_channels,
                     n_conv_per_stage=(NNUNET_CONFIG["plain_convs_per_stage"],) * n,
                     n_conv_per_stage_decoder=(NNUNET_CONFIG["plain_decoder_convs_per_stage"],) * (n - 1),
                     deep_supervision=True, **_common_kwargs(len(patch), topo))
    return _finish(net, deep_supervision)


def build_resenc_unet(patch_size: Sequence[int], in_channels: int, out_channels: int, *,
                      spacing: Sequence[float] | None = None, deep_supervision: bool = False,
                      name: str = "nnunet_resenc") -> nn.Module:
    """nnU-Net's residual-encoder network (``ResidualEncoderUNet``, presets M/L/XL) for ``patch_size``."""
    patch, topo = _planned(name, patch_size, spacing)
    n = topo.n_stages
    blocks = NNUNET_CONFIG["resenc_blocks_per_stage"][:n]
    if len(blocks) < n:
        raise ValueError(f"{name}: patch {patch} gives {n} stages; nnU-Net's ResEnc planner defines blocks for "
                         f"{len(NNUNET_CONFIG['resenc_blocks_per_stage'])} at most")
    resenc_unet = _dna_unets()[1]
    net = resenc_unet(input_channels=in_channels, num_classes=out_channels, n_blocks_per_stage=blocks,
                      n_conv_per_stage_decoder=(NNUNET_CONFIG["resenc_decoder_convs_per_stage"],) * (n - 1),
                      deep_supervision=True, **_common_kwargs(len(patch), topo))
    return _finish(net, deep_supervision)


_PUBLISHED_SOURCE = ("nnunetv2 2.8.1 planner topology for 128^3 at 1 mm, built by dynamic-network-architectures "
                     "0.4.4 (4 input channels, 4 classes)")


@register_model("nnunet", modalities=MODALITIES, family="nnunet", deep_supervision=True,
                published=Published(31_199_796, _PUBLISHED_SOURCE))
def _nnunet(dim: str, patch_size: Sequence[int], in_channels: int, out_channels: int,
            deep_supervision: bool = False) -> nn.Module:
    """nnU-Net v2's default PlainConvUNet with the planner's topology for the patch at 1 mm."""
    return build_plain_unet(patch_size, in_channels, out_channels, deep_supervision=deep_supervision)


def _register_resenc(preset: str, published: Published | None) -> None:
    name = f"nnunet_resenc_{preset}"

    def factory(dim: str, patch_size: Sequence[int], in_channels: int, out_channels: int,
                deep_supervision: bool = False) -> nn.Module:
        return build_resenc_unet(patch_size, in_channels, out_channels, deep_supervision=deep_supervision,
                                 name=name)

    factory.__doc__ = (f"nnU-Net v2 ResEnc {preset.upper()} (ResidualEncoderUNet; planner target "
                       f"{NNUNET_RESENC_PRESETS[preset]} GB) with the planner's topology for the patch at 1 mm.")
    register_model(name, modalities=MODALITIES, family="nnunet", deep_supervision=True,
                   published=published)(factory)


for _preset in NNUNET_RESENC_PRESETS:
    _register_resenc(_preset, Published(102_353_972, _PUBLISHED_SOURCE) if _preset == "m" else None)


class DynUNetDS(nn.Module):
    """MONAI's ``DynUNet`` at nnU-Net's settings, always built with its deep-supervision heads (so one state dict
    serves both builds), returning the registry's deep-supervision contract.

    MONAI's DynUNet returns in training mode its heads *upsampled* to full resolution and stacked; nnU-Net instead
    scores each head at its own resolution against a downsampled target. This wrapper returns the full-resolution
    logits and the heads as computed (``DynUNet.heads``, from 1/2 resolution down), so the suite's
    :class:`~training.deep_supervision.DeepSupervisionLoss` treats it as nnU-Net's networks. Without
    ``deep_supervision`` (and in eval mode) it returns the full-resolution logits only.
    """

    def __init__(self, net: nn.Module, deep_supervision: bool) -> None:
        super().__init__()
        self.net = net
        self.deep_supervision = bool(deep_supervision)

    def forward(self, x):
        out = self.net(x)
        if not self.training:
            return out
        full = out[:, 0]  # training mode: (B, 1 + heads, C, *spatial), the full resolution first
        if not self.deep_supervision:
            return full
        return [full, *self.net.heads]


@register_model("dynunet", modalities=MODALITIES, family="nnunet", deep_supervision=True)
def _dynunet(dim: str, patch_size: Sequence[int], in_channels: int, out_channels: int,
             deep_supervision: bool = False) -> nn.Module:
    """MONAI DynUNet with nnU-Net's planned kernels, strides and features for the patch at 1 mm."""
    from monai.networks.nets import DynUNet

    patch, topo = _planned("dynunet", patch_size, None)
    if topo.n_stages < 3:
        raise ValueError(f"dynunet: patch {patch} gives {topo.n_stages} stages; deep supervision needs at least 3")
    net = DynUNet(spatial_dims=len(patch), in_channels=in_channels, out_channels=out_channels,
                  kernel_size=topo.kernel_sizes, strides=topo.strides, upsample_kernel_size=topo.strides[1:],
                  filters=topo.features, norm_name=("INSTANCE", {"affine": True, "eps": 1e-5}),
                  act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}), deep_supervision=True,
                  deep_supr_num=topo.n_stages - 2, res_block=False, trans_bias=True)
    return DynUNetDS(net, deep_supervision)
