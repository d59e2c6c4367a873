"""The BraTS data layer: discovery, validation, normalisation, synthetic data, splits, cache, datasets.

This ``__init__`` is the package's public API (the suite imports from here; ``data_loader.py`` at the
repository root re-exports it for scripts outside the project). Modules:

- ``cases``: layouts, case discovery (also of new scans to predict), validation, label mapping, ``load_case``
- ``dataset_json``: MSD / nnU-Net ``dataset.json`` channels and labels mapped to the suite's by name
- ``synthetic``: the deterministic synthetic BraTS generator
- ``splits``: patient-level hold-out and k-fold splits
- ``cache``: the preprocessed, memory-mapped per-case cache, and the same preprocessing of new cases
- ``datasets``: 3D patch and 2D slice torch datasets reading the cache

Axis order is (Z, Y, X) everywhere (nibabel arrays transposed with ``.transpose(2, 1, 0)``); labels are
model classes 0..3 (BraTS 4 -> 3; MSD / nnU-Net labels mapped by their dataset.json names).
"""

from utils.labels import MODALITIES

from .cache import PreprocessedCache, preprocess_case, preprocess_image
from .cases import (
    DATASET_VERSIONS,
    BadCaseError,
    CaseRecord,
    check_unique_ids,
    dataset_root,
    discover_cases,
    find_input_cases,
    load_case,
    map_labels,
    normalize_modality,
    unmap_labels,
    validate_case,
)
from .dataset_json import DatasetJsonError
from .datasets import OUTSIDE_LABEL, SAMPLINGS, BatchPositionSampler, PatchDataset, SliceDataset, modality_indices
from .splits import make_splits
from .synthetic import generate_synthetic_dataset

__all__ = [
    "DATASET_VERSIONS",
    "MODALITIES",
    "OUTSIDE_LABEL",
    "SAMPLINGS",
    "BadCaseError",
    "BatchPositionSampler",
    "CaseRecord",
    "DatasetJsonError",
    "PatchDataset",
    "PreprocessedCache",
    "SliceDataset",
    "check_unique_ids",
    "dataset_root",
    "discover_cases",
    "find_input_cases",
    "generate_synthetic_dataset",
    "load_case",
    "make_splits",
    "map_labels",
    "modality_indices",
    "normalize_modality",
    "preprocess_case",
    "preprocess_image",
    "unmap_labels",
    "validate_case",
]
