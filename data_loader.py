"""Public facade of the BraTS data layer for scripts outside the project (``import data_loader as dl``).

It re-exports the public API of the ``brats_data`` package (its ``__init__``), which the suite itself
imports. Typical use::

    cases = discover_cases(data_path, "brats2021")                     # sorted by case id
    splits = make_splits([c.case_id for c in cases], seed=24)
    cache = PreprocessedCache(cache_dir, cases)
    errors = cache.build(num_workers=4, skip_bad_cases=True)          # BadCaseError list
    train = PatchDataset(cache, splits["folds"][0]["train"], ("t1ce", "flair"), (128, 128, 128), 250)

Axis order is (Z, Y, X) everywhere (nibabel arrays transposed with ``.transpose(2, 1, 0)``) and labels
are model classes 0..3 (BraTS 4 -> 3; MSD / nnU-Net labels mapped by their dataset.json names). The
run's ``--max_samples N`` is a seeded, stratified subset of whole patients (``experiment/data.py``);
``discover_cases(..., max_samples=N)`` keeps the first N cases in sorted case-id order.
"""

from brats_data import *  # noqa: F403  (the facade is the package's public API)
from brats_data import __all__  # noqa: F401
