"""Tests of data_loader: layouts, validation errors, labels, normalisation, synthetic data, splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_loader import (
    DATASET_VERSIONS,
    MODALITIES,
    BadCaseError,
    dataset_root,
    discover_cases,
    generate_synthetic_dataset,
    load_case,
    make_splits,
    map_labels,
    normalize_modality,
    validate_case,
)
from tests.test_data_helpers import LAYOUT_SUFFIXES, write_case, write_nifti

SHAPE = (16, 16, 16)  # NIfTI (X, Y, Z)


# --------------------------------------------------------------------------- layouts / discovery

@pytest.mark.parametrize(
    ("version", "case_ids"),
    [
        ("brats2018", ["Brats18_2013_2_1", "Brats18_TCIA02_135_1", "Brats18_TCIA10_103_1"]),
        ("brats2021", ["BraTS2021_00000", "BraTS2021_00002"]),
        ("brats2023", ["BraTS-GLI-00000-000", "BraTS-GLI-00002-001"]),
        ("synthetic", ["BraTS2021_00000", "BraTS2021_00001"]),
    ],
)
def test_discover_each_layout(tmp_path: Path, version: str, case_ids: list[str]) -> None:
    root = dataset_root(tmp_path, version)
    for i, cid in enumerate(reversed(case_ids)):
        group = ("HGG" if i % 2 else "LGG") if version == "brats2018" else ""
        write_case(root / group, cid, version, SHAPE)
    cases = discover_cases(tmp_path, version)
    assert [c.case_id for c in cases] == sorted(case_ids)
    sep, suffixes = LAYOUT_SUFFIXES[version]
    for case in cases:
        assert case.layout == ("brats2021" if version == "synthetic" else version)
        for modality in MODALITIES:
            assert case.image_paths[modality].name == f"{case.case_id}{sep}{suffixes[modality]}.nii.gz"
            assert case.image_paths[modality].is_file()
        assert case.label_path.name == f"{case.case_id}{sep}seg.nii.gz"
        validate_case(case, full=True)


def test_expected_paths(tmp_path: Path) -> None:
    assert dataset_root(tmp_path, "brats2018") == tmp_path / "BRATS2018/MICCAI_BraTS_2018_Data_Training"
    assert dataset_root(tmp_path, "brats2021") == tmp_path / "BRATS2021/BraTS2021_Training_Data"
    assert dataset_root(tmp_path, "brats2023") == (
        tmp_path / "BRATS2023/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData")
    assert dataset_root(tmp_path, "synthetic") == tmp_path / "BRATS_SYNTHETIC/BraTS2021_Training_Data"


def test_plain_nii_accepted_and_max_samples(tmp_path: Path) -> None:
    root = dataset_root(tmp_path, "brats2021")
    for i in range(4):
        write_case(root, f"BraTS2021_{i:05d}", "brats2021", SHAPE, extension=".nii")
    cases = discover_cases(tmp_path, "brats2021", max_samples=2)
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    assert cases[0].image_paths["t1"].name == "BraTS2021_00000_t1.nii"
    image, label, spacing = load_case(cases[0])
    assert image.shape == (4, *SHAPE[::-1]) and label.shape == SHAPE[::-1]
    with pytest.raises(ValueError, match="max_samples"):
        discover_cases(tmp_path, "brats2021", max_samples=0)


def test_wrong_version_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="brats2018, brats2021, brats2023, synthetic"):
        discover_cases(tmp_path, "brats2020")
    assert DATASET_VERSIONS == ("brats2018", "brats2021", "brats2023", "synthetic", "brats2024", "brats_met",
                                "brats_men", "brats_ped", "brats_ssa", "msd", "nnunet")
    with pytest.raises(FileNotFoundError) as info:
        discover_cases(tmp_path, "brats2021")
    message = str(info.value)
    assert str(dataset_root(tmp_path, "brats2021")) in message and "brats2021" in message
    assert "_t1.nii.gz" in message


def test_axis_order_and_spacing(tmp_path: Path) -> None:
    root = dataset_root(tmp_path, "brats2021")
    seg = np.zeros((12, 10, 8), dtype=np.uint8)
    seg[2, 3, 4] = 1  # a single labelled voxel at x=2, y=3, z=4
    write_case(root, "BraTS2021_00000", "brats2021", seg.shape, seg=seg, zooms=(1.0, 2.0, 3.0))
    image, label, spacing = load_case(discover_cases(tmp_path, "brats2021")[0])
    assert image.shape == (4, 8, 10, 12) and label.shape == (8, 10, 12)
    assert np.argwhere(label).tolist() == [[4, 3, 2]]
    assert spacing == (3.0, 2.0, 1.0)


# --------------------------------------------------------------------------- validation errors

def _one_case(tmp_path: Path, version: str = "brats2021", cid: str = "BraTS2021_00007", **kw):
    root = dataset_root(tmp_path, version)
    folder = write_case(root, cid, version, SHAPE, **kw)
    return discover_cases(tmp_path, version)[0], folder


def _assert_bad(info: pytest.ExceptionInfo, case_id: str, file_name: str) -> None:
    err = info.value
    assert isinstance(err, BadCaseError)
    assert err.case_id == case_id and err.path.name == file_name
    assert case_id in str(err) and file_name in str(err) and "\n" not in str(err)


def test_missing_t1_never_matches_t1ce(tmp_path: Path) -> None:
    case, folder = _one_case(tmp_path)
    (folder / "BraTS2021_00007_t1.nii.gz").unlink()
    case = discover_cases(tmp_path, "brats2021")[0]
    assert case.image_paths["t1"].name == "BraTS2021_00007_t1.nii.gz"
    assert (folder / "BraTS2021_00007_t1ce.nii.gz").is_file()
    with pytest.raises(BadCaseError) as info:
        validate_case(case)
    _assert_bad(info, "BraTS2021_00007", "BraTS2021_00007_t1.nii.gz")
    assert "'t1'" in str(info.value)


def test_missing_seg(tmp_path: Path) -> None:
    case, folder = _one_case(tmp_path, "brats2023", "BraTS-GLI-00001-000")
    (folder / "BraTS-GLI-00001-000-seg.nii.gz").unlink()
    with pytest.raises(BadCaseError) as info:
        validate_case(case)
    _assert_bad(info, "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-seg.nii.gz")


def test_unreadable_header(tmp_path: Path) -> None:
    case, folder = _one_case(tmp_path)
    (folder / "BraTS2021_00007_t2.nii.gz").write_bytes(gzip.compress(b"not a nifti file at all" * 3))
    with pytest.raises(BadCaseError) as info:
        validate_case(case)
    _assert_bad(info, "BraTS2021_00007", "BraTS2021_00007_t2.nii.gz")


def test_truncated_data_found_at_load(tmp_path: Path) -> None:
    case, folder = _one_case(tmp_path)
    path = folder / "BraTS2021_00007_flair.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: 352 + (len(raw) - 352) // 2]))  # header intact, half the voxels
    validate_case(case)  # cheap checks pass: the header is fine
    with pytest.raises(BadCaseError) as info:
        load_case(case)
    _assert_bad(info, "BraTS2021_00007", "BraTS2021_00007_flair.nii.gz")


def test_shape_mismatch(tmp_path: Path) -> None:
    case, folder = _one_case(tmp_path)
    write_nifti(np.ones((16, 16, 15), np.int16), folder / "BraTS2021_00007_t1ce.nii.gz")
    with pytest.raises(BadCaseError) as info:
        validate_case(case)
    _assert_bad(info, "BraTS2021_00007", "BraTS2021_00007_t1ce.nii.gz")
    assert "shape" in str(info.value)


def test_affine_mismatch(tmp_path: Path) -> None:
    case, folder = _one_case(tmp_path)
    write_nifti(np.ones(SHAPE, np.uint8), folder / "BraTS2021_00007_seg.nii.gz", zooms=(1.0, 1.0, 1.01))
    with pytest.raises(BadCaseError) as info:
        validate_case(case)
    _assert_bad(info, "BraTS2021_00007", "BraTS2021_00007_seg.nii.gz")
    assert "affine" in str(info.value)
    # A difference below the tolerance (1e-3) is accepted.
    write_nifti(np.zeros(SHAPE, np.uint8), folder / "BraTS2021_00007_seg.nii.gz", zooms=(1.0, 1.0, 1.0004))
    validate_case(case)


def test_labels_outside_layout(tmp_path: Path) -> None:
    seg = np.zeros(SHAPE, np.uint8)
    seg[4:8, 4:8, 4:8] = 3  # 3 is not a BraTS 2021 label
    case, _ = _one_case(tmp_path, seg=seg)
    validate_case(case)
    with pytest.raises(BadCaseError) as info:
        load_case(case)
    _assert_bad(info, "BraTS2021_00007", "BraTS2021_00007_seg.nii.gz")
    assert "[3]" in str(info.value)


def test_nan_voxels(tmp_path: Path) -> None:
    case, folder = _one_case(tmp_path)
    t2 = np.ones(SHAPE, np.float32)
    t2[3, 3, 3] = np.nan
    write_nifti(t2, folder / "BraTS2021_00007_t2.nii.gz")
    with pytest.raises(BadCaseError) as info:
        load_case(case)
    _assert_bad(info, "BraTS2021_00007", "BraTS2021_00007_t2.nii.gz")
    assert "NaN" in str(info.value)


def test_bad_case_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(BadCaseError("c1", "/x/c1_t1.nii.gz", "missing\nmodality")))
    assert (err.case_id, err.path.name, err.reason) == ("c1", "c1_t1.nii.gz", "missing modality")
    assert str(err) == "case c1: missing modality [/x/c1_t1.nii.gz]"


# --------------------------------------------------------------------------- labels

def test_map_labels_per_layout() -> None:
    seg = np.array([0, 1, 2, 4, 4, 0], dtype=np.int16)
    for layout in ("brats2018", "brats2021"):
        out = map_labels(seg, layout)
        assert out.dtype == np.uint8 and out.tolist() == [0, 1, 2, 3, 3, 0]
    assert map_labels(np.array([0, 1, 2, 3], np.float32), "brats2023").tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"labels \[4\]"):
        map_labels(np.array([0, 4]), "brats2023")
    with pytest.raises(ValueError, match="non-integer"):
        map_labels(np.array([0, 1.5]), "brats2021")
    assert map_labels(seg, "synthetic").tolist() == [0, 1, 2, 3, 3, 0]  # the synthetic data are BraTS 2021's
    with pytest.raises(ValueError, match="Unknown dataset 'msd'"):
        map_labels(seg, "msd")  # its record comes from its dataset.json


def test_load_case_maps_labels(tmp_path: Path) -> None:
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:5, 2:5, 2:5], seg[6:9, 6:9, 6:9], seg[10:12, 10:12, 10:12] = 1, 2, 4
    case, _ = _one_case(tmp_path, seg=seg)
    image, label, _ = load_case(case)
    assert label.dtype == np.uint8 and image.dtype == np.float32
    assert np.array_equal(label, map_labels(seg, "brats2021").transpose(2, 1, 0))
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------- normalisation

def test_normalize_properties() -> None:
    rng = np.random.default_rng(0)
    volume = np.zeros((20, 30, 30), np.int16)
    brain = np.zeros(volume.shape, bool)
    brain[3:17, 5:25, 5:25] = True
    values = rng.gamma(4.0, 100.0, brain.sum()) + 1
    values[:5] = 50_000  # outliers that clipping must tame
    volume[brain] = values.astype(np.int16).clip(1, None)
    before = volume.copy()
    out = normalize_modality(volume)
    assert out.dtype == np.float32 and np.array_equal(volume, before)  # pure
    assert np.all(out[~brain] == 0)
    inside = out[brain]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-4
    lo, hi = np.percentile(volume[brain].astype(np.float64), [0.5, 99.5])
    clipped = np.clip(volume[brain], lo, hi)
    expected_max = (hi - clipped.mean()) / clipped.std()
    assert inside.max() == pytest.approx(expected_max, rel=1e-4)
    assert inside.max() < 10  # the 50,000 outliers were clipped


def test_normalize_degenerate_volumes() -> None:
    zeros = normalize_modality(np.zeros((4, 5, 6), np.int16))
    assert zeros.dtype == np.float32 and not zeros.any()
    constant = np.zeros((4, 5, 6), np.float32)
    constant[1:3] = 7.0
    out = normalize_modality(constant)
    assert np.all(np.isfinite(out)) and not out.any()  # mean subtraction only
    with pytest.raises(ValueError, match="percentiles"):
        normalize_modality(constant, (99.5, 0.5))


# --------------------------------------------------------------------------- synthetic generator

SYN_SHAPE = (48, 48, 32)
SYN_EASY = {"difficulty": "easy"}  # the cartoon phantoms' contrasts; realistic ones: tests/test_synthetic.py


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("syn")
    generate_synthetic_dataset(data, n_cases=6, seed=3, shape=SYN_SHAPE, **SYN_EASY)
    return data


def test_synthetic_files_are_brats(synthetic_root: Path) -> None:
    cases = discover_cases(synthetic_root, "synthetic")
    assert [c.case_id for c in cases] == [f"BraTS2021_{i:05d}" for i in range(6)]
    with_all_labels = 0
    for case in cases:
        validate_case(case)
        seg_img = nib.load(str(case.label_path))
        seg = np.asanyarray(seg_img.dataobj)
        assert seg.shape == SYN_SHAPE and seg_img.header.get_zooms() == (1.0, 1.0, 1.0)
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        with_all_labels += set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        images = {m: np.asanyarray(nib.load(str(case.image_paths[m])).dataobj) for m in MODALITIES}
        assert all(v.dtype == np.int16 for v in images.values())
        brain = images["t1"] > 0
        assert all(np.array_equal(v > 0, brain) for v in images.values())  # skull-stripped, same mask
        fraction = (seg > 0).sum() / brain.sum()
        assert 0.02 < fraction < 0.2
        assert np.all(brain[seg > 0])

        def mean(modality: str, mask: np.ndarray, images: dict = images) -> float:
            return float(images[modality][mask].mean())

        healthy = brain & (seg == 0)
        assert mean("flair", seg == 2) > 1.3 * mean("flair", healthy)
        assert mean("t2", seg == 2) > 1.2 * mean("t2", healthy)
        assert mean("t1ce", seg == 4) > 1.5 * mean("t1ce", healthy)
        if (seg == 1).any():
            assert mean("t1ce", seg == 1) < 0.6 * mean("t1ce", seg == 4)
    assert with_all_labels >= 4


def test_synthetic_deterministic_and_idempotent(synthetic_root: Path, tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path, n_cases=2, seed=3, shape=SYN_SHAPE, **SYN_EASY)
    assert root == dataset_root(tmp_path, "synthetic")
    for name in ("BraTS2021_00001/BraTS2021_00001_flair.nii.gz", "BraTS2021_00001/BraTS2021_00001_seg.nii.gz"):
        assert (root / name).read_bytes() == (dataset_root(synthetic_root, "synthetic") / name).read_bytes()
    probe = root / "BraTS2021_00000/BraTS2021_00000_t1.nii.gz"
    stamp = probe.stat().st_mtime_ns
    generate_synthetic_dataset(tmp_path, n_cases=2, seed=3, shape=SYN_SHAPE, **SYN_EASY)
    assert probe.stat().st_mtime_ns == stamp  # same configuration: untouched
    generate_synthetic_dataset(tmp_path, n_cases=1, seed=4, shape=SYN_SHAPE, **SYN_EASY)
    assert [c.case_id for c in discover_cases(tmp_path, "synthetic")] == ["BraTS2021_00000"]
    assert probe.read_bytes() != (dataset_root(synthetic_root, "synthetic") / probe.relative_to(root)).read_bytes()
    with pytest.raises(ValueError, match="n_cases"):
        generate_synthetic_dataset(tmp_path, n_cases=0)


# --------------------------------------------------------------------------- splits

IDS = [f"case_{i:03d}" for i in range(20)]


def test_holdout_split() -> None:
    split = make_splits(IDS, seed=24)
    assert split["scheme"] == "holdout" and split["seed"] == 24 and len(split["folds"]) == 1
    fold = split["folds"][0]
    assert (len(fold["train"]), len(fold["val"]), len(fold["test"])) == (16, 2, 2)
    assert sorted(fold["train"] + fold["val"] + fold["test"]) == IDS
    assert all(fold[k] == sorted(fold[k]) for k in ("train", "val", "test"))
    assert make_splits(list(reversed(IDS)), seed=24) == split  # input order does not matter
    assert make_splits(IDS, seed=25) != split
    small = make_splits(IDS[:3], seed=0)["folds"][0]
    assert (len(small["train"]), len(small["val"]), len(small["test"])) == (1, 1, 1)
    with pytest.raises(ValueError, match="at least 3"):
        make_splits(IDS[:2], seed=0)
    with pytest.raises(ValueError, match=f"duplicate case ids in the split's case ids: {IDS[0]}"):
        make_splits(IDS[:3] + IDS[:1], seed=0)


@pytest.mark.parametrize("n", [5, 7, 20, 23])
def test_kfold_split(n: int) -> None:
    ids = IDS[:n] if n <= 20 else [f"p{i}" for i in range(n)]
    split = make_splits(ids, seed=1, use_5fold=True)
    assert split["scheme"] == "5fold" and [f["fold"] for f in split["folds"]] == list(range(5))
    tested = [cid for f in split["folds"] for cid in f["test"]]
    assert sorted(tested) == sorted(ids)  # every case tested exactly once
    for fold in split["folds"]:
        parts = [set(fold[k]) for k in ("train", "val", "test")]
        assert sum(map(len, parts)) == n and set.union(*parts) == set(ids)
        assert len(fold["val"]) == max(1, round(0.1 * n)) and len(fold["train"]) >= 1
        assert n // 5 <= len(fold["test"]) <= -(-n // 5)
    assert make_splits(ids[::-1], seed=1, use_5fold=True) == split


def test_kfold_too_few_cases() -> None:
    with pytest.raises(ValueError, match="too few"):
        make_splits(IDS[:4], seed=0, use_5fold=True)
    with pytest.raises(ValueError, match="n_folds"):
        make_splits(IDS, seed=0, use_5fold=True, n_folds=1)
