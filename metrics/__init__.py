"""Segmentation metrics: BraTS region Dice/HD95, precision/recall, confusion matrix, training Dice counts."""

from utils.labels import NUM_CLASSES, REGIONS

from .dice_counts import dice_from_counts, region_dice_counts
from .segmentation import (
    HD95_EMPTY,
    REGION_METRIC_KEYS,
    add_dice_mean,
    bounding_box,
    brats_region_metrics,
    confusion_matrix,
    dice_coefficient,
    hd95,
    mean_metrics,
    precision_recall,
    precision_recall_from_confusion,
    region_mask,
)

__all__ = [
    "HD95_EMPTY",
    "NUM_CLASSES",
    "REGIONS",
    "REGION_METRIC_KEYS",
    "add_dice_mean",
    "bounding_box",
    "brats_region_metrics",
    "confusion_matrix",
    "dice_coefficient",
    "dice_from_counts",
    "hd95",
    "mean_metrics",
    "precision_recall",
    "precision_recall_from_confusion",
    "region_dice_counts",
    "region_mask",
]
