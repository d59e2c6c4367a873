"""Public facade kept for scripts outside the project: the training losses live in ``training/losses.py``
(combined Dice + cross-entropy, softmax classes) and ``training/region_loss.py`` (Dice + BCE over regions); the
label-map <-> region conversions in ``utils/regions.py``. Nothing inside the project imports this package."""

from training.losses import LOSS_WEIGHTS, CombinedDiceCELoss, make_loss
from training.region_loss import RegionDiceBCELoss
from utils.regions import paint_regions, region_order_table, region_targets

__all__ = ["LOSS_WEIGHTS", "CombinedDiceCELoss", "RegionDiceBCELoss", "make_loss", "paint_regions",
           "region_order_table", "region_targets"]
