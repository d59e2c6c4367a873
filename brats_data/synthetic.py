"""Deterministic synthetic BraTS dataset written as real NIfTI files in the BraTS 2021 layout.

Each phantom is a skull-stripped ellipsoidal brain (background exactly 0) with grey/white-matter,
ventricle and sulcal-CSF contrast that differs per modality, a smooth multiplicative bias field and
Rician noise, plus one irregular tumour inside the brain: edema (label 2, bright on FLAIR/T2), an
enhancing rim (label 4, bright on T1ce) and, in most cases, a necrotic core (label 1, dark on T1ce).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from utils.labels import MODALITIES

from .cases import dataset_root
from .locking import file_lock

GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic_manifest.json"
DEFAULT_SHAPE: tuple[int, int, int] = (96, 96, 64)

# Relative mean intensity of each tissue per modality (t1, t1ce, t2, flair).
TISSUE_INTENSITY: dict[str, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 0.55, 0.65),
    "gm": (0.72, 0.74, 0.82, 0.88),
    "csf": (0.30, 0.30, 1.60, 0.25),
    "edema": (0.62, 0.66, 1.30, 1.45),
    "enhancing": (0.80, 1.65, 1.05, 1.15),
    "necrosis": (0.42, 0.32, 1.50, 0.95),
}
TUMOUR_LABELS = {"edema": 2, "enhancing": 4, "necrosis": 1}
NECROSIS_PROBABILITY = 0.8
WHOLE_TUMOUR_FRACTION = (0.03, 0.12)  # target fraction of the brain volume (before irregularity)
NOISE_SIGMA = 0.03  # Rician noise, relative to the white-matter T1 intensity
BIAS_STRENGTH = 0.15


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Zero-mean, unit-scale smooth random field: coarse Gaussian noise, trilinearly upsampled."""
    coarse_shape = tuple(max(2, int(np.ceil(s / cell)) + 1) for s in shape)
    coarse = torch.from_numpy(rng.standard_normal(coarse_shape, dtype=np.float32))[None, None]
    field = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
    return field[0, 0].numpy()


def _ellipsoid_radius(shape: tuple[int, ...], centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Normalised ellipsoidal radius sqrt(sum(((x - centre) / axes)^2)) on the voxel grid."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return np.sqrt(sum(((g.astype(np.float32) - c) / a) ** 2 for g, c, a in zip(grids, centre, axes)))


def _brain_phantom(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask and tissue weights (wm, gm, csf) of the brain voxels: (3, n_brain), summing to 1."""
    size = np.array(shape, dtype=np.float32)
    centre = size / 2 + rng.uniform(-0.03, 0.03, 3) * size
    axes = size / 2 * rng.uniform(0.80, 0.90, 3)
    radius = _ellipsoid_radius(shape, centre, axes) * (1 + 0.05 * _smooth_noise(rng, shape, 16))
    brain = radius < 1.0
    radius = radius[brain]
    # White matter inside, grey-matter ribbon outside, with smooth gyral irregularity.
    wm = np.clip((0.80 - radius) / 0.12 + 0.9 * _smooth_noise(rng, shape, 6)[brain], 0.0, 1.0)
    # Ventricles: two small ellipsoids beside the centre; sulcal CSF at the brain surface.
    csf = radius > 0.95
    for side in (-1, 1):
        v_centre = centre + np.array([side * 0.12, 0.05, 0.0]) * axes
        csf |= _ellipsoid_radius(shape, v_centre, axes * np.array([0.07, 0.25, 0.18]))[brain] < 1
    csf = csf.astype(np.float32)
    wm *= 1 - csf
    return brain, np.stack([wm, (1 - wm) * (1 - csf), csf])


def _tumour(rng: np.random.Generator, brain: np.ndarray) -> np.ndarray:
    """BraTS labels (0, 1, 2, 4) of one irregular tumour placed inside the brain."""
    shape = brain.shape
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0)
    centre_brain, axes_brain = (lo + hi) / 2, (hi - lo) / 2
    volume = float(brain.sum()) * rng.uniform(*WHOLE_TUMOUR_FRACTION)
    radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
    axes = radius * rng.uniform(0.8, 1.25, 3)
    axes *= radius / np.prod(axes) ** (1 / 3)  # keep the target volume
    # Centre: uniform in a shrunken brain ellipsoid so that most of the tumour lies inside the brain.
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    reach = np.clip(1 - 1.1 * axes / axes_brain, 0.0, 1.0) * 0.85
    centre = centre_brain + direction * rng.uniform() ** (1 / 3) * reach * axes_brain
    # Work in the tumour's bounding box only.
    box = tuple(slice(int(max(0, np.floor(c - 1.6 * a))), int(min(s, np.ceil(c + 1.6 * a) + 1)))
                for c, a, s in zip(centre, axes, shape))
    box_shape = tuple(b.stop - b.start for b in box)
    local_centre = centre - np.array([b.start for b in box])
    cell = max(2.0, radius / 2)
    dist = _ellipsoid_radius(box_shape, local_centre, axes) * (1 + 0.25 * _smooth_noise(rng, box_shape, cell))
    core_dist = dist * (1 + 0.15 * _smooth_noise(rng, box_shape, cell))
    core_radius = rng.uniform(0.55, 0.8)
    labels = np.zeros(box_shape, dtype=np.uint8)
    labels[dist < 1.0] = TUMOUR_LABELS["edema"]
    labels[core_dist < core_radius] = TUMOUR_LABELS["enhancing"]
    if rng.uniform() < NECROSIS_PROBABILITY:
        labels[core_dist < core_radius * rng.uniform(0.5, 0.75)] = TUMOUR_LABELS["necrosis"]
    seg = np.zeros(shape, dtype=np.uint8)
    seg[box] = labels
    seg[~brain] = 0
    return seg


def synthesize_case(seed: int, index: int, shape: tuple[int, int, int] = DEFAULT_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """One phantom in nibabel (X, Y, Z) order: images (4, X, Y, Z) int16 (canonical modalities), seg uint8."""
    rng = np.random.default_rng([seed, index])
    brain, weights = _brain_phantom(rng, shape)
    seg = _tumour(rng, brain)
    labels = seg[brain]
    tumour = labels > 0
    texture = 1 + 0.04 * _smooth_noise(rng, shape, 2)[brain]
    images = np.zeros((len(MODALITIES),) + tuple(shape), dtype=np.int16)
    for m in range(len(MODALITIES)):
        healthy = np.array([TISSUE_INTENSITY[t][m] for t in ("wm", "gm", "csf")], dtype=np.float32)
        tissue = healthy @ weights
        contrast = np.zeros(max(TUMOUR_LABELS.values()) + 1, dtype=np.float32)
        for name, label in TUMOUR_LABELS.items():
            contrast[label] = TISSUE_INTENSITY[name][m] * rng.uniform(0.93, 1.07)
        tissue[tumour] = contrast[labels[tumour]]
        gain = np.float32(600.0 * rng.uniform(0.8, 1.25))
        bias = np.exp(BIAS_STRENGTH * _smooth_noise(rng, shape, max(shape) / 2)[brain])
        signal = tissue * texture * bias * gain
        sigma = np.float32(NOISE_SIGMA) * gain
        noise = rng.standard_normal((2, len(signal)), dtype=np.float32) * sigma
        noisy = np.hypot(signal + noise[0], noise[1])
        images[m][brain] = np.clip(np.rint(noisy), 1, np.iinfo(np.int16).max)
    return images, seg


def _write_nifti(data: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms((1.0, 1.0, 1.0))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def _manifest(n_cases: int, seed: int, shape: tuple[int, int, int]) -> dict:
    return {"generator_version": GENERATOR_VERSION, "n_cases": n_cases, "seed": seed, "shape": list(shape)}


def _is_complete(root: Path, manifest: dict) -> bool:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return False
    try:
        if json.loads(path.read_text()) != manifest:
            return False
    except (OSError, ValueError):
        return False
    return all((root / f"BraTS2021_{i:05d}").is_dir() for i in range(manifest["n_cases"]))


def generate_synthetic_dataset(data_path: str | Path, n_cases: int = 20, seed: int = 0,
                               shape: tuple[int, int, int] = DEFAULT_SHAPE) -> Path:
    """Write ``n_cases`` phantoms to ``{data_path}/BRATS_SYNTHETIC/BraTS2021_Training_Data`` and return it.

    Cases are ``BraTS2021_00000 ...`` with ``_{t1,t1ce,t2,flair,seg}.nii.gz`` files (int16 images,
    uint8 labels 0/1/2/4, 1 mm spacing, ``shape`` in NIfTI (X, Y, Z) order).  Deterministic: case i
    depends only on (seed, i) and the bytes are identical between runs.  Idempotent: a folder already
    holding the same configuration (``synthetic_manifest.json``) is left as is; a different one is
    replaced.  Generation happens in a temporary folder renamed into place under a file lock, so
    concurrent callers are safe.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes (X, Y, Z), each >= 16, got {shape}")
    root = dataset_root(data_path, "synthetic")
    manifest = _manifest(n_cases, seed, shape)
    if _is_complete(root, manifest):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / ".synthetic.lock"):
        if _is_complete(root, manifest):  # another process finished meanwhile
            return root
        tmp = root.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            for index in range(n_cases):
                case_id = f"BraTS2021_{index:05d}"
                folder = tmp / case_id
                folder.mkdir(parents=True)
                images, seg = synthesize_case(seed, index, shape)
                for modality, volume in zip(MODALITIES, images):
                    _write_nifti(volume, folder / f"{case_id}_{modality}.nii.gz")
                _write_nifti(seg, folder / f"{case_id}_seg.nii.gz")
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
