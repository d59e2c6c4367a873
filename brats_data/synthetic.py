"""Deterministic synthetic BraTS datasets written as real NIfTI files, in the naming and labels of a task.

Two difficulties, chosen by ``difficulty``:

- ``"easy"`` (the original cartoon, kept for fast tests): a skull-stripped ellipsoidal brain with
  piecewise-constant grey/white matter and CSF, low noise and one compact tumour per case with, in
  most cases, all three labels.  Small models reach a whole-tumour Dice near 0.98 on it.
- ``"realistic"`` (the default): smooth tissue textures (white and grey matter with gyri and sulci,
  deep grey nuclei, ventricles, interhemispheric fissure), partial-volume blur, a bias field and
  Rician noise at BraTS-like contrast-to-noise, a per-case scanner gain, unlabelled look-alikes
  (white-matter hyperintensities on FLAIR/T2, enhancing vessels on T1ce) and 1-3 irregular, lobulated
  tumours per case (see :func:`synthesize_realistic_case` for what is promised).

The tumour has three parts: necrosis / non-enhancing core, edema and enhancing tumour.  Edema is
bright on FLAIR and T2 and fades towards its border, the enhancing rim is bright on T1ce, necrosis
is dark on T1ce; tumour intensities are heterogeneous and overlap those of normal tissue.

``task`` (one of :data:`brats_data.definitions.SYNTHETIC_TASKS`) chooses the record the data set imitates,
:func:`brats_data.definitions.synthetic_def`: its folder, file names, case ids and label values.

- ``"brats2021"`` (the default): ``BRATS_SYNTHETIC/BraTS2021_Training_Data/BraTS2021_00000/BraTS2021_00000_t1.nii.gz``
  ..., labels 1 necrosis, 2 edema, 4 enhancing.  Byte for byte what the generator wrote before tasks existed.
- the others: ``BRATS_SYNTHETIC_{TASK}/cases/BraTS-{TAG}-PPPPP-TTT/BraTS-{TAG}-PPPPP-TTT-{t1n,t1c,t2w,t2f,seg}.nii.gz``,
  each part written with the value of its class in the task's scheme (necrosis -> NETC, edema -> SNFH or ED,
  enhancing -> ET).  Patients are numbered from 0 and every 5th case is the second timepoint of the patient
  before it (``BraTS-GLI-00003-000``, ``BraTS-GLI-00003-001``: same brain, another tumour).  The schemes with a
  resection cavity (``brats2024``, ``brats_met``: RC) get one beside the tumour, the scheme with a cystic
  component (``brats_ped``: CC) a cyst in the tumour core, in 3 of 4 cases (fewer PED cysts in tiny volumes,
  where a core can be too small for one; :func:`_add_fluid`;
  ``docs/images/synthetic_tasks.png`` shows one of each).  Apart from these, a first timepoint is the default
  task's case of the same seed and index (same images and tumour), its labels renamed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from utils.labels import MODALITIES

from .cases import dataset_root
from .definitions import synthetic_def
from .locking import file_lock

GENERATOR_VERSION = 2
MANIFEST_NAME = "synthetic_manifest.json"
DEFAULT_SHAPE: tuple[int, int, int] = (96, 96, 64)
DIFFICULTIES = ("easy", "realistic")
DEFAULT_DIFFICULTY = "realistic"
DEFAULT_TASK = "brats2021"

# The generator's own label codes: BraTS 2021's values of the tumour parts, then the fluid structures only some
# tasks label.  A task's files hold ``write_back`` of the class each code stands for (:func:`_file_values`).
NECROSIS, EDEMA, ENHANCING, CAVITY, CYST = 1, 2, 4, 5, 6
CODE_CLASSES: dict[int, tuple[str, ...]] = {NECROSIS: ("ncr", "netc"), EDEMA: ("ed", "snfh"), ENHANCING: ("et",),
                                            CAVITY: ("rc",), CYST: ("cc",)}
# Fluid per modality (t1, t1ce, t2, flair), relative to white matter on T1 like the tissues below: a resection
# cavity holds CSF-like fluid (dark on T1/T1ce, bright on T2, suppressed on FLAIR); a tumour cyst holds
# proteinaceous fluid, so its FLAIR is only partly suppressed.  Neither enhances.
FLUID_INTENSITY: dict[int, tuple[float, float, float, float]] = {
    CAVITY: (0.32, 0.32, 1.55, 0.28),
    CYST: (0.40, 0.38, 1.50, 0.55),
}
FLUID_JITTER = 0.08
NO_FLUID_EVERY = 4  # case i has no cavity / cyst when i % 4 == 1: 3 of 4 cases have one, so both kinds occur
FOLLOW_UP_EVERY = 5  # case i with i % 5 == 4 is timepoint 001 of the patient of case i - 1 (non-default tasks)
CYST_MIN_CORE = 27  # core voxels a lesion needs for a cyst that leaves it a solid part

# --------------------------------------------------------------------------- easy (original) phantoms

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


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float,
                mask: np.ndarray | None = None) -> np.ndarray:
    """Multiplicative bias field exp(strength * smooth field): the whole volume, or the voxels of ``mask``."""
    field = _smooth_noise(rng, shape, max(shape) / 2)
    return np.exp(strength * (field if mask is None else field[mask]))


def _acquire(rng: np.random.Generator, clean: np.ndarray, bias: np.ndarray, gain: float,
             sigma: float) -> np.ndarray:
    """Scanner values of the noise-free intensities ``clean`` (1-D, the brain voxels): times the bias field
    and the gain, Rician noise of std ``sigma`` (two Gaussian draws per voxel), rounded, clipped to 1..int16 max.

    Shared by both difficulties; they differ in how the gain and sigma are drawn (see the callers).
    """
    signal = clean * bias * gain
    noise = rng.standard_normal((2, signal.size), dtype=np.float32) * sigma
    return np.clip(np.rint(np.hypot(signal + noise[0], noise[1])), 1, np.iinfo(np.int16).max)


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


def _synthesize_easy(seed: int, index: int, shape: tuple[int, int, int],
                     task: str = DEFAULT_TASK) -> tuple[np.ndarray, np.ndarray]:
    """The original cartoon phantom (``difficulty="easy"``): images and seg in the task's label values.  Its
    bytes must never change for the default task."""
    rng = np.random.default_rng([seed, index])
    first = _first_timepoint(task, index)  # a second timepoint has the brain of its patient's first case
    brain, weights = _brain_phantom(rng if first == index else np.random.default_rng([seed, first]), shape)
    seg = _tumour(rng, brain)
    fluid = _add_fluid(seed, index, seg, brain, task)
    labels = seg[brain]
    tumour = labels > 0
    texture = 1 + 0.04 * _smooth_noise(rng, shape, 2)[brain]
    images = np.zeros((len(MODALITIES),) + tuple(shape), dtype=np.int16)
    for m in range(len(MODALITIES)):
        healthy = np.array([TISSUE_INTENSITY[t][m] for t in ("wm", "gm", "csf")], dtype=np.float32)
        tissue = healthy @ weights
        contrast = np.zeros(CYST + 1, dtype=np.float32)
        for name, label in TUMOUR_LABELS.items():
            contrast[label] = TISSUE_INTENSITY[name][m] * rng.uniform(0.93, 1.07)
        for code, value in fluid.items():  # drawn by _add_fluid, so the default task draws nothing more here
            contrast[code] = value[m]
        tissue[tumour] = contrast[labels[tumour]]
        # per modality: a float32 gain, a fixed-strength bias field and a float32 noise level
        gain = np.float32(600.0 * rng.uniform(0.8, 1.25))
        bias = _bias_field(rng, shape, BIAS_STRENGTH, brain)
        images[m][brain] = _acquire(rng, tissue * texture, bias, gain, np.float32(NOISE_SIGMA) * gain)
    return images, _file_values(task)[seg]




# --------------------------------------------------------------------------- realistic phantoms

# Tissue codes of the anatomy map.
BACKGROUND, WM, GM, DEEP_GM, CSF = 0, 1, 2, 3, 4
# Mean intensity per tissue and modality (t1, t1ce, t2, flair), relative to white matter on T1.
# Healthy tissues are jittered per case by +-HEALTHY_JITTER, tumour and look-alikes by +-LESION_JITTER.
REALISTIC_INTENSITY: dict[str, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 0.55, 0.62),
    "gm": (0.74, 0.76, 0.80, 0.84),
    "deep_gm": (0.82, 0.84, 0.70, 0.76),
    "csf": (0.28, 0.30, 1.60, 0.20),
    "edema": (0.70, 0.72, 1.22, 1.25),
    "enhancing": (0.86, 1.55, 1.00, 1.05),
    "necrosis": (0.45, 0.40, 1.45, 0.88),
    "non_enhancing": (0.66, 0.70, 1.25, 1.18),  # label 1 of tumours without enhancement
    "wmh": (0.86, 0.88, 1.00, 1.06),  # unlabelled white-matter hyperintensity (look-alike of edema)
    "vessel": (0.90, 1.45, 0.60, 0.70),  # unlabelled enhancing vessel (look-alike of enhancing tumour)
}
HEALTHY_JITTER = 0.06
LESION_JITTER = 0.12
# What the tumour model promises (checked by tests/test_synthetic.py).
WT_FRACTION_RANGE = (0.005, 0.15)  # whole tumour / brain volume, log-uniform
LESION_COUNT_PROBABILITY = {1: 0.55, 2: 0.30, 3: 0.15}  # main lesion + satellites / distant foci
EXTRA_LESION_SHARE = (0.03, 0.25)  # volume of each extra lesion relative to the main one
MIN_LESION_VOXELS = 20
NO_ET_PROBABILITY = 0.2  # cases without enhancing tumour (their core is non-enhancing, label 1)
NECROSIS_PROBABILITY_WITH_ET = 0.75  # enhancing cases with a necrotic centre
# Acquisition.
NOISE_RANGE = (0.025, 0.05)  # Rician sigma relative to the white-matter T1 intensity
BIAS_RANGE = (0.10, 0.30)  # strength of the log bias field
GAIN_RANGE = (150.0, 2500.0)  # scanner gain (int16 value of white matter on T1), log-uniform
PARTIAL_VOLUME_SIGMA = 0.7  # voxels


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _box(centre: np.ndarray, half: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of the axis-aligned box of half-size ``half`` around ``centre``, clipped to ``shape``."""
    return tuple(slice(int(max(0, np.floor(c - half))), int(min(s, np.ceil(c + half) + 1)))
                 for c, s in zip(centre, shape))


def _box_shape(box: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(b.stop - b.start for b in box)


def _paint_ellipsoid(tissue: np.ndarray, centre: np.ndarray, axes: np.ndarray, value: int,
                     rng: np.random.Generator, only: tuple[int, ...] = (WM, GM)) -> None:
    """Set ``value`` inside a slightly irregular ellipsoid, over the tissues listed in ``only``."""
    box = _box(centre, 1.3 * float(axes.max()), tissue.shape)
    shape = _box_shape(box)
    if min(shape) < 1:
        return
    local = centre - np.array([b.start for b in box])
    dist = _ellipsoid_radius(shape, local, axes) * (1 + 0.12 * _smooth_noise(rng, shape, max(2.0, axes.min())))
    region = tissue[box]
    region[(dist < 1) & np.isin(region, only)] = value


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue map (0 background, WM, GM, DEEP_GM, CSF), brain centre and semi-axes (X, Y, Z voxels).

    An ellipsoidal brain with a folded cortical ribbon (grey matter outside a wavy white-matter
    surface, sulcal CSF along the zero-crossings of a smooth field), an interhemispheric fissure,
    thalami and basal ganglia, and lateral ventricles whose size varies per case.
    """
    size = np.array(shape, dtype=np.float32)
    centre = size / 2 + rng.uniform(-0.03, 0.03, 3) * size
    axes = size / 2 * rng.uniform(0.78, 0.88, 3)
    unit = float(axes.mean()) / 70  # about 1 mm of a real brain
    radius = _ellipsoid_radius(shape, centre, axes) * (1 + 0.04 * _smooth_noise(rng, shape, 20 * unit))
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[radius < 1] = WM
    cortex = 0.86 + 0.05 * _smooth_noise(rng, shape, 10 * unit)
    sulci = np.abs(_smooth_noise(rng, shape, 7 * unit))  # sulci along the zero-crossings, lined by cortex
    tissue[(radius < 1) & ((radius > cortex) | ((radius > 0.70) & (sulci < 0.25)))] = GM
    tissue[(radius < 1) & ((radius > 0.97) | ((radius > 0.74) & (sulci < 0.08)))] = CSF
    x = np.arange(shape[0], dtype=np.float32)[:, None, None]
    z = np.arange(shape[2], dtype=np.float32)[None, None, :]
    fissure = (np.abs(x - centre[0]) < max(0.6, 1.2 * unit)) & ((z > centre[2] + 0.35 * axes[2]) | (radius > 0.7))
    tissue[fissure & (radius < 1)] = CSF
    for side in (-1, 1):
        for offset, extent in (((0.12, -0.08, -0.10), (0.10, 0.14, 0.10)),  # thalamus
                               ((0.30, 0.12, -0.05), (0.06, 0.16, 0.12))):  # putamen
            _paint_ellipsoid(tissue, centre + np.array(offset) * axes * (side, 1, 1),
                             np.array(extent) * axes * rng.uniform(0.9, 1.1, 3), DEEP_GM, rng)
    atrophy = rng.uniform(0.7, 1.4)
    for side in (-1, 1):
        _paint_ellipsoid(tissue, centre + np.array([side * 0.10, 0.0, 0.12]) * axes,
                         np.array([0.07, 0.32, 0.12]) * axes * atrophy * rng.uniform(0.9, 1.1, 3), CSF, rng,
                         only=(WM, GM, DEEP_GM))
    return tissue, centre, axes


def _lobulated_distance(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray,
                        radius: float) -> np.ndarray:
    """Normalised distance of an irregular blob: union of an ellipsoid and 0-3 lobes, boundary perturbed."""
    axes = radius * rng.uniform(0.75, 1.3, 3)
    axes *= radius / np.prod(axes) ** (1 / 3)
    dist = _ellipsoid_radius(shape, centre, axes)
    for _ in range(int(rng.integers(0, 4))):
        lobe_centre = centre + _unit_vector(rng) * radius * rng.uniform(0.5, 0.9)
        dist = np.minimum(dist, _ellipsoid_radius(shape, lobe_centre, radius * rng.uniform(0.35, 0.7, 3)))
    return dist + rng.uniform(0.15, 0.3) * _smooth_noise(rng, shape, max(1.5, radius / 2.5))


def _lesion_labels(rng: np.random.Generator, dist: np.ndarray, cell: float, enhancing: bool,
                   necrosis: bool) -> np.ndarray:
    """BraTS labels of one lesion from its distance map (edema where < 1, then core, rim, necrosis)."""
    shape = dist.shape
    core_dist = dist * (1 + 0.15 * _smooth_noise(rng, shape, cell))
    core_radius = rng.uniform(0.35, 0.8)
    labels = np.where(dist < 1, np.uint8(2), np.uint8(0))
    core = (dist < 1) & (core_dist < core_radius)
    if not enhancing:
        labels[core] = 1  # non-enhancing tumour core
        return labels
    labels[core] = 4
    if necrosis:
        rim = core_radius * rng.uniform(0.25, 0.55) * np.maximum(1 + 0.6 * _smooth_noise(rng, shape, 2.0), 0.2)
        labels[core & (core_dist < core_radius - rim)] = 1
    return labels


def _lesion(rng: np.random.Generator, brain: np.ndarray, centre: np.ndarray, volume: float, enhancing: bool,
            necrosis: bool) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """One connected lesion of about ``volume`` brain voxels (fewer if the box lacks brain or specks are cut).

    Returns its box, labels in the box and the normalised distance map (< 1 inside the lesion).
    """
    radius = float((3 * volume / (4 * np.pi)) ** (1 / 3))
    box = _box(centre, 2.5 * radius + 2, brain.shape)
    local = centre - np.array([b.start for b in box])
    dist = _lobulated_distance(rng, _box_shape(box), local, radius)
    dist[~brain[box]] = np.inf
    k = max(1, int(min(round(volume), np.isfinite(dist).sum(), dist.size - 1)))
    ordered = np.partition(dist.ravel(), (k - 1, k))
    dist /= (ordered[k - 1] + min(ordered[k], 2 * ordered[k - 1])) / 2  # k voxels below 1
    components, n = ndimage.label(dist < 1)
    if n > 1:  # one connected lesion: drop the specks the boundary noise cut off
        largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
        dist[(components > 0) & (components != largest)] = 1.0
    return box, _lesion_labels(rng, dist, max(1.5, radius / 2.5), enhancing, necrosis), dist


def _lesion_centre(rng: np.random.Generator, brain: np.ndarray, centre: np.ndarray, axes: np.ndarray,
                   radius: float, near: tuple[np.ndarray, float] | None) -> tuple[np.ndarray, str]:
    """A lesion centre and its kind: a satellite next to ``near`` (centre, radius of the main lesion) if
    given and that spot is in the brain, else a random spot in the brain (the main lesion or a distant one)."""
    if near is not None:
        candidate = near[0] + _unit_vector(rng) * near[1] * rng.uniform(1.6, 2.6)
        inside = np.sqrt((((candidate - centre) / axes) ** 2).sum()) < 0.85
        if inside and brain[tuple(np.clip(np.rint(candidate).astype(int), 0, np.array(brain.shape) - 1))]:
            return candidate, "satellite"
    reach = np.clip(1 - 1.2 * radius / axes, 0.0, 1.0) * 0.8
    return centre + _unit_vector(rng) * rng.uniform() ** (1 / 3) * reach * axes, "distant"


def _tumour_model(rng: np.random.Generator, brain: np.ndarray, centre: np.ndarray,
                  axes: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels (0/1/2/4), tumour weight (1 in the core, fading edema) and a description of the tumour."""
    n_brain = int(brain.sum())
    total = n_brain * float(np.exp(rng.uniform(*np.log(WT_FRACTION_RANGE))))
    n_lesions = int(rng.choice(list(LESION_COUNT_PROBABILITY), p=list(LESION_COUNT_PROBABILITY.values())))
    enhancing = bool(rng.uniform() >= NO_ET_PROBABILITY)
    necrosis = enhancing and bool(rng.uniform() < NECROSIS_PROBABILITY_WITH_ET)
    shares = np.array([1.0] + [rng.uniform(*EXTRA_LESION_SHARE) for _ in range(n_lesions - 1)])
    volumes = np.maximum(total * shares / shares.sum(), MIN_LESION_VOXELS)
    edge_weight = rng.uniform(0.45, 0.75)  # edema contrast at its border, relative to its centre
    seg = np.zeros(brain.shape, dtype=np.uint8)
    weight = np.zeros(brain.shape, dtype=np.float32)
    main: tuple[np.ndarray, float] | None = None
    kinds = []
    for i, volume in enumerate(volumes):
        radius = float((3 * volume / (4 * np.pi)) ** (1 / 3))
        near = main if rng.uniform() < 0.6 else None
        lesion_centre, kind = _lesion_centre(rng, brain, centre, axes, radius, near)
        kinds.append("main" if i == 0 else kind)
        necrotic = necrosis and (i == 0 or rng.uniform() < 0.5)
        box, labels, dist = _lesion(rng, brain, lesion_centre, volume, enhancing, necrotic)
        main = main or (lesion_centre, radius)
        paint = (labels > 0) & ((seg[box] == 0) | (labels != 2))  # a core wins over another lesion's edema
        seg[box][paint] = labels[paint]
        ramp = edge_weight + (1 - edge_weight) * np.clip((1 - dist) / 0.4, 0, 1)
        weight[box][paint] = np.where(labels[paint] == 2, ramp[paint], 1.0)
    info = {"n_lesions": n_lesions, "lesion_kinds": kinds, "lesion_voxels": [int(round(v)) for v in volumes],
            "target_fraction": float(np.round(volumes).sum()) / n_brain,
            "wt_fraction": float((seg > 0).sum()) / n_brain,
            "labels": sorted(int(v) for v in np.unique(seg) if v), "enhancing": enhancing}
    return seg, weight, info


def _blobs(rng: np.random.Generator, tissue: np.ndarray, count: int, radius: tuple[float, float],
           allowed: tuple[int, ...]) -> np.ndarray:
    """Weights (0..1) of ``count`` small soft blobs centred on voxels of the ``allowed`` tissues."""
    weight = np.zeros(tissue.shape, dtype=np.float32)
    candidates = np.flatnonzero(np.isin(tissue, allowed))
    if candidates.size == 0:
        return weight
    for flat in rng.choice(candidates, size=count):
        centre = np.array(np.unravel_index(flat, tissue.shape), dtype=np.float32)
        r = rng.uniform(*radius)
        box = _box(centre, r + 1, tissue.shape)
        dist = _ellipsoid_radius(_box_shape(box), centre - [b.start for b in box], r * rng.uniform(0.6, 1.4, 3))
        np.maximum(weight[box], np.clip(1.5 * (1 - dist), 0, 1) * (tissue[box] > 0), out=weight[box])
    return weight


def _render(rng: np.random.Generator, tissue: np.ndarray, seg: np.ndarray, weight: np.ndarray,
            enhancing: bool, unit: float, fluid: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Four int16 images: textured tissue, blended tumour and look-alikes, blur, bias field, gain, Rician noise.

    ``fluid``: the intensities of the fluid codes in ``seg`` (from :func:`_add_fluid`, which drew them).
    """
    shape = tissue.shape
    brain = tissue > 0
    wmh = _blobs(rng, tissue, int(rng.integers(0, 7)), (1.5 * unit, 4 * unit), (WM,))
    vessels = _blobs(rng, tissue, int(rng.integers(2, 9)), (1.0 * unit, 2.5 * unit), (GM, CSF))
    healthy_texture = 1 + 0.03 * _smooth_noise(rng, shape, 2.0) + 0.04 * _smooth_noise(rng, shape, 6 * unit)
    tumour = np.flatnonzero(seg)
    tumour_texture = 1 + 0.12 * _smooth_noise(rng, shape, max(1.5, 3 * unit)).ravel()[tumour]
    w = weight.ravel()[tumour]
    core_name = {1: "necrosis" if enhancing else "non_enhancing", 2: "edema", 4: "enhancing"}
    # per case: noise level, gain (float64) and bias field; per modality below: a jitter of the noise level
    noise = rng.uniform(*NOISE_RANGE)
    gain = np.exp(rng.uniform(*np.log(GAIN_RANGE)))
    bias = _bias_field(rng, shape, rng.uniform(*BIAS_RANGE))[brain]
    images = np.zeros((len(MODALITIES),) + tuple(shape), dtype=np.int16)
    for m in range(len(MODALITIES)):
        jitter = rng.uniform(1 - HEALTHY_JITTER, 1 + HEALTHY_JITTER, 4)
        lut = np.array([0.0] + [REALISTIC_INTENSITY[t][m] for t in ("wm", "gm", "deep_gm", "csf")], np.float32)
        lut[1:] *= jitter
        clean = lut[tissue] * healthy_texture
        for name, blob in (("wmh", wmh), ("vessel", vessels)):
            value = REALISTIC_INTENSITY[name][m] * rng.uniform(1 - LESION_JITTER, 1 + LESION_JITTER)
            clean += blob * (value - clean)
        values = np.zeros(CYST + 1, dtype=np.float32)
        for label, name in core_name.items():
            values[label] = REALISTIC_INTENSITY[name][m] * rng.uniform(1 - LESION_JITTER, 1 + LESION_JITTER)
        for code, value in (fluid or {}).items():
            values[code] = value[m]
        flat = clean.reshape(-1)
        flat[tumour] += w * (values[seg.ravel()[tumour]] * tumour_texture - flat[tumour])
        clean = ndimage.gaussian_filter(clean, PARTIAL_VOLUME_SIGMA, truncate=3.0)
        sigma = np.float32(noise * gain * rng.uniform(0.85, 1.15))
        images[m][brain] = _acquire(rng, clean[brain], bias, gain, sigma)
    return images


# --------------------------------------------------------------------------- tasks: ids, label values, fluid

def _first_timepoint(task: str, index: int) -> int:
    """The case whose brain case ``index`` shares: itself, or for a second timepoint (every FOLLOW_UP_EVERY-th
    case of a non-default task) the case before it, so that timepoints of one patient look alike and splits
    that keep a patient's timepoints together are exercised.  The default task has one case per patient."""
    follow_up = task != DEFAULT_TASK and index % FOLLOW_UP_EVERY == FOLLOW_UP_EVERY - 1
    return index - 1 if follow_up else index


def case_id(index: int, task: str = DEFAULT_TASK) -> str:
    """Id (= folder name) of case ``index``: ``BraTS2021_{index:05d}`` for the default task, else
    ``BraTS-{TAG}-{patient:05d}-{timepoint:03d}`` with the TAG of the task's id pattern (GLI, MET, ...)."""
    if task == DEFAULT_TASK:
        return f"BraTS2021_{index:05d}"
    definition = synthetic_def(task)
    tag = re.search(r"BraTS-([A-Z]+)-", definition.case_pattern or "")
    if tag is None:
        raise ValueError(f"synthetic task {task!r}: no BraTS-TAG- in its case pattern {definition.case_pattern!r}")
    first = _first_timepoint(task, index)
    patient = first - (first + 1) // FOLLOW_UP_EVERY  # first timepoints are numbered 0, 1, 2, ... without gaps
    return f"BraTS-{tag[1]}-{patient:05d}-{index - first:03d}"


def _file_values(task: str) -> np.ndarray:
    """Lookup table: generator label code -> the task's file value (``write_back`` of the code's class)."""
    definition = synthetic_def(task)
    keys = [c.key for c in definition.scheme.classes]
    lut = np.zeros(CYST + 1, dtype=np.uint8)
    for code, names in CODE_CLASSES.items():
        for name in names:
            if name in keys:
                lut[code] = definition.write_back[keys.index(name) + 1]
    return lut


def _largest(mask: np.ndarray) -> np.ndarray | None:
    """The largest connected component of ``mask`` (None when it is empty)."""
    components, n = ndimage.label(mask)
    if n == 0:
        return None
    return components == np.argmax(np.bincount(components.ravel())[1:]) + 1


def _fluid_ellipsoid(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, radius: float,
                     irregularity: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """A roundish fluid region: its box and mask (an ellipsoid of about ``radius``, boundary perturbed)."""
    axes = radius * rng.uniform(0.85, 1.2, 3)
    axes *= radius / np.prod(axes) ** (1 / 3)
    box = _box(centre, 1.5 * radius + 1, shape)
    local = _box_shape(box)
    dist = _ellipsoid_radius(local, centre - np.array([b.start for b in box]), axes)
    return box, dist * (1 + irregularity * _smooth_noise(rng, local, max(2.0, radius / 2))) < 1


def _add_cavity(rng: np.random.Generator, seg: np.ndarray, brain: np.ndarray) -> int:
    """Paint a resection cavity (CAVITY) beside the main lesion; returns its voxels (0: no room for one).

    Its volume is 30-100% of the lesion's (radius >= 2 voxels); its centre is a brain voxel 0.3-0.8 radii
    from the lesion, deep enough in the brain that most of the cavity fits, so the cavity touches the lesion
    (or nearly: its boundary is irregular).  It is painted over healthy tissue only, never over tumour labels.
    """
    main = _largest(seg > 0)
    if main is None:
        return 0
    volume = main.sum() * rng.uniform(0.3, 1.0)
    radius = max(2.0, float((3 * volume / (4 * np.pi)) ** (1 / 3)))
    gap = ndimage.distance_transform_edt(~main)
    near = brain & (seg == 0) & (gap >= 0.3 * radius) & (gap <= 0.8 * radius)
    candidates = np.flatnonzero(near & (ndimage.distance_transform_edt(brain) >= 0.7 * radius))
    if candidates.size == 0:  # a small brain: take any spot beside the lesion
        candidates = np.flatnonzero(near)
        if candidates.size == 0:
            return 0
    centre = np.array(np.unravel_index(rng.choice(candidates), seg.shape), dtype=np.float32)
    box, cavity = _fluid_ellipsoid(rng, seg.shape, centre, radius, 0.1)
    cavity &= brain[box] & (seg[box] == 0)
    seg[box][cavity] = CAVITY
    return int(cavity.sum())


def _add_cyst(rng: np.random.Generator, seg: np.ndarray) -> int:
    """Paint a cyst (CYST) in the main tumour core; returns its voxels (0: the core is too small for one).

    A round region of 0.35-0.6 times the core's equivalent radius (>= 1.5 voxels) centred on a random core
    voxel: inside the core, or at its edge where it bulges into the edema around it (never out of the tumour).
    """
    core = _largest(np.isin(seg, (NECROSIS, ENHANCING)))
    if core is None or core.sum() < CYST_MIN_CORE:
        return 0
    radius = max(1.5, rng.uniform(0.35, 0.6) * float((3 * core.sum() / (4 * np.pi)) ** (1 / 3)))
    centre = np.array(np.unravel_index(rng.choice(np.flatnonzero(core)), seg.shape), dtype=np.float32)
    box, cyst = _fluid_ellipsoid(rng, seg.shape, centre, radius, 0.05)
    cyst &= seg[box] > 0
    seg[box][cyst] = CYST
    return int(cyst.sum())


def _add_fluid(seed: int, index: int, seg: np.ndarray, brain: np.ndarray, task: str) -> dict[int, np.ndarray]:
    """Paint the fluid structure the task's scheme labels into ``seg`` (generator codes, in place): a resection
    cavity (schemes with RC) or a tumour cyst (schemes with CC), in every case but each NO_FLUID_EVERY-th.

    Returns what was painted: code -> its relative intensity per modality (FLUID_INTENSITY, jittered).  It draws
    from a stream of its own, so the default task (no fluid) draws nothing and keeps its bytes, and a case of
    another task has the anatomy, tumour and acquisition of the default task's case (but for second timepoints).
    """
    keys = {c.key for c in synthetic_def(task).scheme.classes}
    code = CAVITY if "rc" in keys else CYST if "cc" in keys else None
    if code is None or index % NO_FLUID_EVERY == 1:
        return {}
    rng = np.random.default_rng([seed, index, 3])
    painted = _add_cavity(rng, seg, brain) if code == CAVITY else _add_cyst(rng, seg)
    if not painted:
        return {}
    return {code: np.asarray(FLUID_INTENSITY[code]) * rng.uniform(1 - FLUID_JITTER, 1 + FLUID_JITTER, 4)}


# --------------------------------------------------------------------------- one case, one data set

def synthesize_realistic_case(seed: int, index: int, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                              task: str = DEFAULT_TASK) -> tuple[np.ndarray, np.ndarray, dict]:
    """One realistic phantom: images (4, X, Y, Z) int16, seg (X, Y, Z) uint8 in the task's label values and a
    description.

    Promised, over many cases (tests/test_synthetic.py checks it; label numbers of the default task):

    - 1, 2 or 3 lesions (probabilities 0.55 / 0.30 / 0.15); each extra lesion is a small satellite
      next to the main one (60%, if that spot is in the brain) or a distant focus, with 3-25% of the
      main lesion's volume (at least 20 voxels);
    - whole tumour = 0.5% to 15% of the brain volume (log-uniform; overlapping lesions and the
      20-voxel minimum of a lesion move it slightly);
    - 20% of cases without enhancing tumour (no label 4: the core is non-enhancing, label 1); of the
      others, 75% have a necrotic centre (label 1) and the rest a solid enhancing core;
    - every lesion has edema (label 2) around its core.

    The description holds ``n_lesions``, ``lesion_kinds``, ``lesion_voxels``, ``target_fraction``,
    ``wt_fraction`` (measured, the tumour without a resection cavity), ``labels`` (the file values present,
    without 0), ``enhancing`` and ``fluid_voxels`` (of the cavity or cyst; 0 when there is none).
    """
    rng = np.random.default_rng([seed, index, 2])
    first = _first_timepoint(task, index)  # a second timepoint has the brain of its patient's first case
    tissue, centre, axes = _anatomy(rng if first == index else np.random.default_rng([seed, first, 2]), shape)
    seg, weight, info = _tumour_model(rng, tissue > 0, centre, axes)
    fluid = _add_fluid(seed, index, seg, tissue > 0, task)
    weight[seg >= CAVITY] = 1.0  # the fluid replaces the tissue (or the fading edema) where it lies
    images = _render(rng, tissue, seg, weight, info["enhancing"], float(axes.mean()) / 70, fluid)
    info["fluid_voxels"] = int((seg >= CAVITY).sum())
    seg = _file_values(task)[seg]
    info["labels"] = sorted(int(v) for v in np.unique(seg) if v)
    return images, seg, info


def synthesize_case(seed: int, index: int, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                    difficulty: str = DEFAULT_DIFFICULTY, task: str = DEFAULT_TASK) -> tuple[np.ndarray, np.ndarray]:
    """One phantom in nibabel (X, Y, Z) order: images (4, X, Y, Z) int16 (canonical modalities), seg uint8 in
    the label values of ``task``."""
    if difficulty == "easy":
        return _synthesize_easy(seed, index, shape, task)
    if difficulty == "realistic":
        return synthesize_realistic_case(seed, index, shape, task)[:2]
    raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")


def _write_nifti(data: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms((1.0, 1.0, 1.0))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def _manifest(n_cases: int, seed: int, shape: tuple[int, int, int], difficulty: str, task: str) -> dict:
    manifest = {"generator_version": GENERATOR_VERSION, "n_cases": n_cases, "seed": seed, "shape": list(shape),
                "difficulty": difficulty}
    if task != DEFAULT_TASK:  # the default's manifest stays as it was: data generated before tasks stays valid
        manifest["task"] = task
    return manifest


def _is_complete(root: Path, manifest: dict) -> bool:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return False
    try:
        if json.loads(path.read_text()) != manifest:
            return False
    except (OSError, ValueError):
        return False
    task = manifest.get("task", DEFAULT_TASK)
    return all((root / case_id(i, task)).is_dir() for i in range(manifest["n_cases"]))


def generate_synthetic_dataset(data_path: str | Path, n_cases: int = 20, seed: int = 0,
                               shape: tuple[int, int, int] = DEFAULT_SHAPE,
                               difficulty: str = DEFAULT_DIFFICULTY, task: str = DEFAULT_TASK) -> Path:
    """Write ``n_cases`` phantoms imitating ``task`` under ``data_path`` and return the folder of the cases.

    ``task`` ``"brats2021"`` (default): ``{data_path}/BRATS_SYNTHETIC/BraTS2021_Training_Data``, cases
    ``BraTS2021_00000 ...`` with ``_{t1,t1ce,t2,flair,seg}.nii.gz`` files, labels 0/1/2/4.  Another task of
    :data:`brats_data.definitions.SYNTHETIC_TASKS`: ``{data_path}/`` + ``synthetic_def(task).root``, cases
    ``BraTS-{TAG}-PPPPP-TTT`` with ``-{t1n,t1c,t2w,t2f,seg}.nii.gz`` files and the task's label values (see the
    module docstring).  Int16 images, uint8 labels, 1 mm spacing, ``shape`` in NIfTI (X, Y, Z) order.
    ``difficulty`` is ``"realistic"`` (default) or ``"easy"`` (the original cartoon phantoms).
    Deterministic: case i depends only on (seed, i, difficulty, task) and the bytes are identical between
    runs.  Idempotent: a folder already holding the same configuration (``synthetic_manifest.json``,
    which records the difficulty and, but for the default, the task) is left as is; a different one is
    replaced.  Generation happens in a temporary folder renamed into place under a file lock, so
    concurrent callers are safe.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes (X, Y, Z), each >= 16, got {shape}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    definition = synthetic_def(task)  # raises for an unknown task
    layout = definition.layout
    root = dataset_root(data_path, definition)
    manifest = _manifest(n_cases, seed, shape, difficulty, task)
    if _is_complete(root, manifest):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / ".synthetic.lock"):
        if _is_complete(root, manifest):  # another process finished meanwhile
            return root
        tmp = root.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            for index in range(n_cases):
                name = case_id(index, task)
                folder = tmp / name
                folder.mkdir(parents=True)
                images, seg = synthesize_case(seed, index, shape, difficulty, task)
                for modality, volume in zip(MODALITIES, images):
                    _write_nifti(volume, folder / layout.file_name(name, layout.suffix(modality)))
                _write_nifti(seg, folder / layout.file_name(name, layout.seg_suffix))
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
