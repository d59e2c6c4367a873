"""Known-answer tests of metrics/, and agreement with MONAI's Dice, HD95 and surface Dice (NSD)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from metrics import (
    CLASS_DICE_KEYS,
    HD95_EMPTY,
    NSD_KEYS,
    REGION_METRIC_KEYS,
    bounding_box,
    brats_region_metrics,
    confusion_matrix,
    dice_coefficient,
    dice_from_counts,
    hd95,
    mean_metrics,
    mean_region_dice,
    normalized_surface_dice,
    precision_recall,
    region_dice_counts,
    region_mask,
)


def sphere(shape: tuple[int, ...], center: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return dist2 <= radius**2


def random_blob(shape: tuple[int, ...], seed: int, level: float = 0.6) -> np.ndarray:
    """A smooth random mask, guaranteed non-empty."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    mask = field > level * field.std()
    assert mask.any()
    return mask


def monai_hd95(pred: np.ndarray, target: np.ndarray, spacing=None) -> float:
    """MONAI's HD95 of two binary masks (one-hot with a background channel, background excluded)."""

    def one_hot(mask: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(mask.astype(np.float32))
        return torch.stack([1 - m, m])[None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(one_hot(pred), one_hot(target), percentile=95, spacing=spacing)
    return float(value[0, 0])


def monai_nsd(pred: np.ndarray, target: np.ndarray, spacing, tolerance: float) -> float:
    """MONAI's normalised surface Dice of two binary masks at ``tolerance`` (background excluded)."""

    def one_hot(mask: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(mask.astype(np.float32))
        return torch.stack([1 - m, m])[None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_surface_dice(one_hot(pred), one_hot(target), class_thresholds=[tolerance], spacing=spacing)
    return float(value[0, 0])


def monai_dice(pred: np.ndarray, target: np.ndarray) -> float:
    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    t = torch.from_numpy(target.astype(np.float32))[None, None]
    return float(compute_dice(p, t)[0, 0])


# ---------------------------------------------------------------------------------- binary masks


def test_identical_masks_dice_one_hd_zero():
    mask = sphere((20, 20, 20), (10, 10, 10), 5)
    assert dice_coefficient(mask, mask) == 1.0
    assert hd95(mask, mask, (1.0, 1.0, 1.0)) == 0.0


def test_disjoint_cubes_known_distance():
    # Two 4^3 cubes, x in 2..5 and 10..13. Surface of A (56 voxels) to the x=10 face of B:
    # 16 voxels at 8, 12 at 7, 12 at 6, 16 at 5 -> the 95th percentile is 8 (both directions).
    a = np.zeros((12, 12, 20), dtype=bool)
    b = np.zeros_like(a)
    a[4:8, 4:8, 2:6] = True
    b[4:8, 4:8, 10:14] = True
    assert dice_coefficient(a, b) == 0.0
    assert hd95(a, b) == pytest.approx(8.0)
    assert monai_hd95(a, b) == pytest.approx(8.0)


def test_dice_known_fraction():
    a = np.zeros((10, 10), dtype=bool)
    b = np.zeros_like(a)
    a[:, :4] = True  # 40 voxels
    b[:, 2:8] = True  # 60 voxels, 20 shared
    assert dice_coefficient(a, b) == pytest.approx(2 * 20 / 100)


@pytest.mark.parametrize("shift", [1, 2, 4])
@pytest.mark.parametrize("axis", [0, 2])
def test_shifted_spheres_match_monai(shift, axis):
    shape = (32, 32, 32)
    center = [16.0, 16.0, 16.0]
    target = sphere(shape, center, 8)
    center[axis] += shift
    pred = sphere(shape, center, 8)
    ours = hd95(pred, target)
    assert ours == pytest.approx(monai_hd95(pred, target), rel=1e-4)
    assert abs(ours - shift) <= 1.0  # a shift of k voxels moves the surface by about k
    assert dice_coefficient(pred, target) == pytest.approx(monai_dice(pred, target), rel=1e-6)


def test_anisotropic_spacing_single_voxels():
    a = np.zeros((10, 10, 10), dtype=bool)
    b = np.zeros_like(a)
    a[2, 5, 5] = True
    b[5, 5, 5] = True  # 3 voxels apart along z
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, b, (1.0, 3.0, 3.0)) == pytest.approx(3.0)  # in-plane spacing is irrelevant here


def test_shift_along_z_doubles_with_spacing_two():
    # Slabs spanning the whole Y-X plane differ only along z: every distance is along z.
    a = np.zeros((20, 8, 8), dtype=bool)
    b = np.zeros_like(a)
    a[4:8] = True
    b[7:11] = True
    iso, aniso = hd95(a, b, (1.0, 1.0, 1.0)), hd95(a, b, (2.0, 1.0, 1.0))
    assert iso > 0
    assert aniso == pytest.approx(2 * iso)
    assert aniso == pytest.approx(monai_hd95(a, b, spacing=(2.0, 1.0, 1.0)), rel=1e-4)


@pytest.mark.parametrize(
    "shape, spacing",
    [((24, 28, 20), (1.0, 1.0, 1.0)), ((20, 24, 24), (2.5, 0.8, 1.2)), ((40, 36), (1.0, 1.0)), ((40, 36), (0.7, 1.9))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_blobs_match_monai(shape, spacing, seed):
    pred = random_blob(shape, seed)
    target = random_blob(shape, seed + 100)
    assert hd95(pred, target, spacing) == pytest.approx(monai_hd95(pred, target, spacing=spacing), rel=1e-4)
    assert dice_coefficient(pred, target) == pytest.approx(monai_dice(pred, target), rel=1e-6)


def test_masks_touching_the_border_match_monai():
    pred = np.zeros((16, 16, 16), dtype=bool)
    target = np.zeros_like(pred)
    pred[:6, :, 3:9] = True
    target[2:9, 4:, :5] = True
    assert hd95(pred, target) == pytest.approx(monai_hd95(pred, target), rel=1e-4)


def test_empty_mask_conventions():
    empty = np.zeros((8, 8, 8), dtype=bool)
    full = empty.copy()
    full[2:5, 2:5, 2:5] = True
    assert dice_coefficient(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert dice_coefficient(full, empty) == 0.0 and hd95(full, empty) == HD95_EMPTY
    assert dice_coefficient(empty, full) == 0.0 and hd95(empty, full) == HD95_EMPTY


# ---------------------------------------------------------------------------------- NSD


def test_nsd_identical_and_empty_masks():
    mask = sphere((20, 20, 20), (10, 10, 10), 5)
    empty = np.zeros_like(mask)
    assert normalized_surface_dice(mask, mask) == 1.0
    assert normalized_surface_dice(mask, mask, (3.0, 1.0, 1.0), tolerance=0.0) == 1.0
    assert normalized_surface_dice(empty, empty) == 1.0  # MONAI: NaN; the BraTS Dice convention is kept
    assert normalized_surface_dice(mask, empty) == 0.0 and normalized_surface_dice(empty, mask) == 0.0
    with pytest.raises(ValueError, match="nsd_tolerance"):
        normalized_surface_dice(mask, mask, tolerance=-1.0)


def test_nsd_parallel_planes_known_answer():
    # One-voxel planes 3 voxels apart along z: every surface voxel is exactly 3 voxels from the other.
    a = np.zeros((10, 8, 8), dtype=bool)
    b = np.zeros_like(a)
    a[2] = True
    b[5] = True
    assert normalized_surface_dice(a, b, tolerance=2.9) == 0.0
    assert normalized_surface_dice(a, b, tolerance=3.0) == 1.0  # d <= tolerance counts
    assert normalized_surface_dice(a, b, (0.5, 1.0, 1.0), tolerance=1.5) == 1.0  # 3 x 0.5 mm
    assert normalized_surface_dice(a, b, (0.5, 1.0, 1.0), tolerance=1.4) == 0.0
    assert normalized_surface_dice(a, b, (0.9, 1.0, 1.0), tolerance=2.7) == 1.0  # 3 x 0.9 = 2.7000000000000002


def test_nsd_cube_grown_by_one_layer_known_answer():
    # Cube A (n^3) and B = A grown by one layer along z. |S_A| = n^3 - (n-2)^3 = 488, |S_B| = 524 (n = 10).
    # Shared surface voxels: S_A minus A's (n-2)^2 top-face voxels that are inside B = 424, counted on
    # both surfaces; every other surface voxel is one voxel (spacing[0] mm) from the other surface along
    # z (and, for A's top face, a whole in-plane voxel from B's sides: kept above the tolerance below).
    n = 10
    a = np.zeros((n + 4, n + 2, n + 2), dtype=bool)
    b = np.zeros_like(a)
    a[1:1 + n, 1:1 + n, 1:1 + n] = True
    b[1:2 + n, 1:1 + n, 1:1 + n] = True
    shared = 2 * (n**3 - (n - 2) ** 3 - (n - 2) ** 2)
    total = (n**3 - (n - 2) ** 3) + (n**2 * (n + 1) - (n - 2) ** 2 * (n - 1))
    assert normalized_surface_dice(a, b, tolerance=0.5) == pytest.approx(shared / total)
    assert normalized_surface_dice(a, b, tolerance=1.0) == 1.0
    assert normalized_surface_dice(a, b, (2.0, 3.0, 3.0), tolerance=1.0) == pytest.approx(shared / total)
    assert normalized_surface_dice(a, b, (2.0, 3.0, 3.0), tolerance=2.0) == 1.0
    assert monai_nsd(a, b, (2.0, 3.0, 3.0), 1.0) == pytest.approx(shared / total, rel=1e-6)


@pytest.mark.parametrize(
    "shape, spacing",
    [((20, 24, 22), (1.0, 1.0, 1.0)), ((20, 24, 22), (2.0, 0.9, 0.9)), ((18, 22, 26), (2.5, 0.8, 1.2)),
     ((40, 36), (0.7, 1.9))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsd_random_shapes_match_monai(shape, spacing, seed):
    pred, target = random_blob(shape, seed), random_blob(shape, seed + 100)
    for tolerance in (0.0, 1.0, 1.8, 2.7, 4.0):
        ours = normalized_surface_dice(pred, target, spacing, tolerance)
        assert ours == pytest.approx(monai_nsd(pred, target, spacing, tolerance), rel=1e-6, abs=1e-7), tolerance


def test_bounding_box():
    mask = np.zeros((10, 10), dtype=bool)
    mask[3:5, 7] = True
    assert bounding_box(mask) == (slice(3, 5), slice(7, 8))
    assert bounding_box(mask, margin=1) == (slice(2, 6), slice(6, 9))
    assert bounding_box(mask, margin=5) == (slice(0, 10), slice(2, 10))
    assert bounding_box(np.zeros((3, 3), dtype=bool)) is None


# ---------------------------------------------------------------------------------- label maps


def test_region_metrics_keys_and_types():
    target = np.zeros((12, 12, 12), dtype=np.uint8)
    target[3:9, 3:9, 3:9] = 2
    target[4:8, 4:8, 4:8] = 1
    target[5:7, 5:7, 5:7] = 3
    metrics = brats_region_metrics(target, target)
    assert tuple(metrics) == REGION_METRIC_KEYS
    assert REGION_METRIC_KEYS[:6] == ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et")
    assert set(NSD_KEYS) == {"nsd_wt", "nsd_tc", "nsd_et"} and set(CLASS_DICE_KEYS) == {"dice_ncr", "dice_ed"}
    assert all(type(v) is float for v in metrics.values())
    assert metrics == {"dice_wt": 1.0, "dice_tc": 1.0, "dice_et": 1.0, "hd95_wt": 0.0, "hd95_tc": 0.0, "hd95_et": 0.0,
                       "nsd_wt": 1.0, "nsd_tc": 1.0, "nsd_et": 1.0, "dice_ncr": 1.0, "dice_ed": 1.0}


@pytest.mark.parametrize("region, present_class", [("wt", 2), ("tc", 1), ("et", 3)])
def test_empty_combinations_per_region(region, present_class):
    """All four empty/non-empty combinations of one region, other regions built accordingly."""
    shape = (10, 10, 10)
    none = np.zeros(shape, dtype=np.int64)
    some = none.copy()
    some[3:6, 3:6, 3:6] = present_class
    for pred, target, dice, dist in [
        (none, none, 1.0, 0.0),
        (some, some, 1.0, 0.0),
        (some, none, 0.0, HD95_EMPTY),
        (none, some, 0.0, HD95_EMPTY),
    ]:
        metrics = brats_region_metrics(pred, target)
        assert metrics[f"dice_{region}"] == dice
        assert metrics[f"hd95_{region}"] == dist
        assert metrics[f"nsd_{region}"] == dice  # NSD: both empty 1, one empty 0, identical 1


def test_region_composition():
    """Class 2 counts for WT only, class 1 for WT and TC, class 3 for all three regions."""
    target = np.zeros((9, 9, 9), dtype=np.int64)
    target[4, 4, 4] = 3
    for pred_class, expected_dice in [(2, (1.0, 0.0, 0.0)), (1, (1.0, 1.0, 0.0)), (3, (1.0, 1.0, 1.0))]:
        pred = np.zeros_like(target)
        pred[4, 4, 4] = pred_class
        metrics = brats_region_metrics(pred, target)
        assert (metrics["dice_wt"], metrics["dice_tc"], metrics["dice_et"]) == expected_dice
        assert metrics["hd95_wt"] == 0.0
        assert metrics["hd95_et"] == (0.0 if pred_class == 3 else HD95_EMPTY)


def random_label_map(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Nested random blobs: ED (2) around NCR (1) and ET (3), like a BraTS tumour."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[random_blob(shape, seed, level=0.3)] = 2
    labels[random_blob(shape, seed + 1, level=0.8) & (labels > 0)] = 1
    labels[random_blob(shape, seed + 2, level=0.9) & (labels > 0)] = 3
    return labels


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.9, 0.9)])
def test_region_metrics_match_monai(spacing):
    pred, target = random_label_map((20, 24, 22), 0), random_label_map((20, 24, 22), 10)
    ours = brats_region_metrics(pred, target, spacing)
    for region, classes in [("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))]:
        p, t = np.isin(pred, classes), np.isin(target, classes)
        assert p.any() and t.any()
        assert ours[f"dice_{region}"] == pytest.approx(monai_dice(p, t), rel=1e-6)
        assert ours[f"hd95_{region}"] == pytest.approx(monai_hd95(p, t, spacing=spacing), rel=1e-4)


@pytest.mark.parametrize("spacing, tolerance", [((1.0, 1.0, 1.0), 1.0), ((2.0, 0.9, 0.9), 1.0),
                                                ((2.0, 0.9, 0.9), 2.7)])
def test_region_nsd_and_class_dice_match_monai(spacing, tolerance):
    pred, target = random_label_map((20, 24, 22), 0), random_label_map((20, 24, 22), 10)
    ours = brats_region_metrics(pred, target, spacing, nsd_tolerance=tolerance)
    for region, classes in [("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))]:
        p, t = np.isin(pred, classes), np.isin(target, classes)
        assert ours[f"nsd_{region}"] == pytest.approx(monai_nsd(p, t, spacing, tolerance), rel=1e-6)
        assert ours[f"nsd_{region}"] == normalized_surface_dice(p, t, spacing, tolerance)
    for key, label in [("dice_ncr", 1), ("dice_ed", 2)]:
        assert (pred == label).any() and (target == label).any()
        assert ours[key] == pytest.approx(monai_dice(pred == label, target == label), rel=1e-6)
    assert ours["dice_et"] == pytest.approx(monai_dice(pred == 3, target == 3), rel=1e-6)  # the ET class


def test_per_class_dice_known_answers():
    target = np.zeros((8, 8, 8), dtype=np.uint8)
    target[2:4, 2:6, 2:6] = 1  # 32 NCR voxels
    target[4:6, 2:6, 2:6] = 2  # 32 ED voxels
    pred = target.copy()
    pred[2:3, 2:6, 2:6] = 2  # half of the NCR predicted as ED
    metrics = brats_region_metrics(pred, target)
    assert metrics["dice_ncr"] == pytest.approx(2 * 16 / (16 + 32))
    assert metrics["dice_ed"] == pytest.approx(2 * 32 / (48 + 32))
    assert metrics["dice_wt"] == 1.0 and metrics["dice_et"] == 1.0  # no ET anywhere: both empty
    no_ncr = brats_region_metrics(np.where(target == 1, 2, target).astype(np.uint8), target)
    assert no_ncr["dice_ncr"] == 0.0 and no_ncr["nsd_tc"] == 0.0  # one empty


def test_2d_input_matches_monai_and_uses_last_two_spacings():
    pred, target = random_label_map((40, 40), 3), random_label_map((40, 40), 4)
    ours = brats_region_metrics(pred, target, (0.8, 1.5))
    # 3 values for a 2D slice are (Z, Y, X) of its volume: the last two are used
    assert brats_region_metrics(pred, target, (5.0, 0.8, 1.5)) == ours
    for region, classes in [("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))]:
        p, t = np.isin(pred, classes), np.isin(target, classes)
        assert ours[f"hd95_{region}"] == pytest.approx(monai_hd95(p, t, spacing=(0.8, 1.5)), rel=1e-4)
        assert ours[f"dice_{region}"] == pytest.approx(monai_dice(p, t), rel=1e-6)


def test_torch_input_equals_numpy_input():
    pred, target = random_label_map((10, 12, 14), 7), random_label_map((10, 12, 14), 8)
    expected = brats_region_metrics(pred, target, (2.0, 1.0, 1.0))
    assert brats_region_metrics(torch.from_numpy(pred).long(), torch.from_numpy(target), (2.0, 1.0, 1.0)) == expected


def test_cropping_does_not_change_results():
    pred, target = random_label_map((16, 16, 16), 5), random_label_map((16, 16, 16), 6)
    padded = [np.pad(x, ((10, 3), (0, 20), (7, 7))) for x in (pred, target)]
    assert brats_region_metrics(*padded) == pytest.approx(brats_region_metrics(pred, target))


@pytest.mark.parametrize(
    "pred, target, spacing, message",
    [
        (np.zeros((4, 4, 4), int), np.zeros((4, 4, 5), int), (1, 1, 1), "same shape"),
        (np.full((4, 4, 4), 4), np.zeros((4, 4, 4), int), (1, 1, 1), "outside 0..3"),
        (np.zeros((4, 4, 4), int), np.full((4, 4, 4), -1), (1, 1, 1), "outside 0..3"),
        (np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 4), int), (1, 1, 1), "integer label map"),
        (np.zeros((4, 4, 4), int), np.zeros((4, 4, 4), int), (1, 1), "one value per axis"),
        (np.zeros((4, 4, 4), int), np.zeros((4, 4, 4), int), (1, 0, 1), "positive"),
        (np.zeros((2, 4, 4, 4), int), np.zeros((2, 4, 4, 4), int), (1, 1, 1), "2D .* or 3D"),
        ([[0]], [[0]], (1, 1), "numpy array or a torch tensor"),
    ],
)
def test_bad_arguments_raise(pred, target, spacing, message):
    with pytest.raises(ValueError, match=message):
        brats_region_metrics(pred, target, spacing)


# ---------------------------------------------------------------------------------- aggregation


def test_mean_region_dice_and_mean_metrics():
    case_a = {"dice_wt": 0.9, "dice_tc": 0.6, "dice_et": 0.3, "hd95_wt": 2.0, "hd95_tc": 4.0, "hd95_et": 6.0}
    case_b = {"dice_wt": 0.7, "dice_tc": 0.4, "dice_et": 0.1, "hd95_wt": 4.0, "hd95_tc": 6.0, "hd95_et": 8.0}
    assert mean_region_dice(case_a) == pytest.approx(0.6)
    table = pd.DataFrame([case_a, case_b])
    np.testing.assert_allclose(mean_region_dice(table), [0.6, 0.4])  # one mean per row
    val = {"val_dice_wt": 1.0, "val_dice_tc": 0.5, "val_dice_et": 0.0}
    assert mean_region_dice(val, prefix="val_dice_") == 0.5
    means = mean_metrics([case_a, case_b])
    assert means == pytest.approx(
        {"dice_wt": 0.8, "dice_tc": 0.5, "dice_et": 0.2, "dice_mean": 0.5, "hd95_wt": 3.0, "hd95_tc": 5.0,
         "hd95_et": 7.0}
    )
    with pytest.raises(ValueError, match="at least one"):
        mean_metrics([])
    with pytest.raises(ValueError, match="keys"):
        mean_metrics([case_a, {"dice_wt": 1.0}])
    with pytest.raises(ValueError, match="dice_tc"):
        mean_region_dice({"dice_wt": 1.0})
    with pytest.raises(ValueError, match="dice_et"):
        mean_region_dice(table.drop(columns="dice_et"))


# ---------------------------------------------------------------------------------- confusion / precision / recall


def test_confusion_matrix_known_answer():
    target = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    pred = np.array([0, 1, 1, 1, 0, 3, 3, 2])
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 1, 2]])
    matrix = confusion_matrix(pred, target)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target)), expected)
    assert confusion_matrix(pred, target, num_classes=5).shape == (5, 5)
    with pytest.raises(ValueError, match="outside 0..3"):
        confusion_matrix(pred + 1, target)


def test_precision_recall_known_answer():
    target = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    pred = np.array([0, 1, 1, 1, 0, 3, 3, 2])
    pr = precision_recall(pred, target)
    assert pr["precision_c0"] == pytest.approx(1 / 2) and pr["recall_c0"] == pytest.approx(1 / 2)
    assert pr["precision_c1"] == pytest.approx(2 / 3) and pr["recall_c1"] == pytest.approx(1.0)
    assert pr["precision_c2"] == 0.0 and pr["recall_c2"] == 0.0
    assert pr["precision_c3"] == pytest.approx(1.0) and pr["recall_c3"] == pytest.approx(2 / 3)
    assert pr["precision_mean"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert pr["recall_mean"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_precision_recall_absent_class_conventions():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 0])
    pr = precision_recall(pred, target)
    assert pr["precision_c3"] == 1.0 and pr["recall_c3"] == 1.0  # absent from both
    assert pr["precision_c2"] == 0.0 and pr["recall_c2"] == 0.0  # predicted, absent from target
    pr = precision_recall(np.array([0, 0]), np.array([0, 1]))
    assert pr["precision_c1"] == 0.0 and pr["recall_c1"] == 0.0  # in target, never predicted


# ---------------------------------------------------------------------------------- torch Dice counts


def test_region_dice_counts_equal_per_case_metrics():
    preds = np.stack([random_label_map((12, 14, 10), s) for s in (20, 30, 40)])
    targets = np.stack([random_label_map((12, 14, 10), s + 5) for s in (20, 30, 40)])
    targets[2] = np.where(targets[2] == 3, 1, targets[2])  # case without ET in the target
    preds[2][preds[2] == 3] = 0  # ... nor in the prediction -> Dice 1
    counts = region_dice_counts(torch.from_numpy(preds), torch.from_numpy(targets).long(), reduce_batch=False)
    assert counts.shape == (3, 3, 3) and counts.dtype == torch.int64
    per_case = dice_from_counts(counts)
    for b in range(3):
        metrics = brats_region_metrics(preds[b], targets[b])
        expected = [metrics["dice_wt"], metrics["dice_tc"], metrics["dice_et"]]
        np.testing.assert_allclose(per_case[b].numpy(), expected, rtol=1e-12)
    assert per_case[2, 2] == 1.0
    pooled = region_dice_counts(torch.from_numpy(preds), torch.from_numpy(targets))
    assert torch.equal(pooled, counts.sum(0))


def test_region_dice_counts_known_counts_and_errors():
    pred = torch.tensor([[0, 1, 2, 3, 3]])
    target = torch.tensor([[1, 1, 2, 2, 3]])
    expected = torch.tensor([[4, 4, 5], [2, 3, 3], [1, 2, 1]])  # WT, TC, ET: (intersection, pred, target)
    assert torch.equal(region_dice_counts(pred, target), expected)
    np.testing.assert_allclose(dice_from_counts(expected).numpy(), [8 / 9, 2 / 3, 2 / 3], rtol=1e-12)
    with pytest.raises(ValueError, match="integer"):
        region_dice_counts(pred.float(), target)
    with pytest.raises(ValueError, match="same shape"):
        region_dice_counts(pred, target[:, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_region_dice_counts_on_cuda_equal_cpu():
    pred = torch.from_numpy(random_label_map((12, 14, 10), 50)).long()[None]
    target = torch.from_numpy(random_label_map((12, 14, 10), 51)).long()[None]
    counts = region_dice_counts(pred.cuda(), target.cuda())
    assert counts.device.type == "cuda"
    assert torch.equal(counts.cpu(), region_dice_counts(pred, target))


def test_region_mask():
    labels = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(region_mask(labels, "wt"), [False, True, True, True])
    np.testing.assert_array_equal(region_mask(labels, "tc"), [False, True, False, True])
    np.testing.assert_array_equal(region_mask(labels, "et"), [False, False, False, True])
    with pytest.raises(ValueError, match="wt"):
        region_mask(labels, "ncr")


def test_pooled_precision_recall_from_summed_confusion_matrices():
    from metrics import confusion_matrix, precision_recall, precision_recall_from_confusion

    a_pred, a_true = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
    b_pred, b_true = np.array([3, 3, 0, 0]), np.array([3, 0, 0, 1])
    pooled = precision_recall_from_confusion(confusion_matrix(a_pred, a_true) + confusion_matrix(b_pred, b_true))
    assert pooled == precision_recall(np.concatenate([a_pred, b_pred]), np.concatenate([a_true, b_true]))
    assert pooled["precision_c3"] == 0.5 and pooled["recall_c3"] == 1.0  # 3 predicted twice, right once
    assert pooled["recall_c1"] == 0.5  # class 1 present twice, found once
