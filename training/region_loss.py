"""Region-based training (``--region_based``), as the BraTS winners since 2020 and nnU-Net's region mode do it:
the model predicts the data set's regions (BraTS: WT, TC, ET; a disjoint region such as RC gets its own channel)
with one sigmoid each, trained with Dice + binary cross-entropy, and the label map is painted back from the
regions in a fixed order (nnU-Net's ``regions_class_order``: ``LabelScheme.region_order``).

A pure module, no I/O: :class:`RegionDiceBCELoss`, ``dice_weight * (1 - soft Dice of every region) + bce_weight *
BCE``. The conversions between label maps and regions live in ``utils/regions.py`` (inference paints with them too).
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

from utils.labels import CLASSIC, LabelScheme
from utils.regions import region_order_table, region_targets


class RegionDiceBCELoss(nn.Module):
    """``dice_weight * (1 - soft Dice) + bce_weight * BCE`` over the region channels (sigmoid outputs).

    The Dice term is MONAI's :class:`~monai.losses.DiceLoss` with ``sigmoid=True`` over every region, pooled over the
    batch (``batch=True``, nnU-Net's batch Dice; per sample with ``batch_dice=False``), smoothing 1e-5; BCE is
    ``BCEWithLogitsLoss`` averaged over voxels and regions (nnU-Net's ``DC_and_BCE_loss``).
    ``forward(logits (B, R, *S), label int (B, *S))``.
    """

    def __init__(self, dice_weight: float, bce_weight: float, scheme: LabelScheme = CLASSIC,
                 batch_dice: bool = True) -> None:
        super().__init__()
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got dice {dice_weight}, bce {bce_weight}")
        self.dice_weight, self.bce_weight, self.scheme = dice_weight, bce_weight, scheme
        self.dice = DiceLoss(sigmoid=True, batch=batch_dice, include_background=True)
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
