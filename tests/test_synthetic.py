"""Tests of the synthetic BraTS generator's two difficulties (brats_data/synthetic.py).

What ``difficulty="realistic"`` promises (see ``synthesize_realistic_case``), checked on 40 cases of
64x64x48 with tolerances for 40 draws:

- 1 to 3 lesions per case (about half of the cases have more than one; satellites and distant foci
  are separate connected components in about a third of the cases), every lesion connected;
- whole tumour between 0.5% and 15% of the brain, log-uniform (small and large tumours both occur);
- about 20% of cases without enhancing tumour (no label 4), some enhancing cases without necrosis;
- edema bright on FLAIR, enhancing tumour bright on T1ce, necrosis darker than the rim on T1ce, with
  tumour intensities that overlap those of healthy tissue.

``difficulty="easy"`` is the original cartoon generator, byte for byte, and the default task (``brats2021``)
of both difficulties is what the generator wrote before tasks existed.

The other tasks (checked on 6 cases of 40x40x32 each): the task's file names, ids (every 5th case a second
timepoint of the patient before it, with the same brain) and label values, every value in the data set; the
same phantoms as the default task with the labels renamed; a resection cavity (RC: brats2024, brats_met) touching
the tumour with a CSF-like signature, a cyst (CC: brats_ped) in the tumour core, each in 3 of 4 cases (both
difficulties); read back by ``discover_cases`` / ``read_case`` as classes 0..num_classes-1.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats_data.cases import read_case
from brats_data.definitions import SYNTHETIC_TASKS, synthetic_def
from brats_data.synthetic import DIFFICULTIES, MANIFEST_NAME, case_id, synthesize_case, synthesize_realistic_case
from data_loader import MODALITIES, dataset_root, discover_cases, generate_synthetic_dataset, validate_case

SHAPE = (64, 64, 48)
N_CASES = 40
# sha256 of the arrays of synthesize_case(0, 0, (48, 48, 40)) and (3, 5, (40, 36, 30)), computed with the
# generator as it was before the realistic difficulty was added.
EASY_SHA256 = {
    (0, 0, (48, 48, 40)): "f80611a8bf4b5402393f3caed6cf6d5c87fe8b2c63336041f8b9598d8ab025c6",
    (3, 5, (40, 36, 30)): "fc60750b465f785368e906cb59cb7b404b862be4d3b18a607c81a9cc61086487",
}
# the same for difficulty="realistic", computed with the generator as it was before tasks were added
REALISTIC_SHA256 = {
    (0, 0, (48, 48, 40)): "7562312aed9e7209da94d12a41a329ff9b40b1ab291969a83cda0a2daa934d39",
    (3, 5, (40, 36, 30)): "cb21425b6517eeebd2cd70c5d8d105c84e1a442e9159b1343fbedfa6b671c861",
}
TASKS = tuple(t for t in SYNTHETIC_TASKS if t != "brats2021")
TASK_SHAPE = (40, 40, 32)
TASK_CASES = 6
T1CE, T2, FLAIR = (MODALITIES.index(m) for m in ("t1ce", "t2", "flair"))


def _sha256(images: np.ndarray, seg: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(seg).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def cases() -> list[tuple[np.ndarray, np.ndarray, dict]]:
    return [synthesize_realistic_case(0, i, SHAPE) for i in range(N_CASES)]


def test_easy_is_the_original_generator() -> None:
    for (seed, index, shape), expected in EASY_SHA256.items():
        assert _sha256(*synthesize_case(seed, index, shape, difficulty="easy")) == expected
    with pytest.raises(ValueError, match="difficulty"):
        synthesize_case(0, 0, (32, 32, 32), difficulty="hard")
    assert DIFFICULTIES == ("easy", "realistic")


def test_realistic_volumes_are_valid(cases: list) -> None:
    for images, seg, info in cases:
        assert images.shape == (4, *SHAPE) and images.dtype == np.int16 and seg.dtype == np.uint8
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        brain = images[0] > 0
        assert all(np.array_equal(v > 0, brain) for v in images)  # skull-stripped, one mask
        assert np.all(brain[seg > 0]) and 2 in info["labels"]  # tumour inside, always with edema
        assert info["labels"] == sorted(int(v) for v in np.unique(seg) if v)
        assert info["wt_fraction"] == pytest.approx((seg > 0).sum() / brain.sum())


def test_realistic_lesion_counts_and_sizes(cases: list) -> None:
    lesions = np.array([info["n_lesions"] for _, _, info in cases])
    components = np.array([ndimage.label(seg > 0)[1] for _, seg, _ in cases])
    assert set(lesions.tolist()) == {1, 2, 3}
    assert 0.3 <= np.mean(lesions >= 2) <= 0.65  # promised 0.45
    assert np.all(components >= 1) and np.all(components <= lesions)  # each lesion is connected
    assert np.mean(components >= 2) >= 0.2  # separate satellites / foci really occur
    fractions = np.array([info["wt_fraction"] for _, _, info in cases])
    assert fractions.min() >= 0.004 and fractions.max() <= 0.16
    assert np.mean(fractions < 0.01) >= 0.1 and np.mean(fractions > 0.07) >= 0.1  # log-uniform spread
    for _, _, info in cases:
        assert info["wt_fraction"] <= info["target_fraction"] + 1e-9
        assert info["wt_fraction"] >= 0.8 * info["target_fraction"]


def test_realistic_label_mix(cases: list) -> None:
    labels = [set(info["labels"]) for _, _, info in cases]
    no_et = np.mean([4 not in lab for lab in labels])
    assert 0.08 <= no_et <= 0.35  # promised 0.2
    assert all(1 in lab for lab in labels if 4 not in lab)  # their core is non-enhancing tumour
    et_without_necrosis = np.mean([lab == {2, 4} for lab in labels])
    assert 0.05 <= et_without_necrosis <= 0.4  # promised 0.8 x 0.25 = 0.2
    assert np.mean([lab == {1, 2, 4} for lab in labels]) >= 0.4


def test_realistic_contrasts_overlap_healthy_tissue(cases: list) -> None:
    t1ce, flair = MODALITIES.index("t1ce"), MODALITIES.index("flair")
    ratios: dict[str, list[float]] = {"edema": [], "enhancing": [], "necrosis": [], "overlap": []}
    for images, seg, _ in cases:
        healthy = (images[0] > 0) & (seg == 0)
        fl, ce = images[flair].astype(np.float64), images[t1ce].astype(np.float64)
        ratios["edema"].append(fl[seg == 2].mean() / fl[healthy].mean())
        ratios["overlap"].append(np.mean(fl[seg == 2] < np.percentile(fl[healthy], 99)))
        if (seg == 4).any():
            ratios["enhancing"].append(ce[seg == 4].mean() / ce[healthy].mean())
            if (seg == 1).any():
                ratios["necrosis"].append(ce[seg == 1].mean() / ce[seg == 4].mean())
    assert np.median(ratios["edema"]) > 1.3 and min(ratios["edema"]) > 1.1
    assert np.median(ratios["enhancing"]) > 1.3
    assert np.median(ratios["necrosis"]) < 0.85
    # Not separable by a threshold: a good part of the edema is as dark as the brightest healthy tissue.
    assert np.median(ratios["overlap"]) > 0.1


def test_realistic_dataset_is_deterministic_brats_nifti(tmp_path: Path) -> None:
    shape = (48, 48, 40)
    root = generate_synthetic_dataset(tmp_path / "a", n_cases=3, seed=5, shape=shape)
    again = generate_synthetic_dataset(tmp_path / "b", n_cases=3, seed=5, shape=shape, difficulty="realistic")
    files = sorted(p.relative_to(root) for p in root.rglob("*.nii.gz"))
    assert len(files) == 15 and files == sorted(p.relative_to(again) for p in again.rglob("*.nii.gz"))
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert json.loads((root / MANIFEST_NAME).read_text())["difficulty"] == "realistic"
    for index, case in enumerate(discover_cases(tmp_path / "a", "synthetic")):
        validate_case(case)
        images, seg, _ = synthesize_realistic_case(5, index, shape)
        stored = nib.load(str(case.label_path))
        assert stored.header.get_zooms() == (1.0, 1.0, 1.0)
        assert np.array_equal(np.asanyarray(stored.dataobj), seg)
        flair = np.asanyarray(nib.load(str(case.image_paths["flair"])).dataobj)
        assert flair.dtype == np.int16 and np.array_equal(flair, images[MODALITIES.index("flair")])


def test_switching_difficulty_regenerates(tmp_path: Path) -> None:
    shape = (32, 32, 24)
    root = generate_synthetic_dataset(tmp_path, n_cases=2, seed=1, shape=shape, difficulty="easy")
    seg_path = root / "BraTS2021_00001/BraTS2021_00001_seg.nii.gz"
    easy = np.asanyarray(nib.load(str(seg_path)).dataobj)
    assert np.array_equal(easy, synthesize_case(1, 1, shape, difficulty="easy")[1])
    assert json.loads((root / MANIFEST_NAME).read_text())["difficulty"] == "easy"
    assert generate_synthetic_dataset(tmp_path, n_cases=2, seed=1, shape=shape) == dataset_root(tmp_path, "synthetic")
    assert json.loads((root / MANIFEST_NAME).read_text())["difficulty"] == "realistic"
    assert np.array_equal(np.asanyarray(nib.load(str(seg_path)).dataobj), synthesize_case(1, 1, shape)[1])
    with pytest.raises(ValueError, match="difficulty"):
        generate_synthetic_dataset(tmp_path, n_cases=2, difficulty="hard")


# --------------------------------------------------------------------------- the tasks


def _values(task: str) -> dict[str, int]:
    """Class key -> its label value in the files of the task's synthetic data set."""
    definition = synthetic_def(task)
    return {c.key: definition.write_back[k] for k, c in enumerate(definition.scheme.classes, start=1)}


def _read(root: Path, name: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (4, X, Y, Z) in canonical modality order and seg of one case, as written (nibabel order)."""
    layout = synthetic_def(task).layout

    def load(suffix: str) -> np.ndarray:
        return np.asanyarray(nib.load(str(root / name / layout.file_name(name, suffix))).dataobj)

    return np.stack([load(layout.suffix(m)) for m in MODALITIES]), load(layout.seg_suffix)


@pytest.fixture(scope="module")
def task_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, list]]:
    """task -> (data_path, root, [(case id, images, seg)]) of a realistic 6-case data set."""
    out = {}
    for task in TASKS:
        data_path = tmp_path_factory.mktemp(task)
        root = generate_synthetic_dataset(data_path, n_cases=TASK_CASES, seed=0, shape=TASK_SHAPE, task=task)
        names = [case_id(i, task) for i in range(TASK_CASES)]
        out[task] = data_path, root, [(name, *_read(root, name, task)) for name in names]
    return out


def test_default_task_is_unchanged(tmp_path: Path) -> None:
    for (seed, index, shape), expected in REALISTIC_SHA256.items():
        assert _sha256(*synthesize_case(seed, index, shape)) == expected
        assert _sha256(*synthesize_case(seed, index, shape, task="brats2021")) == expected
    for (seed, index, shape), expected in EASY_SHA256.items():
        assert _sha256(*synthesize_case(seed, index, shape, "easy", "brats2021")) == expected
    root = generate_synthetic_dataset(tmp_path, n_cases=5, seed=0, shape=(32, 32, 24), task="brats2021")
    assert root == tmp_path / "BRATS_SYNTHETIC/BraTS2021_Training_Data"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [f"BraTS2021_{i:05d}" for i in range(5)]
    # the manifest as before tasks existed (no "task"): data generated then is still valid
    assert json.loads((root / MANIFEST_NAME).read_text()) == {
        "generator_version": 2, "n_cases": 5, "seed": 0, "shape": [32, 32, 24], "difficulty": "realistic"}
    with pytest.raises(ValueError, match="synthetic_task"):
        generate_synthetic_dataset(tmp_path, n_cases=1, task="brats2019")


@pytest.mark.parametrize("task", TASKS)
def test_task_names_ids_and_labels(task: str, task_sets: dict) -> None:
    definition = synthetic_def(task)
    data_path, root, cases = task_sets[task]
    assert root == data_path / definition.root
    assert json.loads((root / MANIFEST_NAME).read_text())["task"] == task
    tag = {"brats2024": "GLI", "brats_met": "MET", "brats_men": "MEN", "brats_ped": "PED", "brats_ssa": "SSA"}[task]
    ids = [name for name, _, _ in cases]
    assert ids == [f"BraTS-{tag}-0000{p}-00{t}" for p, t in ((0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (4, 0))]
    assert all(definition.fits(i) for i in ids)
    assert [definition.patient_of(i) for i in ids][3:5] == [f"BraTS-{tag}-00003"] * 2
    assert len({definition.patient_of(i) for i in ids}) == 5
    suffixes = {"t1n", "t1c", "t2w", "t2f", "seg"}
    assert {p.name for p in (root / ids[0]).iterdir()} == {f"{ids[0]}-{s}.nii.gz" for s in suffixes}
    present = set()
    for _, images, seg in cases:
        assert images.dtype == np.int16 and images.shape == (4, *TASK_SHAPE) and seg.dtype == np.uint8
        assert set(np.unique(seg).tolist()) <= definition.labels
        assert np.all(images[0][seg > 0] > 0)  # labels inside the brain
        present |= set(np.unique(seg).tolist())
    assert present == definition.labels  # every class of the scheme occurs in 6 cases
    # the second timepoint has the brain of its patient's first case, a new tumour
    assert np.array_equal(cases[3][1][0] > 0, cases[4][1][0] > 0) and not np.array_equal(cases[3][2], cases[4][2])


@pytest.mark.parametrize("task", TASKS)
def test_task_cases_read_back_as_classes(task: str, task_sets: dict) -> None:
    definition = synthetic_def(task)
    data_path, _, cases = task_sets[task]
    records = discover_cases(data_path, definition)
    assert [r.case_id for r in records] == [name for name, _, _ in cases]
    lut = dict(definition.label_map)
    classes = set()
    for record, (_, _, seg) in zip(records, cases):
        validate_case(record)
        raw = read_case(record)
        assert raw.image.shape == (4, *TASK_SHAPE[::-1]) and raw.spacing == (1.0, 1.0, 1.0)
        assert np.array_equal(raw.label, np.vectorize(lut.get)(seg).astype(np.uint8).transpose(2, 1, 0))
        classes |= set(np.unique(raw.label).tolist())
    assert classes == set(range(definition.num_classes))


@pytest.mark.parametrize("task", ["brats_men", "brats_ped"])
def test_task_is_the_default_phantom_renamed(task: str) -> None:
    """Case 0 (a first timepoint) of another task is the default task's case: the same images, outside a cyst,
    and the same parts written with the task's values (necrosis -> NETC, edema -> SNFH/ED, enhancing -> ET)."""
    values = _values(task)
    rename = {0: 0, 1: values["netc"], 2: values.get("snfh", values.get("ed")), 4: values["et"]}
    for difficulty in DIFFICULTIES:
        images, seg = synthesize_case(2, 0, (40, 36, 30), difficulty)
        task_images, task_seg = synthesize_case(2, 0, (40, 36, 30), difficulty, task)
        fluid = task_seg == values.get("cc", -1)
        assert np.array_equal(np.vectorize(rename.get)(seg)[~fluid], task_seg[~fluid])
        if not fluid.any():
            assert np.array_equal(images, task_images)


def test_resection_cavity(task_sets: dict) -> None:
    for task in ("brats2024", "brats_met"):
        values = _values(task)
        with_rc = []
        for _, images, seg in task_sets[task][2]:
            rc = seg == values["rc"]
            with_rc.append(bool(rc.any()))
            if not rc.any():
                continue
            tumour = np.isin(seg, [values[k] for k in ("netc", "snfh", "et")])
            assert ndimage.distance_transform_edt(~tumour)[rc].min() <= 2  # touching the tumour, or nearly
            healthy = (images[0] > 0) & (seg == 0)
            t2, fl, ce = (images[m].astype(np.float64) for m in (T2, FLAIR, T1CE))
            assert t2[rc].mean() > 1.3 * t2[healthy].mean()  # fluid: bright on T2,
            # suppressed on FLAIR and dark on T1ce (not enhancing); the margins allow for partial volume, which
            # brightens a cavity of a few voxels' radius
            assert fl[rc].mean() < 0.6 * fl[seg == values["snfh"]].mean() and fl[rc].mean() < 0.85 * fl[healthy].mean()
            assert ce[rc].mean() < 0.85 * ce[healthy].mean()
        assert with_rc == [True, False, True, True, True, False]  # 3 of 4 cases, deterministically


def test_cyst_in_the_tumour_core(task_sets: dict) -> None:
    values = _values("brats_ped")
    with_cc = []
    for _, images, seg in task_sets["brats_ped"][2]:
        cc = seg == values["cc"]
        with_cc.append(bool(cc.any()))
        if not cc.any():
            continue
        core = np.isin(seg, (values["et"], values["netc"]))
        components, n = ndimage.label(cc)
        assert all((ndimage.binary_dilation(components == k) & core).any() for k in range(1, n + 1))
        t2, ce = images[T2].astype(np.float64), images[T1CE].astype(np.float64)
        healthy = (images[0] > 0) & (seg == 0)
        assert t2[cc].mean() > 1.3 * t2[healthy].mean()  # fluid: bright on T2,
        if (seg == values["et"]).any():
            assert ce[cc].mean() < 0.6 * ce[seg == values["et"]].mean()  # not enhancing
    assert with_cc == [True, False, True, True, True, False]


def test_fluid_in_easy_phantoms_too() -> None:
    for task, key in (("brats2024", "rc"), ("brats_ped", "cc")):
        value = _values(task)[key]
        present = [bool((synthesize_case(0, i, (40, 40, 32), "easy", task)[1] == value).any()) for i in range(4)]
        assert present == [True, False, True, True]


def test_tasks_are_deterministic_and_regenerate(tmp_path: Path, task_sets: dict) -> None:
    _, first, cases = task_sets["brats_ped"]
    again = generate_synthetic_dataset(tmp_path, n_cases=TASK_CASES, seed=0, shape=TASK_SHAPE, task="brats_ped")
    files = sorted(p.relative_to(first) for p in first.rglob("*.nii.gz"))
    assert len(files) == 5 * TASK_CASES and files == sorted(p.relative_to(again) for p in again.rglob("*.nii.gz"))
    assert all((first / f).read_bytes() == (again / f).read_bytes() for f in files)
    # another task lives in another folder; a changed manifest (task, seed, ...) regenerates
    met = generate_synthetic_dataset(tmp_path, n_cases=2, seed=1, shape=TASK_SHAPE, difficulty="easy",
                                     task="brats_met")
    assert met != again and (again / MANIFEST_NAME).is_file()
    manifest = json.loads((met / MANIFEST_NAME).read_text())
    (met / MANIFEST_NAME).write_text(json.dumps({**manifest, "task": "brats2024"}))
    seg_path = met / "BraTS-MET-00001-000/BraTS-MET-00001-000-seg.nii.gz"
    seg_path.unlink()
    assert generate_synthetic_dataset(tmp_path, n_cases=2, seed=1, shape=TASK_SHAPE, difficulty="easy",
                                      task="brats_met") == met
    assert json.loads((met / MANIFEST_NAME).read_text()) == manifest
    expected = synthesize_case(1, 1, TASK_SHAPE, "easy", "brats_met")[1]
    assert np.array_equal(np.asanyarray(nib.load(str(seg_path)).dataobj), expected)
