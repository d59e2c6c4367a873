"""Merging the per-modality encoder branches of the multi-branch U-Nets.

:class:`ModalityAttention` is a squeeze-excitation-style gate over *branches* (not channels): it
pools each branch's deepest features, runs a small MLP and gives one softmax weight per modality.
MONAI's ``ChannelSELayer`` gates each channel independently with a sigmoid, which does not give
weights that compete across modalities and sum to one, so the gate is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from models.modules.shufflenet import channel_shuffle


class ModalityAttention(nn.Module):
    """Softmax weights ``(B, n_branches)`` from globally pooled branch features.

    Args:
        channels: channels of each branch's feature map.
        n_branches: number of branches (modalities), >= 2.
        reduction: hidden width = ``max(n_branches * channels // reduction, 4)``.
    """

    def __init__(self, channels: int, n_branches: int, reduction: int = 4):
        super().__init__()
        if n_branches < 2:
            raise ValueError(f"ModalityAttention needs at least 2 branches, got {n_branches}")
        hidden = max(n_branches * channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Linear(n_branches * channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_branches)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat([f.flatten(2).mean(dim=2) for f in features], dim=1)  # squeeze: (B, n * C)
        return torch.softmax(self.mlp(pooled), dim=1)


class BranchFusion(nn.Module):
    """Merges branch features level by level: optional modality weighting, concatenation, optional shuffle.

    Input: one list per branch with that branch's features at levels 1..L (same shapes across
    branches at a level). Output: L merged maps, each the channel concatenation of the branches.

    With ``attention``, the weights ``w`` (B, n) come from the deepest level and every branch's
    features are scaled by ``n * w_k`` at every level (uniform weights leave features unchanged);
    the last weights are kept in ``self.last_weights`` (detached). With ``shuffle``, the merged
    channels are interleaved across branches (ShuffleNet's channel shuffle, groups = n branches).

    Args:
        n_branches: number of branches.
        deepest_channels: per-branch channels at the deepest level (for the attention MLP).
        attention: weight the branches by :class:`ModalityAttention`.
        shuffle: channel-shuffle the concatenation.
    """

    def __init__(self, n_branches: int, deepest_channels: int, attention: bool = False, shuffle: bool = False):
        super().__init__()
        self.n_branches = n_branches
        self.shuffle = shuffle
        self.attention = ModalityAttention(deepest_channels, n_branches) if attention else None
        self.last_weights: torch.Tensor | None = None

    def forward(self, branch_features: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        if len(branch_features) != self.n_branches:
            raise ValueError(f"BranchFusion expects {self.n_branches} branches, got {len(branch_features)}")
        scales: list[torch.Tensor | None] = [None] * self.n_branches
        if self.attention is not None:
            weights = self.attention([feats[-1] for feats in branch_features])
            self.last_weights = weights.detach()
            shape = (-1, 1) + (1,) * (branch_features[0][-1].dim() - 2)
            scales = [(self.n_branches * weights[:, k]).reshape(shape) for k in range(self.n_branches)]
        merged = []
        for level in zip(*branch_features):
            maps = [f if s is None else f * s for f, s in zip(level, scales)]
            cat = torch.cat(maps, dim=1)
            merged.append(channel_shuffle(cat, self.n_branches) if self.shuffle else cat)
        return merged
