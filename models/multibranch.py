"""Multi-branch U-Nets: one encoder branch per modality group, fused deeper, one U-Net decoder.

One class, :class:`MultiBranchUNet`, built from a :class:`MultiBranchConfig`: which modalities
each branch reads, the block of each branch (:class:`BlockSpec`), the downsampling, the stage at
which the branches are fused, which stages carry a MobileViT block, how branches merge (channel
shuffle, modality attention) and the decoder kind. The registered variants (tables of
configurations, :func:`register_variants`) live in :mod:`models.dualbranch`.

Layout (five stages, stage ``s`` at 1/2^(s-1) resolution)::

    input (B, C, *S) --split by modality--> branch_<name>: stages 1 .. F-1 (one per branch)
    fusion: per level, concatenate the branches (optionally attention-weighted / shuffled)
    encoder<F> .. encoder4, bottleneck (stage 5): fused stages on the deepest merged map
    decoder4 .. decoder1: upsample, merge the level's skip, convolve;  head: 1x1 conv to NUM_CLASSES logits

The top-level children are these stages in forward order (per-stage memory hooks rely on it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from monai.networks.layers import Pool

from models.channel_configs import DUALBRANCH_CHANNELS, DUALBRANCH_MVIT, SIZES
from models.modules.conv import OutHead, UpBlock, conv_norm_act
from models.modules.convnext import ConvNeXtStage
from models.modules.fusion import BranchFusion
from models.modules.ghostnet import GhostBottleneck
from models.modules.mobilenet import AdditiveUpBlock, InvertedResidual
from models.modules.mvit import MobileViTBlock
from models.modules.replk import RepLKBlock, reparameterize_model
from models.modules.shufflenet import ShuffleUnit
from models.registry import check_divisible, register_model, spatial_dims
from utils.labels import MODALITIES, NUM_CLASSES

N_STAGES = 5
BLOCK_KINDS = ("conv", "replk", "mbv2", "ghost", "convnext", "shuffle")
DILATED_KINDS = ("conv", "mbv2", "shuffle")  # kinds whose units accept a dilation
DOWNSAMPLING = ("maxpool", "stride")
DECODERS = ("unet", "additive")


@dataclass(frozen=True)
class BlockSpec:
    """The block of one branch (or of the fused stages): a stage is a short sequence of units.

    Args:
        kind: ``conv`` (conv-norm-act layers), ``replk`` (3x3 conv-norm-act, then RepLK blocks),
            ``mbv2`` (MobileNetV2 inverted residuals), ``ghost`` (Ghost bottlenecks),
            ``convnext`` (ConvNeXt downsampler + blocks), ``shuffle`` (ShuffleNetV2 units).
        dilations: one unit per entry, with that dilation (only ``conv``, ``mbv2`` and
            ``shuffle`` accept values other than 1). ``(1, 1)`` for ``conv`` is the U-Net double conv.
        kernel_size: kernel of the units (RepLK's large kernel; the depthwise kernel otherwise).
        expand_ratio: hidden-width ratio of ``mbv2`` and ``ghost`` units.
        ffn_expansion: ``replk`` only: 0 = no FFN, 2 = FFN2 after each RepLK block.
    """

    kind: str = "conv"
    dilations: tuple[int, ...] = (1, 1)
    kernel_size: int = 3
    expand_ratio: int = 6
    ffn_expansion: int = 0

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"BlockSpec.kind must be one of {BLOCK_KINDS}, got {self.kind!r}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"BlockSpec.dilations must be a non-empty tuple of ints >= 1, got {self.dilations}")
        if self.kind not in DILATED_KINDS and any(d != 1 for d in self.dilations):
            raise ValueError(f"BlockSpec kind {self.kind!r} has no dilation; use dilations of 1, got {self.dilations}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"BlockSpec.kernel_size must be a positive odd int, got {self.kernel_size}")
        if self.ffn_expansion and self.kind != "replk":
            raise ValueError(f"BlockSpec.ffn_expansion applies to kind 'replk' only, not {self.kind!r}")

    def build(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
        """The units of one stage: ``in_ch -> out_ch``; the first unit carries ``stride``."""
        k, n = self.kernel_size, len(self.dilations)
        ins = [in_ch] + [out_ch] * (n - 1)
        strides = [stride] + [1] * (n - 1)
        if self.kind == "conv":
            units = [conv_norm_act(spatial_dims, i, out_ch, k, s, d) for i, s, d in zip(ins, strides, self.dilations)]
        elif self.kind == "replk":
            units = [conv_norm_act(spatial_dims, in_ch, out_ch, 3, stride)]
            units += [RepLKBlock(spatial_dims, out_ch, k, 3, self.ffn_expansion) for _ in range(n)]
        elif self.kind == "mbv2":
            units = [
                InvertedResidual(spatial_dims, i, out_ch, s, self.expand_ratio, d, k)
                for i, s, d in zip(ins, strides, self.dilations)
            ]
        elif self.kind == "ghost":
            units = [GhostBottleneck(spatial_dims, i, out_ch, s, self.expand_ratio, k) for i, s in zip(ins, strides)]
        elif self.kind == "convnext":
            units = [ConvNeXtStage(spatial_dims, in_ch, out_ch, stride, depth=n, kernel_size=k)]
        else:  # shuffle
            units = [ShuffleUnit(spatial_dims, i, out_ch, s, k, d) for i, s, d in zip(ins, strides, self.dilations)]
        return nn.Sequential(*units)


CONV = BlockSpec()


@dataclass(frozen=True)
class MViTSpec:
    """MobileViT settings inside the multi-branch models (transformer width = the stage's width)."""

    depth: int = 2
    heads: int = 4
    patch_size: int = 2


@dataclass(frozen=True)
class BranchSpec:
    """One encoder branch: its name (``branch_<name>``), the modalities it reads, its block."""

    name: str
    modalities: tuple[str, ...]
    block: BlockSpec = CONV


@dataclass(frozen=True)
class MultiBranchConfig:
    """Architecture of a :class:`MultiBranchUNet` (widths come separately, from the size table).

    Args:
        branches: the encoder branches, >= 1 (each reads its own modalities).
        fused_block: block of the fused stages (fusion_stage .. 5).
        downsample: ``maxpool`` (pool, then the block) or ``stride`` (the block's first unit has stride 2).
        fusion_stage: first fused stage, 2..5; branches run stages 1 .. fusion_stage - 1.
        mvit_stages: stages (1..5) followed by a MobileViT block (in every branch for branch stages).
        decoder: ``unet`` (transposed conv, concatenated skip, double conv) or ``additive``
            (interpolation, 1x1-projected skip added, one inverted residual).
        shuffle_on_merge: channel-shuffle the concatenated branches (ShuffleNet-style).
        modality_attention: weight the branches by a learned softmax gate before merging and keep
            the weights in ``model.modality_weights``.
        mvit: MobileViT settings (default from ``DUALBRANCH_MVIT``).
    """

    branches: tuple[BranchSpec, ...]
    fused_block: BlockSpec = CONV
    downsample: str = "maxpool"
    fusion_stage: int = 5
    mvit_stages: tuple[int, ...] = ()
    decoder: str = "unet"
    shuffle_on_merge: bool = False
    modality_attention: bool = False
    mvit: MViTSpec = field(default_factory=lambda: MViTSpec(**DUALBRANCH_MVIT))

    def __post_init__(self) -> None:
        if not self.branches:
            raise ValueError("MultiBranchConfig needs at least one branch")
        names = [b.name for b in self.branches]
        if len(set(names)) != len(names):
            raise ValueError(f"branch names must be unique, got {names}")
        if self.downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample must be one of {DOWNSAMPLING}, got {self.downsample!r}")
        if not 2 <= self.fusion_stage <= N_STAGES:
            raise ValueError(f"fusion_stage must be in 2..{N_STAGES}, got {self.fusion_stage}")
        if any(not 1 <= s <= N_STAGES for s in self.mvit_stages):
            raise ValueError(f"mvit_stages must lie in 1..{N_STAGES}, got {self.mvit_stages}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.modality_attention and len(self.branches) < 2:
            raise ValueError("modality_attention needs at least two branches")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the branches read, in canonical order (the model's input channels)."""
        return tuple(m for m in MODALITIES if any(m in b.modalities for b in self.branches))

    @property
    def divisor(self) -> int:
        """What every patch axis must be divisible by: 2^4 for the four downsamplings, and whole
        MobileViT patches at the deepest MobileViT stage."""
        need = 2 ** (N_STAGES - 1)
        for s in self.mvit_stages:
            need = max(need, 2 ** (s - 1) * self.mvit.patch_size)
        return need


def _stage(config: MultiBranchConfig, block: BlockSpec, sd: int, stage: int, in_ch: int, out_ch: int) -> nn.Sequential:
    """Stage ``stage`` (1-based): [maxpool] -> block units -> [MobileViT]."""
    down = stage > 1
    layers: list[nn.Module] = []
    if down and config.downsample == "maxpool":
        layers.append(Pool[Pool.MAX, sd](kernel_size=2, stride=2))
    layers.append(block.build(sd, in_ch, out_ch, stride=2 if down and config.downsample == "stride" else 1))
    if stage in config.mvit_stages:
        m = config.mvit
        layers.append(MobileViTBlock(sd, out_ch, out_ch, m.depth, m.patch_size, m.heads))
    return nn.Sequential(*layers)


class EncoderBranch(nn.Module):
    """Stages 1..n of one branch; returns the output of every stage (the skips)."""

    def __init__(self, stages: Sequence[nn.Module]):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class MultiBranchUNet(nn.Module):
    """U-Net whose first stages run as separate per-modality branches (see the module docstring).

    Args:
        config: the architecture.
        widths: channels of stages 1..5 (per branch before fusion).
        in_modalities: the input channels' modalities, in canonical order; every branch's
            modalities must be among them.
        spatial_dims: 2 or 3.
        out_channels: number of classes.

    ``forward(x)``: ``x`` (B, len(in_modalities), *S) -> logits (B, out_channels, *S).
    With ``modality_attention``: after each forward, ``modality_weights`` holds the detached
    (B, n_branches) softmax weights and ``modality_names`` the branch names in that order.
    """

    def __init__(
        self,
        config: MultiBranchConfig,
        widths: Sequence[int],
        in_modalities: Sequence[str],
        spatial_dims: int = 3,
        out_channels: int = NUM_CLASSES,
    ):
        super().__init__()
        if len(widths) != N_STAGES or any(w < 1 for w in widths):
            raise ValueError(f"widths must hold {N_STAGES} positive stage widths, got {tuple(widths)}")
        in_modalities = tuple(in_modalities)
        self.config = config
        self.in_modalities = in_modalities
        self.modality_names = tuple(b.name for b in config.branches)
        self.modality_weights: torch.Tensor | None = None
        self._branch_channels: list[list[int]] = []
        for b in config.branches:
            missing = [m for m in b.modalities if m not in in_modalities]
            if missing or not b.modalities:
                raise ValueError(
                    f"branch {b.name!r} reads {b.modalities}, but the input holds {in_modalities} "
                    f"(choose modalities from {MODALITIES} that the model receives)"
                )
            self._branch_channels.append([in_modalities.index(m) for m in b.modalities])

        sd, n_br, fs = spatial_dims, len(config.branches), config.fusion_stage
        # Branch stages 1 .. fs-1, one branch module per modality group.
        self._branch_names = [f"branch_{b.name}" for b in config.branches]
        for name, b in zip(self._branch_names, config.branches):
            ins = [len(b.modalities), *widths[: fs - 2]]
            stages = [_stage(config, b.block, sd, s + 1, ins[s], widths[s]) for s in range(fs - 1)]
            setattr(self, name, EncoderBranch(stages))
        self.fusion = BranchFusion(n_br, widths[fs - 2], config.modality_attention, config.shuffle_on_merge)
        # Fused stages fs .. 5 (the last is the bottleneck).
        skip_ch = [n_br * w for w in widths[: fs - 1]] + list(widths[fs - 1 :])
        self._fused_names = [f"encoder{s}" for s in range(fs, N_STAGES)] + ["bottleneck"]
        for s, name in zip(range(fs, N_STAGES + 1), self._fused_names):
            setattr(self, name, _stage(config, config.fused_block, sd, s, skip_ch[s - 2], widths[s - 1]))
        # Decoder 4 .. 1: from stage s+1's width to stage s's, merging level s's skip.
        up = UpBlock if config.decoder == "unet" else AdditiveUpBlock
        self._decoder_names = [f"decoder{s}" for s in range(N_STAGES - 1, 0, -1)]
        for s, name in zip(range(N_STAGES - 1, 0, -1), self._decoder_names):
            setattr(self, name, up(sd, widths[s], skip_ch[s - 1], widths[s - 1]))
        self.head = OutHead(sd, widths[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.in_modalities):
            raise ValueError(
                f"expected {len(self.in_modalities)} input channels {self.in_modalities}, got shape {tuple(x.shape)}"
            )
        branch_feats = [getattr(self, name)(x[:, idx]) for name, idx in zip(self._branch_names, self._branch_channels)]
        skips = list(self.fusion(branch_feats))  # a copy: fused stages append to it
        if self.fusion.last_weights is not None:
            self.modality_weights = self.fusion.last_weights
        h = skips[-1]
        for name in self._fused_names:
            h = getattr(self, name)(h)
            skips.append(h)
        for name, skip in zip(self._decoder_names, reversed(skips[:-1])):
            h = getattr(self, name)(h, skip)
        return self.head(h)

    def reparameterize(self) -> int:
        """Fuse every RepLK convolution for inference (exact in eval mode); returns how many."""
        return reparameterize_model(self)


def check_patch(name: str, config: MultiBranchConfig, patch_size: Sequence[int]) -> None:
    """ValueError unless every axis survives the four downsamplings (the registry's check, which
    also rejects a single-voxel bottleneck) and, with MobileViT, splits into whole patches."""
    check_divisible(name, patch_size, 2 ** (N_STAGES - 1))
    for axis, p in zip(("Z", "Y", "X")[-len(patch_size) :], patch_size):
        if p % config.divisor:
            raise ValueError(
                f"{name}: patch size {tuple(patch_size)} has {axis}={p}, which is not divisible by {config.divisor} "
                f"(MobileViT at stages {config.mvit_stages} needs whole {config.mvit.patch_size}-voxel patches); "
                f"use multiples of {config.divisor}"
            )


def make_factory(config: MultiBranchConfig, widths: Sequence[int], name: str) -> Callable[..., nn.Module]:
    """A registry factory ``(dim, patch_size, in_channels, out_channels)`` for one configuration."""
    modalities = config.modalities

    def factory(dim: str, patch_size: Sequence[int], in_channels: int, out_channels: int) -> nn.Module:
        if in_channels != len(modalities):
            raise ValueError(f"{name} reads {modalities} ({len(modalities)} channels), got in_channels={in_channels}")
        check_patch(name, config, patch_size)
        return MultiBranchUNet(config, widths, modalities, spatial_dims(dim), out_channels)

    return factory


def register_variants(
    variants: dict[str, tuple[MultiBranchConfig, str]], family: str, sizes: Sequence[str] = SIZES
) -> None:
    """Register ``{name}_{size}`` for every variant and size (widths from ``DUALBRANCH_CHANNELS``)."""
    for base, (config, description) in variants.items():
        for size in sizes:
            name = f"{base}_{size}"
            register_model(name, modalities=config.modalities, dims=("2d", "3d"), family=family,
                           description=description)(
                make_factory(config, DUALBRANCH_CHANNELS[size], name)
            )


def dual(t1ce: BlockSpec = CONV, flair: BlockSpec | None = None, **options) -> MultiBranchConfig:
    """A T1ce branch and a FLAIR branch (FLAIR's block defaults to T1ce's); ``options`` as MultiBranchConfig."""
    branches = (BranchSpec("t1ce", ("t1ce",), t1ce), BranchSpec("flair", ("flair",), flair or t1ce))
    return MultiBranchConfig(branches, **options)
