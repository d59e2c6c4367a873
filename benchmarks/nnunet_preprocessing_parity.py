"""How far the suite's cached arrays are from nnU-Net v2's preprocessing of the same cases (crop to the non-zero
region, z-score within its mask): max and median absolute difference inside the brain, on synthetic cases, and
with part of one modality's brain set to 0 (as where a BraTS modality reads 0 inside the brain; nnU-Net z-scores
over the joint mask of all modalities, the suite over each modality's non-zero voxels).

    python benchmarks/nnunet_preprocessing_parity.py     # needs .venv-nnunet (tests/nnunet_ref.py)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brats_data import PreprocessedCache, discover_cases, generate_synthetic_dataset  # noqa: E402
from brats_data.cases import read_case  # noqa: E402
from tests.nnunet_ref import run_in_nnunet  # noqa: E402
from tests.test_nnunet_parity import NNUNET_PREPROCESSING  # noqa: E402


def figures(cache: PreprocessedCache, folder: Path) -> tuple[float, float]:
    raw = {}
    for cid in cache.case_ids:
        case = read_case(cache.cases[cid])
        raw[cid + "_img"], raw[cid + "_seg"] = case.image, case.label
    np.savez(folder / "raw.npz", **raw)
    run_in_nnunet(NNUNET_PREPROCESSING, {"raw": str(folder / "raw.npz"), "out": str(folder / "out.npz"),
                                         "cases": cache.case_ids})
    theirs = np.load(folder / "out.npz")
    diffs = []
    for cid in cache.case_ids:
        inside = theirs[cid + "_seg"][0] >= 0
        diffs.append(np.abs(np.asarray(cache.image(cid)).astype(np.float32) - theirs[cid + "_img"])[:, inside])
    d = np.concatenate([x.ravel() for x in diffs])
    return float(d.max()), float(np.median(d))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_synthetic_dataset(root / "data", n_cases=3, seed=1, shape=(96, 96, 64))
        cases = discover_cases(root / "data", "synthetic")
        cache = PreprocessedCache(root / "cache", cases)
        cache.build(progress=False)
        top, med = figures(cache, root)
        print(f"synthetic, 3 cases: |cache - nnU-Net| inside the brain: max {top:.4f}, median {med:.4f}")
        # 2% of one modality's brain voxels read 0 (the other modalities unchanged)
        import nibabel as nib

        for case in cases:
            path = next(iter(case.image_paths.values()))
            img = nib.load(str(path))
            data = np.asarray(img.dataobj).astype(np.float32)
            brain = np.flatnonzero(data != 0)
            data.flat[np.random.default_rng(0).choice(brain, len(brain) // 50, replace=False)] = 0
            nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))
        cache = PreprocessedCache(root / "cache2", discover_cases(root / "data", "synthetic"))
        cache.build(progress=False)
        top, med = figures(cache, root)
        print(f"same, 2% of one modality's brain at 0: max {top:.4f}, median {med:.4f}")


if __name__ == "__main__":
    main()
