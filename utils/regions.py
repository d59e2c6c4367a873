"""Label maps <-> the region maps of region-based training (``--region_based``): nnU-Net's region mode.

Pure torch functions, no I/O, used by training (the targets), inference (painting a label map back) and
post-processing:

- :func:`region_order_table`: which class lies in which region of ``LabelScheme.region_order``;
- :func:`region_targets`: integer label maps -> the 0/1 region maps the model learns;
- :func:`paint_regions`: region probabilities (or logits) -> the label map, painting each region's class in order
  (nnU-Net's ``regions_class_order``).
"""

from __future__ import annotations

import functools

import torch

from utils.labels import CLASSIC, LabelScheme


@functools.lru_cache(maxsize=32)
def region_order_table(scheme: LabelScheme = CLASSIC) -> torch.Tensor:
    """``[r, c]``: class ``c`` lies in the ``r``-th region of ``scheme.region_order`` (bool, (R, K); CPU, cached:
    do not modify it)."""
    regions = scheme.region_classes
    return torch.tensor([[c in regions[key] for c in range(scheme.num_classes)] for key, _ in scheme.region_order],
                        dtype=torch.bool)


def region_targets(label: torch.Tensor, scheme: LabelScheme = CLASSIC, table: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Integer label maps ``(B, *spatial)`` -> float region maps ``(B, R, *spatial)`` (1 inside a region);
    ``table``: :func:`region_order_table` already on the labels' device."""
    table = region_order_table(scheme).to(label.device) if table is None else table
    return table[:, label.long()].movedim(0, 1).float()


def paint_regions(regions: torch.Tensor, scheme: LabelScheme = CLASSIC, threshold: float = 0.5) -> torch.Tensor:
    """Region scores ``(R, *spatial)`` (probabilities; give logits with ``threshold=0``) -> uint8 label map: 0, then for
    each region in ``scheme.region_order`` its class where its score exceeds ``threshold`` (later regions win)."""
    if regions.shape[0] != scheme.region_channels:
        raise ValueError(f"expected {scheme.region_channels} region channels ({scheme.region_order}), "
                         f"got {regions.shape[0]}")
    labels = torch.zeros(regions.shape[1:], dtype=torch.uint8, device=regions.device)
    for channel, (_, cls) in enumerate(scheme.region_order):
        labels[regions[channel] > threshold] = cls
    return labels
