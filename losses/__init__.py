"""Combined Dice + cross-entropy training losses."""

from .combined import LOSS_WEIGHTS, CombinedDiceCELoss, make_loss

__all__ = ["LOSS_WEIGHTS", "CombinedDiceCELoss", "make_loss"]
