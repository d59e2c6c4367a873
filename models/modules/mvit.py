"""MobileViT building blocks for 2D and 3D (one code path, chosen by ``spatial_dims``).

MobileViT (Mehta & Rastegari, ICLR 2022) mixes a local convolution with a global transformer that
runs over *unfolded* patches: the feature map is cut into non-overlapping patches of
``patch_size`` pixels; pixel ``p`` of every patch forms one sequence, so each of the ``P`` pixel
positions attends across all ``N`` patches. Folding reverses the reshaping.

Neither torch nor MONAI ships a MobileViT block (timm's is 2D only and tied to BatchNorm), so it is
written here from MONAI parts (``Convolution``, ``SABlock``, ``MLPBlock``). The convolutions use
the suite's instance norm + LeakyReLU unit (``modules.conv.conv_norm_act``) rather than
MobileViT's BatchNorm + SiLU: 3D training runs at batch size 1. The transformer MLP keeps SiLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, MLPBlock, SABlock

from models.modules.conv import conv_norm_act


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))`` (SiLU MLP, as MobileViT).

    Built from MONAI's ``SABlock`` (with ``scaled_dot_product_attention``) and ``MLPBlock``; MONAI's
    ``TransformerBlock`` is not used because it always creates a cross-attention norm whose
    parameters never receive a gradient (which breaks DDP without ``find_unused_parameters``).
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        # MONAI's fused path applies dropout in eval mode too, so it is used only without dropout.
        self.attn = SABlock(dim, heads, dropout_rate=dropout, qkv_bias=True, use_flash_attention=dropout == 0)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dropout_rate=dropout, act="SWISH")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"expected {n} values, got {value}")
    return value


def unfold_patches(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """``(B, D, *S)`` -> ``(B * P, N, D)``: ``P`` pixels per patch, ``N`` patches (any number of spatial axes).

    Sequence ``b * P + p`` holds pixel ``p`` of every patch of sample ``b``.
    """
    b, d, *spatial = x.shape
    n = len(spatial)
    split: list[int] = []
    for axis, (s, p) in enumerate(zip(spatial, patch_size)):
        if s % p:
            raise ValueError(
                f"MobileViT: feature map {tuple(spatial)} has size {s} on spatial axis {axis}, "
                f"not divisible by the patch size {p}"
            )
        split += [s // p, p]
    x = x.reshape(b, d, *split)  # (B, D, n1, p1, n2, p2, ...)
    perm = [0, *(3 + 2 * i for i in range(n)), *(2 + 2 * i for i in range(n)), 1]  # (B, p..., n..., D)
    x = x.permute(perm)
    n_pixels = 1
    for p in patch_size:
        n_pixels *= p
    return x.reshape(b * n_pixels, -1, d)


def fold_patches(x: torch.Tensor, patch_size: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`unfold_patches`: ``(B * P, N, D)`` -> ``(B, D, *spatial)``."""
    n = len(spatial)
    d = x.shape[-1]
    counts = [s // p for s, p in zip(spatial, patch_size)]
    x = x.reshape(-1, *patch_size, *counts, d)  # (B, p..., n..., D)
    perm = [0, 2 * n + 1]
    for i in range(n):
        perm += [1 + n + i, 1 + i]  # (B, D, n1, p1, n2, p2, ...)
    return x.permute(perm).reshape(x.shape[0], d, *spatial)


class MobileViTBlock(nn.Module):
    """MobileViT block (v1): local conv, global transformer over unfolded patches, fusion.

    ``x -> conv3x3 -> conv1x1 (to transformer_dim) -> unfold -> depth x transformer -> LayerNorm
    -> fold -> conv1x1 (back to channels) -> concat with x -> conv3x3 -> out``; the output has the
    input's shape ``(B, channels, *S)``. Every spatial size of the input must be divisible by the
    matching ``patch_size`` (a ``ValueError`` names the axis otherwise).

    This signature is stable: other families (the dual-branch models) import the block.

    Args:
        spatial_dims: 2 or 3.
        channels: input and output channels.
        transformer_dim: token width inside the transformer; divisible by ``heads``.
        depth: number of transformer layers.
        patch_size: patch edge (int, same on every axis) or one value per spatial axis; 1 makes
            the transformer attend over every position of the map.
        heads: attention heads.
        mlp_ratio: MLP width relative to ``transformer_dim`` (MobileViT uses 2).
        dropout: dropout in attention and MLP.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        transformer_dim: int,
        depth: int,
        patch_size: int | Sequence[int] = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if transformer_dim % heads:
            raise ValueError(f"MobileViTBlock: transformer_dim={transformer_dim} is not divisible by heads={heads}")
        self.patch_size = _as_tuple(patch_size, spatial_dims)
        self.local_rep = nn.Sequential(
            conv_norm_act(spatial_dims, channels, channels, kernel_size=3),
            Convolution(spatial_dims, channels, transformer_dim, kernel_size=1, conv_only=True, bias=False),
        )
        self.transformer = nn.Sequential(
            *(TransformerLayer(transformer_dim, heads, int(transformer_dim * mlp_ratio), dropout)
              for _ in range(depth)),
            nn.LayerNorm(transformer_dim),
        )
        self.proj = conv_norm_act(spatial_dims, transformer_dim, channels, kernel_size=1)
        self.fusion = conv_norm_act(spatial_dims, 2 * channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        y = self.local_rep(x)
        y = fold_patches(self.transformer(unfold_patches(y, self.patch_size)), self.patch_size, spatial)
        return self.fusion(torch.cat([x, self.proj(y)], dim=1))
