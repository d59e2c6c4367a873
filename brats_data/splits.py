"""Patient-level train/val/test splits: an 80/10/10 hold-out or k-fold cross-validation."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

VAL_FRACTION = 0.1
TEST_FRACTION = 0.1


def _fold(k: int, train: Iterable[str], val: Iterable[str], test: Iterable[str]) -> dict:
    return {"fold": k, "train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _n_of(fraction: float, n: int) -> int:
    return max(1, int(round(fraction * n)))


def make_splits(case_ids: Iterable[str], seed: int, use_5fold: bool = False, n_folds: int = 5) -> dict:
    """Split case ids by patient, deterministically for a seed (the input order does not matter).

    Hold-out: one fold (k=0) with 80% train, 10% val, 10% test (at least one case each; needs >= 3
    cases).  K-fold (``use_5fold=True``; ``n_folds`` folds, 5 by default): fold k tests the k-th of
    ``n_folds`` near-equal parts of a seeded permutation, so every case is tested exactly once; val
    is drawn from the remaining cases (10% of all cases, at least one) and train is the rest.

    Returns:
        ``{"seed": seed, "scheme": "holdout" | "5fold", "folds": [{"fold", "train", "val", "test"}]}``
        with sorted id lists (the scheme is named ``"5fold"`` whatever ``n_folds`` is; ``"n_folds"``
        is added for k-fold).

    Raises:
        ValueError: duplicate ids, too few cases, or ``n_folds < 2``.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("case_ids contain duplicates; each patient must appear once")
    n = len(ids)
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(n)]
    n_val = _n_of(VAL_FRACTION, n)
    if not use_5fold:
        if n < 3:
            raise ValueError(f"A hold-out split needs at least 3 cases (train/val/test), got {n}")
        n_test = _n_of(TEST_FRACTION, n)
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        return {"seed": seed, "scheme": "holdout", "folds": [_fold(0, train, val, test)]}
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    parts = np.array_split(np.arange(n), n_folds)
    largest = max(len(p) for p in parts)
    if n < n_folds or n - largest - n_val < 1:
        raise ValueError(f"{n_folds}-fold cross-validation needs at least one test, val and train case per "
                         f"fold; {n} cases are too few (use more cases or fewer folds)")
    folds = []
    for k, part in enumerate(parts):
        test = [order[i] for i in part]
        rest = [order[i] for i in range(n) if not part[0] <= i <= part[-1]]
        pick = np.random.default_rng([seed, k]).permutation(len(rest))
        val = [rest[i] for i in pick[:n_val]]
        train = [rest[i] for i in pick[n_val:]]
        folds.append(_fold(k, train, val, test))
    return {"seed": seed, "scheme": "5fold", "n_folds": n_folds, "folds": folds}
