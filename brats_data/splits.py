"""Patient-level, stratified train/val/test splits: an 80/10/10 hold-out or k-fold cross-validation.

- **Groups**: cases of one patient never cross a split or a fold. BraTS 2023 ids
  ``BraTS-GLI-PPPPP-TTT`` carry a timepoint: the patient is ``BraTS-GLI-PPPPP``. Other layouts: one
  case, one patient, unless a ``case_id,patient_id`` map says otherwise (``--patient_map``).
- **Strata**: each split (each fold) receives its share of every stratum: the grade where the layout
  has one (BraTS 2018 HGG/LGG) and whether the case has enhancing tumour, e.g. ``"LGG/no-ET"``.
  Per stratum, groups are shuffled with the seed and dealt out, so a split's count of a stratum is its
  fraction of that stratum rounded (within one case of the expected count).
- Deterministic per seed; the input order does not matter.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .cases import check_unique_ids

VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
_BRATS2023_ID = re.compile(r"^(BraTS-[A-Z]+-\d+)-\d+$")


def patient_id(case_id: str) -> str:
    """The patient of a case id: ``BraTS-GLI-00123-001`` -> ``BraTS-GLI-00123``; other ids are their own."""
    match = _BRATS2023_ID.match(case_id)
    return match.group(1) if match else case_id


def read_patient_map(path: str | Path, case_ids: Iterable[str]) -> dict[str, str]:
    """``case_id -> patient_id`` from a CSV with those two columns; every case must be in it."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"case_id", "patient_id"} <= set(rows[0]):
        raise ValueError(f"--patient_map {path}: needs a header with columns case_id,patient_id")
    mapping = {r["case_id"].strip(): r["patient_id"].strip() for r in rows}
    missing = sorted(set(case_ids) - set(mapping))
    if missing:
        raise ValueError(f"--patient_map {path}: {len(missing)} case(s) have no patient, e.g. {missing[:3]}")
    return mapping


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _grouped(case_ids: list[str], groups: Mapping[str, str] | None, strata: Mapping[str, str] | None
             ) -> dict[str, dict[str, list[str]]]:
    """stratum -> group -> its cases (a group's stratum is that of its first case)."""
    members: dict[str, list[str]] = {}
    for cid in case_ids:
        members.setdefault((groups or {}).get(cid, cid), []).append(cid)
    out: dict[str, dict[str, list[str]]] = {}
    for group, cases in sorted(members.items()):
        stratum = (strata or {}).get(cases[0], "all")
        out.setdefault(stratum, {})[group] = cases
    return out


def _shuffled(rng: np.random.Generator, items: list[str]) -> list[str]:
    return [items[i] for i in rng.permutation(len(items))]


def _take(groups: dict[str, list[str]], order: list[str], target: int) -> list[str]:
    """Groups from the front of ``order`` (removed from it) until they hold ``target`` cases."""
    taken, count = [], 0
    while order and count < target:
        group = order.pop(0)
        taken.append(group)
        count += len(groups[group])
    return taken


def _cases(groups_by_stratum: dict[str, dict[str, list[str]]], chosen: Iterable[str]) -> list[str]:
    every = {g: c for groups in groups_by_stratum.values() for g, c in groups.items()}
    return sorted(cid for g in chosen for cid in every[g])


def _fold(k: int, train: Iterable[str], val: Iterable[str], test: Iterable[str]) -> dict:
    return {"fold": k, "train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _holdout(by_stratum: dict[str, dict[str, list[str]]], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    test, val, train = [], [], []
    for stratum in sorted(by_stratum):
        groups = by_stratum[stratum]
        order = _shuffled(rng, sorted(groups))
        n = sum(len(c) for c in groups.values())
        test += _take(groups, order, _half_up(TEST_FRACTION * n))
        val += _take(groups, order, _half_up(VAL_FRACTION * n))
        train += order
    for part, donor in ((test, train), (val, train)):  # at least one group each, taken from train
        if not part and len(donor) > 1:
            part.append(donor.pop(0))
    if not (train and val and test):
        raise ValueError("A hold-out split needs at least 3 patients (train/val/test)")
    return [_fold(0, _cases(by_stratum, train), _cases(by_stratum, val), _cases(by_stratum, test))]


def _kfold(by_stratum: dict[str, dict[str, list[str]]], seed: int, n_folds: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    parts: list[list[str]] = [[] for _ in range(n_folds)]
    totals = [0] * n_folds
    for stratum in sorted(by_stratum):  # deal each stratum's groups to the folds holding fewest of it
        groups, counts = by_stratum[stratum], [0] * n_folds
        for group in _shuffled(rng, sorted(groups)):
            k = min(range(n_folds), key=lambda f: (counts[f], totals[f], f))
            parts[k].append(group)
            counts[k] += len(groups[group])
            totals[k] += len(groups[group])
    folds = []
    for k in range(n_folds):
        fold_rng = np.random.default_rng([seed, k])
        held_out = set(parts[k])
        rest = {s: {g: c for g, c in groups.items() if g not in held_out} for s, groups in by_stratum.items()}
        val, train = [], []
        for stratum in sorted(rest):
            n = sum(len(c) for c in by_stratum[stratum].values())
            order = _shuffled(fold_rng, sorted(rest[stratum]))
            val += _take(rest[stratum], order, _half_up(VAL_FRACTION * n))
            train += order
        if not parts[k] or not val or not train:
            raise ValueError(f"{n_folds}-fold cross-validation needs at least one test, val and train patient "
                             "per fold; too few patients (use more cases or fewer folds)")
        folds.append(_fold(k, _cases(by_stratum, train), _cases(by_stratum, val), _cases(by_stratum, parts[k])))
    return folds


def make_splits(case_ids: Iterable[str], seed: int, use_5fold: bool = False, n_folds: int = 5,
                groups: Mapping[str, str] | None = None, strata: Mapping[str, str] | None = None) -> dict:
    """Split case ids by patient group and stratum, deterministically for a seed.

    Hold-out: one fold (k=0) with ~80% train, 10% val, 10% test of every stratum (at least one patient
    each). K-fold (``use_5fold=True``; ``n_folds`` folds): every patient is tested exactly once, each
    fold's test part holding an even share of every stratum; val is 10% of every stratum drawn from the
    rest, train the remainder.

    Args:
        groups: case id -> patient (default: :func:`patient_id` of the id).
        strata: case id -> stratum label (default: one stratum).

    Returns:
        ``{"seed", "scheme": "holdout" | "5fold", "folds": [{"fold", "train", "val", "test"}],
        "cases": {case_id: {"group", "stratum"}}}`` with sorted id lists (``"n_folds"`` for k-fold).

    Raises:
        ValueError: duplicate ids, too few patients, or ``n_folds < 2``.
    """
    ids = sorted(case_ids)
    check_unique_ids(ids, "the split's case ids")
    groups = {cid: (groups or {}).get(cid) or patient_id(cid) for cid in ids}
    strata = {cid: (strata or {}).get(cid, "all") for cid in ids}
    by_stratum = _grouped(ids, groups, strata)
    record = {cid: {"group": groups[cid], "stratum": strata[cid]} for cid in ids}
    if not use_5fold:
        return {"seed": seed, "scheme": "holdout", "folds": _holdout(by_stratum, seed), "cases": record}
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    return {"seed": seed, "scheme": "5fold", "n_folds": n_folds, "folds": _kfold(by_stratum, seed, n_folds),
            "cases": record}


def stratified_subset(case_ids: Iterable[str], n: int, seed: int = 0, strata: Mapping[str, str] | None = None,
                      groups: Mapping[str, str] | None = None) -> list[str]:
    """``n`` cases (whole patients, so possibly a few more) drawn with ``seed``, each stratum in proportion;
    the same subset whatever the input order. ``--max_samples`` uses it."""
    ids = sorted(case_ids)
    if n >= len(ids):
        return ids
    groups = {cid: (groups or {}).get(cid) or patient_id(cid) for cid in ids}
    by_stratum = _grouped(ids, groups, strata)
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        size = sum(len(c) for c in members.values())
        chosen += _take(members, _shuffled(rng, sorted(members)), _half_up(n * size / len(ids)))
    return _cases(by_stratum, chosen)
