"""Combined soft Dice + cross-entropy losses: ``"nnunet"`` 0.7/0.3 and ``"standard"`` 0.5/0.5.

The 0.7 Dice / 0.3 CE weighting of ``"nnunet"`` (``--use_nnunet_loss``, the default) is this suite's
choice, kept from the system it reproduces; nnU-Net v2 itself weights Dice and cross-entropy 1:1,
which is ``"standard"`` (``--use_standard_loss``) up to a factor 1/2, and exactly ``"nnunet_v2"``
(``--use_nnunet_v2_loss``, weights 1 and 1, what ``--recipe nnunet`` sets): the factor matters with SGD, whose step
scales with the loss.

Both are MONAI's :class:`~monai.losses.DiceCELoss` with settings chosen like nnU-Net's default
``DC_and_CE_loss``: softmax over the logits, one-hot target, the soft Dice term computed over the
foreground classes only (``include_background=False``, nnU-Net's ``do_bg=False``) and pooled over
the batch (``batch=True``, nnU-Net's ``batch_dice``; per sample and averaged with ``batch_dice=False``),
smoothing 1e-5; cross-entropy over all classes, averaged over voxels. The Dice term is ``1 - Dice`` so a perfect
prediction gives ~0; nnU-Net's is ``-Dice``: the two losses differ by the constant Dice weight, with equal gradients.

With ``deep_supervision`` the loss is wrapped in :class:`~training.deep_supervision.DeepSupervisionLoss`
(nnU-Net's weights and downsampled targets).
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from training.deep_supervision import DeepSupervisionLoss
from training.region_loss import RegionDiceBCELoss
from utils.labels import CLASSIC, LabelScheme

# kind -> (Dice weight, cross-entropy weight)
LOSS_WEIGHTS: dict[str, tuple[float, float]] = {
    "nnunet": (0.7, 0.3),
    "standard": (0.5, 0.5),
    "nnunet_v2": (1.0, 1.0),
}


class CombinedDiceCELoss(nn.Module):
    """``dice_weight * (1 - soft Dice over foreground) + ce_weight * cross-entropy``.

    ``forward(logits, target)``: logits float (B, C, *spatial); target integer class indices
    (B, *spatial) (a (B, 1, *spatial) target is accepted too). Returns a scalar.
    """

    def __init__(self, dice_weight: float, ce_weight: float, batch_dice: bool = True) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got dice {dice_weight}, ce {ce_weight}")
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.loss = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=batch_dice,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 3:
            raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
        spatial = (logits.shape[0], *logits.shape[2:])
        if tuple(target.shape) == spatial:
            target = target.unsqueeze(1)
        elif tuple(target.shape) != (logits.shape[0], 1, *logits.shape[2:]):
            raise ValueError(
                f"target must be class indices of shape (B, *spatial) = {spatial} for logits "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        if target.is_floating_point():
            raise ValueError(f"target must hold integer class indices (int64), got dtype {target.dtype}")
        return self.loss(logits, target)

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, ce_weight={self.ce_weight}"


def make_loss(kind: str = "nnunet", region_based: bool = False, scheme: LabelScheme = CLASSIC,
              batch_dice: bool = True, deep_supervision: bool = False) -> nn.Module:
    """The training loss of the suite: ``"nnunet"`` = 0.7 Dice + 0.3 CE (default),
    ``"standard"`` = 0.5 Dice + 0.5 CE (see :class:`CombinedDiceCELoss`); with ``region_based`` the same weights
    for Dice + binary cross-entropy over the regions of ``scheme``
    (:class:`~training.region_loss.RegionDiceBCELoss`); ``"nnunet_v2"`` = 1 Dice + 1 CE (nnU-Net v2's).
    ``batch_dice``: the Dice pooled over the batch (else per sample, averaged). ``deep_supervision``: the loss of
    every output scale, nnU-Net's weights (:class:`~training.deep_supervision.DeepSupervisionLoss`)."""
    if kind not in LOSS_WEIGHTS:
        raise ValueError(f"unknown loss kind {kind!r}; valid kinds: {', '.join(LOSS_WEIGHTS)}")
    dice_weight, ce_weight = LOSS_WEIGHTS[kind]
    if region_based:
        loss: nn.Module = RegionDiceBCELoss(dice_weight, ce_weight, scheme, batch_dice=batch_dice)
    else:
        loss = CombinedDiceCELoss(dice_weight, ce_weight, batch_dice=batch_dice)
    return DeepSupervisionLoss(loss) if deep_supervision else loss
