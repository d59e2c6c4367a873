"""Deep supervision as nnU-Net v2 trains it (``--deep_supervision``): a pure loss module, no I/O.

A model built with ``deep_supervision=True`` returns, in training mode, a list of logits from full resolution down
(``models.registry.ModelSpec``). :class:`DeepSupervisionLoss` applies the run's loss to each scale against the label
map downsampled to that scale, and sums them with nnU-Net's weights (:func:`ds_weights`).

What nnU-Net v2 (2.8.1) does, and how this module matches it:

- Weights (``nnUNetTrainer._build_loss``): ``1 / 2**i`` for output ``i`` (0 = full resolution), the lowest
  resolution set to 0, the rest normalised to sum 1 (with 5 outputs: 8/15, 4/15, 2/15, 1/15, 0). Under DDP without
  torch.compile nnU-Net gives the lowest output 1e-6 instead of 0, only to avoid DDP's unused-parameter error; here
  it is always 0 (skipped, as nnU-Net skips zero weights), and the trainer builds DDP with
  ``find_unused_parameters=True`` for the models with several output heads instead.
- Targets (batchgeneratorsv2 ``DownsampleSegForDSTransform``, scales ``1 / cumprod(strides)[:-1]``): the label is
  resized to ``round(shape * scale)`` with ``interpolate(mode="nearest-exact")``. Here the label is resized with the
  same interpolation to each output's spatial shape, which is the same shape whenever the patch is divisible by the
  network's total stride (which the nnU-Net models require).
- Region-based training (``--region_based``): nnU-Net converts the label map to region channels
  (``ConvertSegmentationToRegionsTransform``) and then downsamples each channel. Nearest-exact interpolation only
  picks voxels, never mixes them, so converting then downsampling equals downsampling then converting, voxel for
  voxel (tests/test_nnunet.py checks it); the region loss here receives the downsampled label map and converts it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def ds_weights(n_outputs: int) -> tuple[float, ...]:
    """nnU-Net's deep-supervision weights for ``n_outputs`` outputs (full resolution first): ``1/2**i``, the
    lowest resolution 0, normalised to sum 1. One output: ``(1.0,)`` (no deep supervision)."""
    if n_outputs < 1:
        raise ValueError(f"deep supervision needs at least one output, got {n_outputs}")
    if n_outputs == 1:
        return (1.0,)
    raw = [1.0 / 2**i for i in range(n_outputs)]
    raw[-1] = 0.0
    total = sum(raw)
    return tuple(w / total for w in raw)


def ds_scales(strides: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
    """nnU-Net's ``_get_deep_supervision_scales``: ``1 / cumprod(strides)`` per stage, the bottleneck left out."""
    scales, factor = [], [1] * len(strides[0])
    for stride in strides:
        factor = [f * s for f, s in zip(factor, stride)]
        scales.append(tuple(1.0 / f for f in factor))
    return scales[:-1]


def downsample_label(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``label`` (B, *spatial) integer (or (B, C, *spatial) region channels) resized to ``size`` with nearest-exact
    interpolation, as nnU-Net's ``DownsampleSegForDSTransform``; the dtype is kept."""
    size = tuple(int(s) for s in size)
    channel_first = label.ndim == len(size) + 2
    if tuple(label.shape[-len(size):]) == size:
        return label
    x = label.float() if channel_first else label.unsqueeze(1).float()
    out = F.interpolate(x, size=size, mode="nearest-exact").to(label.dtype)
    return out if channel_first else out.squeeze(1)


class DeepSupervisionLoss(nn.Module):
    """``sum_i w_i * loss(logits_i, label resized to logits_i)`` over the outputs of a deep-supervision model.

    ``forward(outputs, label)``: ``outputs`` a list/tuple of logits (B, K, *spatial_i) from full resolution down
    (a single tensor is scored at full resolution only, as in eval mode); ``label`` int (B, *spatial). ``weights``
    default to :func:`ds_weights` of the number of outputs. Outputs with weight 0 are skipped, as in nnU-Net's
    ``DeepSupervisionWrapper``.
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = tuple(float(w) for w in weights) if weights is not None else None
        if self.weights is not None and not any(w != 0 for w in self.weights):
            raise ValueError("at least one deep-supervision weight must be non-zero")

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, label)
        weights = self.weights if self.weights is not None else ds_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} deep-supervision outputs but {len(weights)} weights")
        terms = [w * self.loss(out, downsample_label(label, out.shape[2:]))
                 for w, out in zip(weights, outputs) if w != 0.0]
        return torch.stack(terms).sum() if len(terms) > 1 else terms[0]

    def extra_repr(self) -> str:
        return f"weights={self.weights if self.weights is not None else 'nnU-Net 1/2^i, lowest 0, sum 1'}"
