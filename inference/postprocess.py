"""Post-processing chosen on validation (``--postprocess``), as the BraTS winners do it:

- an enhancing tumour smaller than a threshold is not believed: its voxels become the class they would have
  without it (the scheme's ``parent_class("et")``: NCR/NET for BraTS, NETC for PED). nnU-Net searched the
  threshold in 0..750 voxels in steps of 10 on cross-validation; the BraTS 2021 winner used 200;
- small connected components of a region are removed (their voxels take the region's parent class): the BraTS
  2023 winner removed WT components under 250 voxels, TC under 150, ET under 100 (``scheme.min_component``).

:func:`choose_rule` picks, on a unit's validation cases, the combination of component removals and the ET
threshold with the largest mean validation Dice (the mean of WT, TC and ET, the suite's model selection); ties
go to fewer removals, then to the smaller threshold. It needs only a few numbers per case (:func:`case_table`:
per removal combination, the Dice with and without the ET switch and the ET volume), so the validation
predictions are never held in memory together, and under torchrun each rank scores its share of the cases.

:class:`PostprocessRule` is plain values (checkpoints, config.json, results rows) and applies itself to a label
map; the :class:`~inference.predictor.Predictor` calls it through its post-processing hook at test,
``--export_predictions`` and ``predict.py``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from metrics.segmentation import dice_coefficient, region_mask
from utils.labels import CLASSIC, LabelScheme

ET_THRESHOLDS: tuple[int, ...] = tuple(range(0, 751, 10))  # nnU-Net's search grid (voxels)


@dataclass(frozen=True)
class PostprocessRule:
    """``min_component``: (region, size) pairs whose components under ``size`` voxels are removed, in order;
    then ``et_threshold``: an ET of fewer voxels becomes its parent class. The empty rule changes nothing."""

    et_threshold: int = 0
    min_component: tuple[tuple[str, int], ...] = ()

    def apply(self, labels: np.ndarray, scheme: LabelScheme = CLASSIC) -> np.ndarray:
        """The label map with the rule applied (a new array; ``labels`` itself is not changed)."""
        out = np.array(labels, dtype=np.uint8, copy=True)
        regions = scheme.region_classes
        for region, size in self.min_component:
            out = remove_small_components(out, regions[region], size, scheme.parent_class(region))
        if self.et_threshold > 0:
            et = np.isin(out, regions["et"])
            if 0 < int(et.sum()) < self.et_threshold:
                out[et] = scheme.parent_class("et")
        return out

    @property
    def empty(self) -> bool:
        return self.et_threshold == 0 and not self.min_component

    def describe(self) -> str:
        parts = [f"ET < {self.et_threshold} voxels -> parent class"] if self.et_threshold else []
        parts += [f"{r.upper()} components < {n} voxels removed" for r, n in self.min_component]
        return "; ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        return {"et_threshold": int(self.et_threshold), "min_component": [[r, int(n)] for r, n in self.min_component]}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PostprocessRule:
        if not d:
            return cls()
        return cls(int(d.get("et_threshold", 0)), tuple((str(r), int(n)) for r, n in d.get("min_component", ())))

    def json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def remove_small_components(labels: np.ndarray, classes: Sequence[int], size: int, fill: int) -> np.ndarray:
    """Voxels of the region (``classes``) in connected components (26-connected in 3D) smaller than ``size``
    become ``fill``; returns the same array, changed in place."""
    mask = np.isin(labels, classes)
    if not mask.any():
        return labels
    components, n = ndimage.label(mask, structure=np.ones((3,) * labels.ndim, dtype=bool))
    sizes = np.bincount(components.ravel())
    small = np.flatnonzero(sizes < size)
    small = small[small > 0]
    if small.size:
        labels[np.isin(components, small)] = fill
    return labels


def _selection_dice(pred: np.ndarray, truth: np.ndarray, scheme: LabelScheme) -> float:
    """Mean Dice of the selection regions (WT, TC, ET), BraTS empty conventions (both empty -> 1)."""
    return float(np.mean([dice_coefficient(region_mask(pred, r, scheme), region_mask(truth, r, scheme))
                          for r in scheme.selection]))


def component_options(scheme: LabelScheme = CLASSIC) -> list[tuple[tuple[str, int], ...]]:
    """Every subset of the scheme's component removals, fewer removals first."""
    items = list(scheme.min_component)
    return [combo for n in range(len(items) + 1) for combo in itertools.combinations(items, n)]


def case_table(pred: np.ndarray, truth: np.ndarray, scheme: LabelScheme = CLASSIC) -> list[tuple[float, float, int]]:
    """Per component option (:func:`component_options`): (Dice as predicted after the removals, Dice with the ET
    switched to its parent class, ET voxels after the removals) of one validation case."""
    out = []
    for combo in component_options(scheme):
        cleaned = PostprocessRule(0, combo).apply(pred, scheme)
        et = np.isin(cleaned, scheme.region_classes["et"])
        switched = cleaned.copy()
        switched[et] = scheme.parent_class("et")
        out.append((_selection_dice(cleaned, truth, scheme), _selection_dice(switched, truth, scheme), int(et.sum())))
    return out


def choose_rule(tables: Sequence[list[tuple[float, float, int]]], scheme: LabelScheme = CLASSIC,
                thresholds: Sequence[int] = ET_THRESHOLDS) -> tuple[PostprocessRule, float, float]:
    """The rule with the largest mean validation Dice over the cases' :func:`case_table` rows; ties to fewer
    removals, then to the smaller threshold. Returns (rule, its mean Dice, the mean Dice without any rule)."""
    if not tables:
        return PostprocessRule(), float("nan"), float("nan")
    data = np.asarray(tables, dtype=np.float64)  # (cases, options, 3)
    options = component_options(scheme)
    best: tuple[float, int, int] | None = None
    for o in range(len(options)):
        kept, switched, et_voxels = data[:, o, 0], data[:, o, 1], data[:, o, 2]
        for t in thresholds:
            use_switch = (et_voxels > 0) & (et_voxels < t)
            score = float(np.where(use_switch, switched, kept).mean())
            if best is None or score > best[0] + 1e-12:
                best = (score, o, int(t))
    score, o, t = best
    return PostprocessRule(t, options[o]), score, float(data[:, 0, 0].mean())


def checkpoint_rule(checkpoints: Sequence[dict[str, Any]]) -> PostprocessRule | None:
    """The rule the checkpoints were saved with (``postprocess``), if they all have the same one; None when none has
    one or they differ (an ensemble of units whose rules were chosen separately gets none)."""
    rules = {PostprocessRule.from_dict(c.get("postprocess")) for c in checkpoints}
    if len(rules) != 1:
        return None
    rule = rules.pop()
    return None if rule.empty else rule


def rule_hook(rule: PostprocessRule | None, scheme: LabelScheme) -> Any:
    """The predictor's post-processing hook for ``rule`` (None: no hook)."""
    if rule is None or rule.empty:
        return None
    return lambda labels: rule.apply(labels, scheme)
