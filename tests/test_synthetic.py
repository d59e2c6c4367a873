"""Tests of the synthetic BraTS generator's two difficulties (brats_data/synthetic.py).

What ``difficulty="realistic"`` promises (see ``synthesize_realistic_case``), checked on 40 cases of
64x64x48 with tolerances for 40 draws:

- 1 to 3 lesions per case (about half of the cases have more than one; satellites and distant foci
  are separate connected components in about a third of the cases), every lesion connected;
- whole tumour between 0.5% and 15% of the brain, log-uniform (small and large tumours both occur);
- about 20% of cases without enhancing tumour (no label 4), some enhancing cases without necrosis;
- edema bright on FLAIR, enhancing tumour bright on T1ce, necrosis darker than the rim on T1ce, with
  tumour intensities that overlap those of healthy tissue.

``difficulty="easy"`` is the original cartoon generator, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats_data.synthetic import DIFFICULTIES, MANIFEST_NAME, synthesize_case, synthesize_realistic_case
from data_loader import MODALITIES, dataset_root, discover_cases, generate_synthetic_dataset, validate_case

SHAPE = (64, 64, 48)
N_CASES = 40
# sha256 of the arrays of synthesize_case(0, 0, (48, 48, 40)) and (3, 5, (40, 36, 30)), computed with the
# generator as it was before the realistic difficulty was added.
EASY_SHA256 = {
    (0, 0, (48, 48, 40)): "f80611a8bf4b5402393f3caed6cf6d5c87fe8b2c63336041f8b9598d8ab025c6",
    (3, 5, (40, 36, 30)): "fc60750b465f785368e906cb59cb7b404b862be4d3b18a607c81a9cc61086487",
}


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
