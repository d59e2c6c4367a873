"""Helpers shared by the data tests: write tiny BraTS cases in each layout (no tests here)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

CLASSIC = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
# version -> (separator, canonical modality -> file suffix), written from the BraTS release notes.
LAYOUT_SUFFIXES = {
    "brats2018": ("_", CLASSIC),
    "brats2021": ("_", CLASSIC),
    "synthetic": ("_", CLASSIC),
    "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}),
}


def write_nifti(data: np.ndarray, path: Path, zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
    """Write ``data`` (X, Y, Z) with a diagonal affine of ``zooms``."""
    img = nib.Nifti1Image(data, affine=np.diag([*zooms, 1.0]))
    nib.save(img, str(path))


def default_volumes(shape: tuple[int, int, int], version: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A spherical 'brain' with random intensities and a three-label tumour in the layout's labels."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    brain = radius < min(shape) * 0.42
    image = np.where(brain, rng.integers(100, 1000, shape), 0).astype(np.int16)
    seg = np.zeros(shape, np.uint8)
    et = 3 if version == "brats2023" else 4
    seg[radius < min(shape) * 0.3] = 2
    seg[radius < min(shape) * 0.2] = et
    seg[radius < min(shape) * 0.1] = 1
    return image, seg


def write_case(group_dir: Path, case_id: str, version: str, shape: tuple[int, int, int],
               image: np.ndarray | None = None, seg: np.ndarray | None = None, extension: str = ".nii.gz",
               zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Write one case folder ``group_dir/case_id`` in the file naming of ``version``; returns the folder."""
    sep, suffixes = LAYOUT_SUFFIXES[version]
    folder = Path(group_dir) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    default_image, default_seg = default_volumes(shape, version)
    for k, modality in enumerate(("t1", "t1ce", "t2", "flair")):
        volume = default_image * (k + 1) if image is None else image
        write_nifti(volume, folder / f"{case_id}{sep}{suffixes[modality]}{extension}", zooms)
    write_nifti(default_seg if seg is None else seg, folder / f"{case_id}{sep}seg{extension}", zooms)
    return folder
