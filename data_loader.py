"""BraTS data layer: discovery, validation, normalisation, synthetic data, splits, cache, datasets.

The public names of ``docs/INTERFACES.md``; the implementation lives in the ``brats_data`` package.

Typical use::

    cases = discover_cases(data_path, "brats2021", max_samples=None)   # sorted by case id
    splits = make_splits([c.case_id for c in cases], seed=24)
    cache = PreprocessedCache(cache_dir, cases)
    errors = cache.build(num_workers=4, skip_bad_cases=True)          # BadCaseError list
    train = PatchDataset(cache, splits["folds"][0]["train"], ("t1ce", "flair"), (128, 128, 128), 250)

Axis order is (Z, Y, X) everywhere (nibabel arrays transposed with ``.transpose(2, 1, 0)``), labels
are model classes 0..3 (BraTS 4 -> 3; MSD / nnU-Net labels mapped by their dataset.json names), and ``--max_samples N`` keeps the first N cases in sorted
case-id order.
"""

from brats_data.cache import PreprocessedCache
from brats_data.cases import (
    DATASET_VERSIONS,
    BadCaseError,
    CaseRecord,
    dataset_root,
    discover_cases,
    load_case,
    map_labels,
    normalize_modality,
    validate_case,
)
from brats_data.dataset_json import DatasetJsonError
from brats_data.datasets import PatchDataset, SliceDataset, modality_indices
from brats_data.splits import make_splits
from brats_data.synthetic import generate_synthetic_dataset
from utils.labels import MODALITIES

__all__ = [
    "DATASET_VERSIONS",
    "MODALITIES",
    "BadCaseError",
    "CaseRecord",
    "DatasetJsonError",
    "PatchDataset",
    "PreprocessedCache",
    "SliceDataset",
    "dataset_root",
    "discover_cases",
    "generate_synthetic_dataset",
    "load_case",
    "make_splits",
    "map_labels",
    "modality_indices",
    "normalize_modality",
    "validate_case",
]
