"""Region-based training (``--region_based``), as the BraTS winners since 2020 and nnU-Net's region mode do it:
the model predicts the data set's regions (BraTS: WT, TC, ET; a disjoint region such as RC gets its own channel)
with one sigmoid each, trained with Dice + binary cross-entropy, and the label map is painted back from the
regions in a fixed order (nnU-Net's ``regions_class_order``: ``LabelScheme.region_order``).

Pure functions and modules, no I/O:

- :func:`region_targets`: integer label maps -> the 0/1 region maps the model learns;
- :class:`RegionDiceBCELoss`: ``dice_weight * (1 - soft Dice of every region) + bce_weight * BCE``;
- :func:`paint_regions`: region probabilities (or logits) -> the label map, painting each region's class in order.
"""

from __future__ import annotations

import functools

import torch
from monai.losses import DiceLoss
from torch import nn

from utils.labels import CLASSIC, LabelScheme


@functools.lru_cache(maxsize=32)
def region_order_table(scheme: LabelScheme = CLASSIC) -> torch.Tensor:
    """``[r, c]``: class ``c`` lies in the ``r``-th region of ``scheme.region_order`` (bool, (R, K); CPU, cached:
    do not modify it)."""
    regions = scheme.region_classes
    return torch.tensor([[c in regions[key] for c in range(scheme.num_classes)] for key, _ in scheme.region_order],
                        dtype=torch.bool)


def region_targets(label: torch.Tensor, scheme: LabelScheme = CLASSIC, table: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Integer label maps ``(B, *spatial)`` -> float region maps ``(B, R, *spatial)`` (1 inside a region);
    ``table``: :func:`region_order_table` already on the labels' device."""
    table = region_order_table(scheme).to(label.device) if table is None else table
    return table[:, label.long()].movedim(0, 1).float()


def paint_regions(regions: torch.Tensor, scheme: LabelScheme = CLASSIC, threshold: float = 0.5) -> torch.Tensor:
    """Region scores ``(R, *spatial)`` (probabilities; give logits with ``threshold=0``) -> uint8 label map: 0, then for
    each region in ``scheme.region_order`` its class where its score exceeds ``threshold`` (later regions win)."""
    if regions.shape[0] != scheme.region_channels:
        raise ValueError(f"expected {scheme.region_channels} region channels ({scheme.region_order}), "
                         f"got {regions.shape[0]}")
    labels = torch.zeros(regions.shape[1:], dtype=torch.uint8, device=regions.device)
    for channel, (_, cls) in enumerate(scheme.region_order):
        labels[regions[channel] > threshold] = cls
    return labels


class RegionDiceBCELoss(nn.Module):
    """``dice_weight * (1 - soft Dice) + bce_weight * BCE`` over the region channels (sigmoid outputs).

    The Dice term is MONAI's :class:`~monai.losses.DiceLoss` with ``sigmoid=True`` over every region, pooled over the
    batch (``batch=True``, nnU-Net's batch Dice), smoothing 1e-5; BCE is ``BCEWithLogitsLoss`` averaged over voxels
    and regions (nnU-Net's ``DC_and_BCE_loss``). ``forward(logits (B, R, *S), label int (B, *S))``.
    """

    def __init__(self, dice_weight: float, bce_weight: float, scheme: LabelScheme = CLASSIC) -> None:
        super().__init__()
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got dice {dice_weight}, bce {bce_weight}")
        self.dice_weight, self.bce_weight, self.scheme = dice_weight, bce_weight, scheme
        self.dice = DiceLoss(sigmoid=True, batch=True, include_background=True)
        self.bce = nn.BCEWithLogitsLoss()
        self._tables: dict[torch.device, torch.Tensor] = {}  # the region table per device: one copy, not one a step

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.scheme.region_channels:
            raise ValueError(f"region-based logits need {self.scheme.region_channels} channels "
                             f"({self.scheme.region_order}), got {tuple(logits.shape)}")
        if label.device not in self._tables:
            self._tables[label.device] = region_order_table(self.scheme).to(label.device)
        target = region_targets(label, self.scheme, self._tables[label.device])
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, bce_weight={self.bce_weight}, regions={self.scheme.region_order}"
