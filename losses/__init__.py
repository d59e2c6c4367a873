"""Training losses: combined Dice + cross-entropy (softmax classes), and Dice + BCE over regions (sigmoid)."""

from .combined import LOSS_WEIGHTS, CombinedDiceCELoss, make_loss
from .regions import RegionDiceBCELoss, paint_regions, region_order_table, region_targets

__all__ = ["LOSS_WEIGHTS", "CombinedDiceCELoss", "RegionDiceBCELoss", "make_loss", "paint_regions",
           "region_order_table", "region_targets"]
