"""Evaluation metrics on label maps: BraTS region Dice, HD95 and NSD, per-class Dice, precision/recall,
confusion matrix.

All functions are pure and take numpy arrays or torch tensors (moved to the CPU), 2D or 3D.
The classes and regions are those of a :class:`~utils.labels.LabelScheme` (the data set's, given as
``scheme``); by default :data:`~utils.labels.CLASSIC`: classes 0 background, 1 NCR/NET, 2 ED, 3 ET and
the BraTS regions WT = {1, 2, 3}, TC = {1, 3} and ET = {3} (see :data:`REGIONS`).

Empty-mask conventions (BraTS challenge): both masks empty -> Dice 1, HD95 0; exactly one
empty -> Dice 0, HD95 :data:`HD95_EMPTY` (373.13 mm, the diagonal of the 240x240x155 BraTS
volume at 1 mm).

HD95 is defined exactly like MONAI's ``compute_hausdorff_distance(y_pred, y, percentile=95,
spacing=spacing)`` with its default settings: the surface of a mask is ``mask XOR
binary_erosion(mask)`` (scipy's default cross-shaped structuring element, outside of the image
counted as background); the distances from each surface voxel of one mask to the nearest
surface voxel of the other are measured in physical units; the result is the larger of the two
directed 95th percentiles (linear interpolation, as ``torch.quantile``). It is computed faster
than MONAI by cropping both label maps once to the bounding box of the whole tumour (the union
of both WT masks, plus a 1-voxel margin) and each region again to its own union box, so the
full volume is touched only by two comparisons; the exact nearest-surface distances come from a
KD-tree (scipy.spatial) over the surface voxels, skipping voxels shared by both surfaces.

The normalised surface Dice (NSD, Nikolov et al. 2021) at a tolerance ``tau`` in mm is defined
exactly like MONAI's ``compute_surface_dice(y_pred, y, class_thresholds=[tau], spacing=spacing)``
(default ``use_subvoxels=False``): the share of the surface voxels of both masks lying within
``tau`` of the other mask's surface, ``(|{d_pred->gt <= tau}| + |{d_gt->pred <= tau}|) /
(|S_pred| + |S_gt|)``. It reuses the surfaces and distances that HD95 computes, so it costs
almost nothing more. Both masks empty -> 1 (MONAI: NaN; the BraTS convention of Dice is kept),
exactly one empty -> 0 (as MONAI).

Per-class Dice: of every class that is not a region by itself (CLASSIC: ``dice_ncr`` (class 1, NCR/NET)
and ``dice_ed`` (class 2, ED); the ET class is the ET region, whose Dice is ``dice_et``). Empty
conventions as the region Dice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import KDTree

from utils.labels import CLASSIC, NUM_CLASSES, REGIONS, LabelScheme

HD95_EMPTY = 373.13
NSD_TOLERANCE_MM = 1.0  # default tolerance of the normalised surface Dice
NSD_KEYS: tuple[str, ...] = tuple(f"nsd_{region}" for region in REGIONS)
# Dice of the classes that are not a region of their own (class 3, ET, is the ET region: dice_et).
CLASS_DICE: dict[str, int] = CLASSIC.class_dice
CLASS_DICE_KEYS: tuple[str, ...] = tuple(f"dice_{name}" for name in CLASS_DICE)
# Every per-case key of brats_region_metrics() for CLASSIC, in its order: the per-case CSV columns and,
# prefixed with ``test_``, the test columns of the results (another scheme: ``scheme.metric_keys``).
REGION_METRIC_KEYS: tuple[str, ...] = CLASSIC.metric_keys

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array (a CPU copy for tensors, no copy for arrays)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _check_pair(pred: np.ndarray, target: np.ndarray, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"{what} must be 2D (Y, X) or 3D (Z, Y, X), got {pred.ndim} dimensions {pred.shape}")


def _check_labels(label_map: np.ndarray, name: str, num_classes: int) -> None:
    """Raise ValueError unless ``label_map`` is an integer map with values in ``0..num_classes-1``."""
    if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == np.bool_):
        raise ValueError(
            f"{name} must be an integer label map (model classes 0..{num_classes - 1}), got dtype "
            f"{label_map.dtype}; take the argmax of the logits and cast to an integer type first"
        )
    if label_map.size and (label_map.min() < 0 or label_map.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside 0..{num_classes - 1} (min {label_map.min()}, max {label_map.max()}); "
            "expected model classes (BraTS label 4 must be mapped to class 3)"
        )


def _label_pair(pred: ArrayLike, target: ArrayLike, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate two label maps and return them as numpy arrays."""
    pred_np, target_np = _as_numpy(pred, "pred"), _as_numpy(target, "target")
    _check_pair(pred_np, target_np, "label maps")
    _check_labels(pred_np, "pred", num_classes)
    _check_labels(target_np, "target", num_classes)
    return pred_np, target_np


def _mask_pair(pred_mask: ArrayLike, target_mask: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return two validated binary masks as numpy bool arrays (non-zero = inside)."""
    pred_np, target_np = _as_numpy(pred_mask, "pred_mask"), _as_numpy(target_mask, "target_mask")
    _check_pair(pred_np, target_np, "masks")
    return pred_np.astype(bool, copy=False), target_np.astype(bool, copy=False)


def _spacing_for(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Normalise ``spacing`` to ``ndim`` positive values.

    ``None`` means 1 per axis. A 2D array accepts 2 values (Y, X) or 3 (Z, Y, X, of the volume
    the slice was taken from: the last two are used), like ``--patch_size`` in 2D.
    """
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if ndim == 2 and len(values) == 3:
        values = values[1:]
    if len(values) != ndim:
        raise ValueError(
            f"spacing must have one value per axis ({ndim} for a {ndim}D array"
            f"{'; 2 or 3 in 2D' if ndim == 2 else ''}), got {len(values)}: {tuple(spacing)}"
        )
    if not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be finite and positive, got {values}")
    return values


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero voxel of ``mask``, grown by ``margin``
    voxels per side and clipped to the array; None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask, the MONAI way (mask XOR its erosion)."""
    return mask ^ ndimage.binary_erosion(mask)


def _directed_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Physical distance from every voxel of ``from_surface`` to the nearest voxel of ``to_surface``.

    Exact nearest-neighbour search (a KD-tree over the physical coordinates of ``to_surface``),
    which on these sparse surfaces is several times faster than a dense distance transform of the
    crop. Voxels on both surfaces are at distance 0 and are not queried.
    """
    scale = np.asarray(spacing, dtype=np.float64)
    shared = from_surface & to_surface
    distances = np.zeros(int(np.count_nonzero(from_surface)))
    # distances are ordered like the voxels of from_surface in C order; mark the non-shared ones
    pending = ~shared[from_surface]
    if pending.any():
        tree = KDTree(np.argwhere(to_surface) * scale, leafsize=32)
        distances[pending] = tree.query(np.argwhere(from_surface & ~to_surface) * scale)[0]
    return distances


def dice_coefficient(pred_mask: ArrayLike, target_mask: ArrayLike) -> float:
    """Dice ``2|A∩B| / (|A| + |B|)`` of two binary masks (non-zero = inside).

    Both masks empty -> 1.0; exactly one empty -> 0.0 (BraTS convention).
    """
    pred_np, target_np = _mask_pair(pred_mask, target_mask)
    return _dice(pred_np, target_np)


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(target))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & target)) / total


def hd95(pred_mask: ArrayLike, target_mask: ArrayLike, spacing: Sequence[float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance of two binary masks, in physical units.

    Equals MONAI's ``compute_hausdorff_distance(..., percentile=95, spacing=spacing)`` on the
    same masks (see the module docstring for the definition), computed on the bounding box of
    the union of both masks plus a 1-voxel margin.

    Args:
        pred_mask: binary mask (non-zero = inside), 2D or 3D.
        target_mask: binary mask of the same shape.
        spacing: voxel size per axis (``len == ndim``; in 2D 3 values are accepted and the last
            two used); None means 1 per axis.

    Returns:
        The distance; 0.0 when both masks are empty, :data:`HD95_EMPTY` when exactly one is.
    """
    pred_np, target_np = _mask_pair(pred_mask, target_mask)
    return _hd95(pred_np, target_np, _spacing_for(spacing, pred_np.ndim))


def _surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray] | bool:
    """The two directed surface-distance arrays (pred -> target, target -> pred), computed on the
    union box of both masks plus a 1-voxel margin; ``True`` when both masks are empty, ``False``
    when exactly one is (no distances)."""
    box = bounding_box(pred | target, margin=1)
    if box is None:
        return True
    pred, target = pred[box], target[box]
    if not pred.any() or not target.any():
        return False
    pred_surface, target_surface = _surface(pred), _surface(target)
    return (
        _directed_distances(pred_surface, target_surface, spacing),
        _directed_distances(target_surface, pred_surface, spacing),
    )


def _hd95_of(distances: tuple[np.ndarray, np.ndarray] | bool) -> float:
    if distances is True:
        return 0.0
    if distances is False:
        return HD95_EMPTY
    return float(max(np.percentile(d, 95) for d in distances))


def _nsd_of(distances: tuple[np.ndarray, np.ndarray] | bool, tolerance: float) -> float:
    if isinstance(distances, bool):
        return 1.0 if distances else 0.0
    # A distance equal to the tolerance counts (d <= tau), also when rounding made it an ulp larger
    # (e.g. 3 x 0.9 mm = 2.7000000000000002 at tau = 2.7).
    limit = tolerance * (1.0 + 1e-9) + 1e-12
    within = sum(int(np.count_nonzero(d <= limit)) for d in distances)
    return within / sum(d.size for d in distances)


def _hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> float:
    return _hd95_of(_surface_distances(pred, target, spacing))


def _check_tolerance(tolerance: float) -> float:
    tolerance = float(tolerance)
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"nsd_tolerance must be a finite number >= 0 (mm), got {tolerance}")
    return tolerance


def normalized_surface_dice(
    pred_mask: ArrayLike, target_mask: ArrayLike, spacing: Sequence[float] | None = None,
    tolerance: float = NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice of two binary masks at ``tolerance`` (physical units, e.g. mm).

    Equals MONAI's ``compute_surface_dice(..., class_thresholds=[tolerance], spacing=spacing)``
    on the same masks (module docstring), except that two empty masks give 1.0 (MONAI: NaN);
    exactly one empty gives 0.0.
    """
    pred_np, target_np = _mask_pair(pred_mask, target_mask)
    distances = _surface_distances(pred_np, target_np, _spacing_for(spacing, pred_np.ndim))
    return _nsd_of(distances, _check_tolerance(tolerance))


def region_mask(label_map: np.ndarray, region: str, scheme: LabelScheme = CLASSIC) -> np.ndarray:
    """Binary mask of a region of ``scheme`` (CLASSIC: ``"wt"``, ``"tc"`` or ``"et"``) of a label map."""
    regions = scheme.region_classes
    if region not in regions:
        raise ValueError(f"unknown region {region!r}; expected one of {tuple(regions)}")
    return np.isin(label_map, regions[region])


def brats_region_metrics(
    pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] = (1.0, 1.0, 1.0),
    nsd_tolerance: float = NSD_TOLERANCE_MM, scheme: LabelScheme = CLASSIC,
) -> dict[str, float]:
    """Dice, HD95 and NSD of every region of ``scheme`` (CLASSIC: WT, TC, ET), and per-class Dice, for one case.

    Args:
        pred: predicted label map, integer model classes 0..3, shape (Z, Y, X) or (Y, X);
            numpy array or torch tensor.
        target: ground-truth label map, same shape and classes.
        spacing: voxel size per axis in mm (Z, Y, X). For 2D input 2 values (Y, X), or 3 of
            which the last two are used.
        nsd_tolerance: tolerance of the normalised surface Dice, in the units of ``spacing`` (mm).
        scheme: the data set's classes and regions (model classes 0..scheme.num_classes - 1).

    Returns:
        The keys of ``scheme.metric_keys`` as Python floats (CLASSIC: :data:`REGION_METRIC_KEYS`,
        ``dice_{wt,tc,et}``, ``hd95_{wt,tc,et}``, ``nsd_{wt,tc,et}``, ``dice_ncr``, ``dice_ed``), with the
        BraTS empty-mask conventions (module docstring). The mean of the three region Dice values is
        not included: use :func:`mean_region_dice` or :func:`mean_metrics`.

    Raises:
        ValueError: different shapes, not 2D/3D, non-integer dtype, labels outside 0..3, bad
            spacing, negative or non-finite tolerance.
    """
    pred_np, target_np = _label_pair(pred, target, scheme.num_classes)
    voxel_spacing = _spacing_for(spacing, pred_np.ndim)
    tolerance = _check_tolerance(nsd_tolerance)
    # Every region lies inside the whole tumour: crop both maps once to the WT union, so the
    # per-region masks below are built on a small array instead of the full volume.
    box = bounding_box((pred_np > 0) | (target_np > 0), margin=1)
    if box is not None:
        pred_np, target_np = pred_np[box], target_np[box]
    metrics: dict[str, float] = {}
    for region in scheme.region_classes:
        pred_region, target_region = region_mask(pred_np, region, scheme), region_mask(target_np, region, scheme)
        metrics[f"dice_{region}"] = _dice(pred_region, target_region)
        distances = _surface_distances(pred_region, target_region, voxel_spacing)
        metrics[f"hd95_{region}"] = _hd95_of(distances)
        metrics[f"nsd_{region}"] = _nsd_of(distances, tolerance)
    for name, label in scheme.class_dice.items():
        metrics[f"dice_{name}"] = _dice(pred_np == label, target_np == label)
    return {key: metrics[key] for key in scheme.metric_keys}


def mean_region_dice(values: Any, prefix: str = "dice_", scheme: LabelScheme = CLASSIC) -> Any:
    """The mean Dice over the selection regions of ``scheme`` (``{prefix}wt``, ``{prefix}tc``, ``{prefix}et``
    for every scheme the suite ships): the suite's one definition of "mean Dice" (test, validation and model
    selection use it).

    ``values``: a mapping (one case or one unit) -> float; a table with those columns (a pandas DataFrame)
    -> its row-wise means (a Series)."""
    columns = [f"{prefix}{r}" for r in scheme.selection]
    if hasattr(values, "columns"):  # a DataFrame: one mean per row
        missing = [c for c in columns if c not in values.columns]
        if missing:
            raise ValueError(f"the table lacks {missing}; it has {list(values.columns)}")
        return values[columns].mean(axis=1)
    missing = [c for c in columns if c not in values]
    if missing:
        raise ValueError(f"metrics lack {missing}; expected the keys of brats_region_metrics()")
    return sum(float(values[c]) for c in columns) / len(columns)


def mean_metrics(per_case: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of every key over per-case metric dicts (the suite's per-case-mean convention).

    All dicts must have the same keys. When the three region Dice keys are present,
    ``dice_mean`` (the mean of the per-case ``dice_mean``, equal to the mean of the three
    averaged region Dice values) is added.
    """
    if len(per_case) == 0:
        raise ValueError("mean_metrics needs at least one per-case metric dict, got none")
    keys = list(per_case[0])
    for i, row in enumerate(per_case):
        if set(row) != set(keys):
            raise ValueError(f"per-case dict {i} has keys {sorted(row)}, expected {sorted(keys)}")
    means = {key: float(np.mean([row[key] for row in per_case])) for key in keys}
    if all(f"dice_{r}" in means for r in REGIONS) and "dice_mean" not in means:
        means["dice_mean"] = mean_region_dice(means)
    return means


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Voxel confusion matrix, int64 of shape (num_classes, num_classes): rows = target class,
    columns = predicted class."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    pred_np, target_np = _as_numpy(pred, "pred"), _as_numpy(target, "target")
    if pred_np.shape != target_np.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred_np.shape} and {target_np.shape}")
    _check_labels(pred_np, "pred", num_classes)
    _check_labels(target_np, "target", num_classes)
    flat = target_np.reshape(-1).astype(np.int64) * num_classes + pred_np.reshape(-1)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray, other_total: np.ndarray) -> np.ndarray:
    """numerator / denominator; where the denominator is 0: 1.0 if ``other_total`` is 0 too
    (the class is absent from both maps), else 0.0."""
    ratio = np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)
    ratio[(denominator == 0) & (other_total == 0)] = 1.0
    return ratio


def precision_recall(pred: ArrayLike, target: ArrayLike, num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """Per-class voxel precision and recall.

    precision_k = TP / (TP + FP), recall_k = TP / (TP + FN). Where a ratio is undefined (0/0):
    the class is absent from both maps -> 1.0 (nothing to find, nothing wrongly found); the
    class is predicted but absent from the target (recall) or present in the target but never
    predicted (precision) -> 0.0, like the Dice convention for one empty mask.

    Returns:
        ``precision_c{k}`` and ``recall_c{k}`` for k in 0..num_classes-1, plus
        ``precision_mean`` and ``recall_mean`` = mean over classes 1.. (background excluded).
    """
    return precision_recall_from_confusion(confusion_matrix(pred, target, num_classes))


def precision_recall_from_confusion(matrix: np.ndarray) -> dict[str, float]:
    """Per-class precision/recall of a confusion matrix (rows = target), conventions of :func:`precision_recall`.

    Summing the per-case matrices of a test set and calling this gives the voxel-pooled figures.
    """
    matrix = np.asarray(matrix)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = _safe_ratio(true_positive, predicted, actual)
    recall = _safe_ratio(true_positive, actual, predicted)
    out: dict[str, float] = {}
    for k in range(matrix.shape[0]):
        out[f"precision_c{k}"] = float(precision[k])
        out[f"recall_c{k}"] = float(recall[k])
    out["precision_mean"] = float(precision[1:].mean())
    out["recall_mean"] = float(recall[1:].mean())
    return out
