"""Fast batched BraTS region Dice on torch label maps, for validation during training.

The counts are plain sums, so distributed ranks can ``all_reduce`` them before the Dice is
formed. The suite's validation Dice is the mean over cases: keep one row of counts per case
(``reduce_batch=False``), turn each into Dice values, and average those::

    counts = region_dice_counts(pred, target, reduce_batch=False)   # (B, 3, 3)
    per_case = dice_from_counts(counts)                              # (B, 3): WT, TC, ET
    dice_sum = per_case.sum(0); n_cases = per_case.shape[0]          # all_reduce these two
    mean_dice = dice_sum / n_cases                                   # equals brats_region_metrics Dice

``dice_from_counts(region_dice_counts(pred, target))`` gives the *global* (pooled) Dice instead.
"""

from __future__ import annotations

import torch

from utils.labels import CLASSIC, LabelScheme


def region_table(scheme: LabelScheme = CLASSIC) -> torch.Tensor:
    """Membership table: ``[r, c]`` is True when class ``c`` belongs to region ``r`` (the scheme's order)."""
    return torch.tensor([[c in classes for c in range(scheme.num_classes)]
                         for classes in scheme.region_classes.values()], dtype=torch.bool)


def region_dice_counts(pred: torch.Tensor, target: torch.Tensor, reduce_batch: bool = True,
                       scheme: LabelScheme = CLASSIC) -> torch.Tensor:
    """Per-region Dice counts of batched label maps.

    Args:
        pred: predicted model classes 0..scheme.num_classes - 1, integer tensor (B, *spatial) (argmax of the logits).
        target: ground-truth classes, same shape.
        reduce_batch: sum the counts over the batch (default) or keep one row per case.
        scheme: the classes and regions (default CLASSIC: WT, TC, ET).

    Returns:
        int64 tensor of shape (R, 3), or (B, R, 3) when ``reduce_batch`` is False: rows are the R
        regions of the scheme (CLASSIC: WT, TC, ET); columns are (intersection, pred voxels, target voxels).
        On the device of ``pred``. Labels are not range-checked here (that would synchronise the GPU);
        values outside the scheme's classes raise an indexing error.
    """
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(f"pred and target must be torch tensors, got {type(pred).__name__}, {type(target).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape (B, *spatial), got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if pred.ndim < 2:
        raise ValueError(f"expected batched label maps (B, *spatial), got shape {tuple(pred.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError(f"pred and target must be integer label maps, got {pred.dtype} and {target.dtype}; "
                         "take the argmax of the logits first")
    table = region_table(scheme).to(pred.device)
    pred_regions = table[:, pred.long()].flatten(2)      # (R, B, N)
    target_regions = table[:, target.long()].flatten(2)
    counts = torch.stack(
        [(pred_regions & target_regions).sum(-1), pred_regions.sum(-1), target_regions.sum(-1)], dim=-1
    ).transpose(0, 1)                                    # (B, R, 3)
    return counts.sum(0) if reduce_batch else counts


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Dice per region from counts of :func:`region_dice_counts` (shape (..., R, 3) -> (..., R)).

    Dice = 2 * intersection / (pred + target); both empty -> 1.0 (BraTS convention).
    """
    if counts.ndim < 1 or counts.shape[-1] != 3:
        raise ValueError(f"counts must end with the 3 columns (intersection, pred, target), got {tuple(counts.shape)}")
    counts = counts.double()
    intersection, total = counts[..., 0], counts[..., 1] + counts[..., 2]
    return torch.where(total > 0, 2.0 * intersection / total.clamp_min(1.0), torch.ones_like(total))
