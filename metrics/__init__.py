"""Segmentation metrics: BraTS region Dice/HD95/NSD, per-class Dice, precision/recall, confusion matrix,
training Dice counts."""

from utils.labels import NUM_CLASSES, REGIONS

from .dice_counts import dice_from_counts, region_dice_counts
from .segmentation import (
    CLASS_DICE,
    CLASS_DICE_KEYS,
    HD95_EMPTY,
    NSD_KEYS,
    NSD_TOLERANCE_MM,
    REGION_METRIC_KEYS,
    bounding_box,
    brats_region_metrics,
    confusion_matrix,
    dice_coefficient,
    hd95,
    mean_metrics,
    mean_region_dice,
    normalized_surface_dice,
    precision_recall,
    precision_recall_from_confusion,
    region_mask,
)

__all__ = [
    "CLASS_DICE",
    "CLASS_DICE_KEYS",
    "HD95_EMPTY",
    "NSD_KEYS",
    "NSD_TOLERANCE_MM",
    "NUM_CLASSES",
    "REGIONS",
    "REGION_METRIC_KEYS",
    "bounding_box",
    "brats_region_metrics",
    "confusion_matrix",
    "dice_coefficient",
    "dice_from_counts",
    "hd95",
    "mean_metrics",
    "mean_region_dice",
    "normalized_surface_dice",
    "precision_recall",
    "precision_recall_from_confusion",
    "region_dice_counts",
    "region_mask",
]
