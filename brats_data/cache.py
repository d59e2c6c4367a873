"""Preprocessed per-case cache: normalised float16 volumes cropped to brain + tumour, memory-mapped.

Layout: ``{cache_dir}/{case_id}/image.npy`` (float16, (4, Z, Y, X), canonical modalities),
``label.npy`` (uint8 model classes), ``fg.npy`` (int32 (N, 3) coordinates of the foreground voxels in the
crop, class by class (1, 2, ...), at most ``MAX_FOREGROUND_POINTS`` per class evenly subsampled; how many
of each class: ``meta.json``'s ``fg_points``), ``mask.npy`` (uint8 brain mask: nnU-Net's non-zero mask,
any modality != 0 with holes filled) and ``meta.json``.  A case is rebuilt when
its key changes: a hash of the source paths, sizes and mtimes, the preprocessing parameters and
``CACHE_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import binary_fill_holes
from tqdm import tqdm

from .cases import (
    CACHE_FILES,
    CACHE_LOCK,
    CLIP_PERCENTILES,
    BadCaseError,
    CaseRecord,
    check_unique_ids,
    normalize_modality,
    read_case,
    read_images,
    validate_case,
)
from .locking import file_lock

CACHE_VERSION = 2  # part of every case's key: bump it when the preprocessing changes
MAX_FOREGROUND_POINTS = 100_000
PREPROCESSING = {
    "clip_percentiles": list(CLIP_PERCENTILES),
    "image_dtype": "float16",
    "crop": "bbox(any modality != 0 or label > 0)",
    "max_foreground_points": MAX_FOREGROUND_POINTS,
    "foreground_points": "per class",
    "brain_mask": "fill_holes(any modality != 0)",
}
# a cached case's files; case discovery (cases.is_data_folder) recognises a cache by CACHE_FILES (those every
# cache version has) and its lock
FILES = (*CACHE_FILES, "mask.npy")


def case_key(case: CaseRecord) -> str:
    """Hash of the case's source files (path, size, mtime), the preprocessing and ``CACHE_VERSION``."""
    sources = []
    for path in case.files():
        try:
            stat = path.stat()
            sources.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        except OSError:
            sources.append([str(path), None, None])
    # "layout": the labels' description (BraTS 2018-2023 and synthetic: their naming, as before the data set records)
    payload = {"version": CACHE_VERSION, "layout": case.dataset.cache_label_key(), "sources": sources,
               "preprocessing": PREPROCESSING}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def crop_box(image: np.ndarray, label: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of (any channel of ``image`` non-zero) or (``label`` > 0); the whole volume if empty."""
    mask = (image != 0).any(axis=0) | (label > 0)
    if not mask.any():
        return tuple(slice(0, s) for s in label.shape)
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """nnU-Net's non-zero mask of an image (C, Z, Y, X): any channel != 0, holes filled
    (``nnunetv2.preprocessing.cropping.cropping.create_nonzero_mask``); bool (Z, Y, X)."""
    return binary_fill_holes((np.asarray(image) != 0).any(axis=0))


def foreground_points(label: np.ndarray, num_classes: int, limit: int = MAX_FOREGROUND_POINTS
                      ) -> tuple[np.ndarray, list[int]]:
    """The (N, 3) int32 coordinates of the voxels of classes 1 .. num_classes - 1, class by class, each class
    evenly subsampled to at most ``limit`` points (a class present keeps at least one), and the number of
    points of each class (index 0, background: 0)."""
    parts = [_subsample(np.argwhere(label == c).astype(np.int32), limit) for c in range(1, num_classes)]
    points = np.concatenate(parts) if parts else np.zeros((0, 3), np.int32)
    return points.reshape(-1, 3), [0] + [len(p) for p in parts]


def _subsample(points: np.ndarray, limit: int) -> np.ndarray:
    if len(points) <= limit:
        return points
    return points[np.linspace(0, len(points) - 1, limit).round().astype(np.int64)]


def preprocess_image(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """The cache's preprocessing of one case's image (4, Z, Y, X): cropped to :func:`crop_box`, each
    modality normalised (:func:`normalize_modality`), stored as float16; returns it and the box.
    Used by the cache and by prediction of new cases, so both see the same input."""
    box = crop_box(image, label)
    return np.stack([normalize_modality(volume[box]) for volume in image]).astype(np.float16), box


def preprocess_case(case: CaseRecord) -> tuple[np.ndarray, tuple[slice, ...], tuple[int, ...]]:
    """A new case (no segmentation needed) as the cache stores one: the image (4, Z, Y, X) cropped to the
    brain and normalised per modality (:func:`preprocess_image`), the crop box, the original (Z, Y, X) shape.

    The segmentation, if any, is not read: the box is the brain's (the cache's also holds the tumour, which
    lies inside the brain in BraTS data)."""
    raw = read_images(case)
    image, box = preprocess_image(raw.image, raw.label)
    return image, box, raw.label.shape


def build_case(case: CaseRecord, cache_dir: str | Path) -> None:
    """Preprocess one case into ``{cache_dir}/{case_id}`` (temporary folder, then atomic rename).

    Raises:
        BadCaseError: the case's data are missing, unreadable or invalid.
    """
    cache_dir = Path(cache_dir)
    key = case_key(case)
    raw = read_case(case)
    image, box = preprocess_image(raw.image, raw.label)
    label = np.ascontiguousarray(raw.label[box])
    foreground, fg_points = foreground_points(label, case.dataset.num_classes)
    mask = np.ascontiguousarray(brain_mask(raw.image)[box]).astype(np.uint8)
    meta = {
        "case_id": case.case_id,
        "key": key,
        "layout": case.dataset.cache_label_key(),
        "dataset": case.dataset.name,
        "spacing": list(raw.spacing),
        "original_shape": list(raw.label.shape),
        "bbox": [[b.start, b.stop] for b in box],
        "affine": raw.affine.tolist(),
        "source_files": {name: str(p) for name, p in zip((*case.image_paths, "seg"), case.files())},
        "n_foreground": int((label > 0).sum()),
        "class_voxels": np.bincount(label.reshape(-1), minlength=case.dataset.num_classes).tolist(),
        "fg_points": fg_points,
        "cache_version": CACHE_VERSION,
    }
    tmp = cache_dir / f".tmp-{case.case_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "image.npy", image)
        np.save(tmp / "label.npy", label)
        np.save(tmp / "fg.npy", foreground)
        np.save(tmp / "mask.npy", mask)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        final = cache_dir / case.case_id
        if final.exists():  # stale: move aside, then swap in the new folder
            old = cache_dir / f".old-{case.case_id}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_worker(case: CaseRecord, cache_dir: str) -> BadCaseError | None:
    try:
        build_case(case, cache_dir)
    except BadCaseError as exc:
        return exc
    return None


CROP_SHARE = 0.6  # BraTS: the brain + tumour box is ~40-60% of the 240x240x155 volume


def estimated_bytes(cases: Sequence[CaseRecord]) -> int:
    """Cache size of ``cases`` from their NIfTI headers: 4 float16 channels and a uint8 label per voxel,
    times :data:`CROP_SHARE` for the crop."""
    voxels = sum(int(np.prod(nib.load(str(c.label_path)).shape[:3])) for c in cases)
    return int(voxels * (4 * 2 + 1) * CROP_SHARE)


def check_disk_space(cache_dir: Path, cases: Sequence[CaseRecord], margin: float = 1.1) -> None:
    """OSError naming the folder, the need and the free space when the cases will not fit."""
    if not cases:
        return
    need, free = estimated_bytes(cases) * margin, shutil.disk_usage(cache_dir).free
    if need > free:
        raise OSError(f"not enough disk space for the preprocessing cache in {cache_dir}: {len(cases)} case(s) "
                      f"need about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free (use --cache_dir elsewhere)")


class PreprocessedCache:
    """Per-case preprocessed arrays under ``cache_dir``, memory-mapped on access.

    Args:
        cache_dir: folder holding one sub-folder per case (created if needed).
        cases: the cases this cache serves (``discover_cases`` output).
    """

    def __init__(self, cache_dir: str | Path, cases: Sequence[CaseRecord]):
        self.cache_dir = Path(cache_dir)
        check_unique_ids([c.case_id for c in cases], self.cache_dir)
        self.cases = {c.case_id: c for c in sorted(cases, key=lambda c: c.case_id)}
        self.errors: list[BadCaseError] = []
        self.built_case_ids: list[str] = []  # cases (re)built by the last build() of this object

    @property
    def case_ids(self) -> list[str]:
        """Sorted ids of the usable cases (those that failed the last ``build`` are excluded)."""
        bad = {e.case_id for e in self.errors}
        return [c for c in self.cases if c not in bad]

    def case_dir(self, case_id: str) -> Path:
        return self.cache_dir / case_id

    def is_fresh(self, case_id: str) -> bool:
        """Whether the cached folder exists and was built from the current sources and parameters."""
        folder = self.case_dir(case_id)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        return meta.get("key") == case_key(self.cases[case_id]) and all((folder / f).is_file() for f in FILES)

    def build(self, num_workers: int = 1, progress: bool = True, skip_bad_cases: bool = False) -> list[BadCaseError]:
        """Build every missing or stale case; idempotent and safe when several processes call it.

        The whole build holds an exclusive lock on ``{cache_dir}/.lock``; cases are written to a
        temporary folder and renamed into place, so a finished case is never rewritten by a second
        process (it finds the case fresh once it gets the lock).  First every stale case gets the
        cheap header checks (:func:`validate_case`), in sorted order; then the remaining stale cases
        are built (over ``num_workers`` processes when > 1), which also checks the voxel data.

        Returns:
            The errors of the bad cases (empty when all are good); those cases are excluded from
            :attr:`case_ids`.

        Raises:
            BadCaseError: without ``skip_bad_cases``, the first bad case in sorted order: a header
                error is raised before anything is built; a data error after all other stale cases
                have been built (so a rerun after fixing it only builds that case).
        """
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        errors: dict[str, BadCaseError] = {}
        with file_lock(self.cache_dir / CACHE_LOCK):
            stale = [cid for cid in self.cases if not self.is_fresh(cid)]
            for cid in stale:
                try:
                    validate_case(self.cases[cid])
                except BadCaseError as exc:
                    if not skip_bad_cases:
                        raise
                    errors[cid] = exc
            todo = [cid for cid in stale if cid not in errors]
            check_disk_space(self.cache_dir, [self.cases[cid] for cid in todo])
            bar = tqdm(total=len(todo), desc="preprocessing cases", unit="case", disable=not progress or not todo)
            if num_workers > 1 and len(todo) > 1:
                with ProcessPoolExecutor(max_workers=min(num_workers, len(todo))) as pool:
                    futures = {cid: pool.submit(_build_worker, self.cases[cid], str(self.cache_dir)) for cid in todo}
                    results = {}
                    for cid, future in futures.items():
                        results[cid] = future.result()
                        bar.update()
            else:
                results = {}
                for cid in todo:
                    results[cid] = _build_worker(self.cases[cid], self.cache_dir)
                    bar.update()
            bar.close()
        errors.update({cid: exc for cid, exc in results.items() if exc is not None})
        self.built_case_ids = [cid for cid in todo if results[cid] is None]
        self.errors = [errors[cid] for cid in sorted(errors)]
        if self.errors and not skip_bad_cases:
            raise self.errors[0]
        return list(self.errors)

    def _path(self, case_id: str, name: str) -> Path:
        path = self.case_dir(case_id) / name
        if not path.is_file():
            raise FileNotFoundError(f"Case {case_id!r} is not in the cache {self.cache_dir} ({name} missing); "
                                    "call build() first")
        return path

    def _load(self, case_id: str, name: str) -> np.ndarray:
        return np.load(self._path(case_id, name), mmap_mode="r")

    def image(self, case_id: str) -> np.ndarray:
        """(4, Z, Y, X) float16 normalised image, cropped, memory-mapped (read-only)."""
        return self._load(case_id, "image.npy")

    def label(self, case_id: str) -> np.ndarray:
        """(Z, Y, X) uint8 model classes, cropped, memory-mapped (read-only)."""
        return self._load(case_id, "label.npy")

    def foreground(self, case_id: str) -> np.ndarray:
        """(N, 3) int32 (z, y, x) coordinates of label > 0 voxels in the crop (N may be 0), class by class:
        the first ``foreground_points(case_id)[1]`` are class 1, the next ``[2]`` class 2, and so on."""
        return self._load(case_id, "fg.npy")

    def foreground_points(self, case_id: str) -> list[int]:
        """How many of :meth:`foreground`'s points belong to each class (index 0, background: 0)."""
        return [int(n) for n in self.meta(case_id)["fg_points"]]

    def mask(self, case_id: str) -> np.ndarray:
        """(Z, Y, X) uint8 brain mask (1 inside), cropped, memory-mapped: nnU-Net's non-zero mask (any modality
        != 0, holes filled), the region its z-scoring and its training augmentation (image 0 outside) use."""
        return self._load(case_id, "mask.npy")

    def meta(self, case_id: str) -> dict:
        """The case's ``meta.json``: case_id, key, spacing, original_shape, bbox, affine, source_files."""
        return json.loads(self._path(case_id, "meta.json").read_text())

    def class_voxels(self, case_id: str) -> list[int]:
        """Voxels per model class in the case's label (from ``meta.json``; counted for older caches)."""
        counts = self.meta(case_id).get("class_voxels")
        if counts is None:
            counts = np.bincount(np.asarray(self.label(case_id)).reshape(-1),
                                 minlength=self.cases[case_id].dataset.num_classes).tolist()
        return [int(c) for c in counts]

    def spacing(self, case_id: str) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm."""
        return tuple(self.meta(case_id)["spacing"])
