"""Tests of losses/: the combined Dice + cross-entropy losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from losses import LOSS_WEIGHTS, make_loss


def logits_and_target(shape=(2, 6, 7, 5), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], 4, *shape[1:], generator=generator)
    target = torch.randint(0, 4, shape, generator=generator)
    return logits, target


@pytest.mark.parametrize("kind", ["nnunet", "standard", "nnunet_v2"])
def test_weighted_sum_of_separate_dice_and_ce(kind):
    logits, target = logits_and_target()
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(logits, target[:, None])
    ce = F.cross_entropy(logits, target)
    dice_weight, ce_weight = LOSS_WEIGHTS[kind]
    expected = dice_weight * dice + ce_weight * ce
    assert torch.allclose(make_loss(kind)(logits, target), expected, rtol=1e-6, atol=1e-7)


def test_default_is_nnunet_weights():
    assert LOSS_WEIGHTS == {"nnunet": (0.7, 0.3), "standard": (0.5, 0.5), "nnunet_v2": (1.0, 1.0)}
    loss = make_loss()
    assert (loss.dice_weight, loss.ce_weight) == (0.7, 0.3)
    logits, target = logits_and_target(seed=1)
    assert not torch.isclose(make_loss("nnunet")(logits, target), make_loss("standard")(logits, target))


@pytest.mark.parametrize("kind", ["nnunet", "standard"])
@pytest.mark.parametrize("shape", [(2, 8, 8), (1, 6, 6, 6)])
def test_confident_correct_logits_give_near_zero_loss(kind, shape):
    _, target = logits_and_target(shape)
    logits = 30.0 * F.one_hot(target, 4).movedim(-1, 1).float()
    assert make_loss(kind)(logits, target).item() < 1e-3
    wrong = 30.0 * F.one_hot((target + 1) % 4, 4).movedim(-1, 1).float()
    assert make_loss(kind)(wrong, target).item() > 5.0


def test_gradients_finite_and_channel_dim_target_accepted():
    logits, target = logits_and_target((2, 4, 4, 4), seed=2)
    logits.requires_grad_(True)
    loss = make_loss()(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.equal(make_loss()(logits.detach(), target[:, None]), loss.detach())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="nnunet, standard"):
        make_loss("focal")
    logits, target = logits_and_target()
    with pytest.raises(ValueError, match="shape"):
        make_loss()(logits, target[:, :3])
    with pytest.raises(ValueError, match="integer"):
        make_loss()(logits, target.float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loss_on_cuda_equals_cpu():
    logits, target = logits_and_target(seed=3)
    on_gpu = make_loss().cuda()(logits.cuda(), target.cuda())
    assert torch.allclose(on_gpu.cpu(), make_loss()(logits, target), rtol=1e-5, atol=1e-6)
