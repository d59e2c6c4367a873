"""Merge run folders trained in separate jobs into one comparison (``python -m visualization``).

    python -m visualization RUN_DIR [RUN_DIR ...] --output DIR

The per-unit tables of the runs are concatenated (``integrated_experiment_results.csv``,
``per_case_results.csv``, ``all_epochs_results.csv``, ``modality_contributions.csv``,
``stage_wise_pam_results.csv``: first run's rows of a model win; ``failed_runs.csv``,
``skipped_cases.csv``) with a ``source_run`` column, and DIR gets them plus ``model_comparison.csv``,
``statistical_tests.csv``, ``ranking.csv`` (the same code as the end of a run:
``experiment.run_folder.write_comparison_files``), every chart, ``splits.json`` (the seeds of all runs),
``merged_runs.json`` (the sources and their ``config.json`` records, and ``missing_units``: the units of the
runs' experiments that none of them finished; the shards of a sweep merge into the whole experiment when none
is missing, a shard left out or a failed unit is listed) and ``report.html``. Refused
(:class:`MergeError`): a folder without results or splits, the same (model, seed, fold) in two runs, or a
seed whose test splits differ between two runs that both hold results of it (paired comparisons need the
same test cases).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from experiment.config import load_run_config
from experiment.run_folder import (
    CONFIG_JSON,
    EPOCHS_CSV,
    FAILED_CSV,
    MODALITY_CSV,
    PER_CASE_CSV,
    RESULTS_CSV,
    SKIPPED_CSV,
    SPLITS_JSON,
    STAGE_PAM_CSV,
    UNIT_COLUMNS,
    UnitKey,
    write_comparison_files,
)
from experiment.sharding import experiment_units
from utils.io import read_csv, read_json, write_csv, write_json
from visualization.charts import make_all_plots
from visualization.report import MERGED_JSON, SOURCE_COLUMN, write_report

UNIT_TABLES = (RESULTS_CSV, PER_CASE_CSV, EPOCHS_CSV, MODALITY_CSV)
RECORD_TABLES = (FAILED_CSV, SKIPPED_CSV)  # each run's failed units and skipped cases, concatenated


class MergeError(ValueError):
    """The run folders cannot be merged into one comparison (the message says why)."""


def _read(path: Path) -> pd.DataFrame | None:
    table = read_csv(path)
    return None if table.empty else table


def _test_splits(splits: dict[str, Any], seed: int) -> dict[int, list[str]] | None:
    entry = splits.get(str(seed))
    if entry is None:
        return None
    return {int(f["fold"]): sorted(map(str, f["test"])) for f in entry.get("folds", [])}


def _load_run(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise MergeError(f"{path} is not a directory; pass run folders (integrated_experiment_results_*)")
    results = _read(path / RESULTS_CSV)
    if results is None or results.empty:
        raise MergeError(f"{path} has no finished units ({RESULTS_CSV} missing or empty)")
    if not (path / SPLITS_JSON).is_file():
        raise MergeError(f"{path} has no {SPLITS_JSON}; the test splits of its seeds cannot be checked")
    config = read_json(path / CONFIG_JSON) if (path / CONFIG_JSON).is_file() else {}
    config = config if isinstance(config, dict) else {}
    return {"path": path, "results": results, "splits": json.loads((path / SPLITS_JSON).read_text()),
            "config": config,
            "tables": {name: _read(path / name) for name in UNIT_TABLES[1:] + RECORD_TABLES + (STAGE_PAM_CSV,)},
            "dataset": _dataset_identity(config.get("config", {}))}


def _dataset_identity(config: dict[str, Any]) -> tuple[str, str] | None:
    """(data set, its classes) of a run's configuration; None for a run folder without config.json."""
    if not config:
        return None
    dataset = config.get("dataset") or {}
    classes = ",".join(c[0] for c in dataset.get("scheme", {}).get("classes", [])) or "ncr,ed,et"
    return str(config.get("dataset_version")), classes


def check_mergeable(runs: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`MergeError` on a (model, seed, fold) present in two runs, or on a seed whose test
    splits differ between runs that both hold results of it, or on runs of different data sets."""
    known = [r for r in runs if r["dataset"] is not None]
    for run in known[1:]:
        if run["dataset"] != known[0]["dataset"]:
            raise MergeError(f"{run['path']} is a run on {run['dataset'][0]} (classes {run['dataset'][1]}) and "
                             f"{known[0]['path']} on {known[0]['dataset'][0]} (classes {known[0]['dataset'][1]}); "
                             "merge runs of one data set")
    owner: dict[tuple[str, int, int], Path] = {}
    for run in runs:
        for model, seed, fold in run["results"][UNIT_COLUMNS].itertuples(index=False):
            unit = (str(model), int(seed), int(fold))
            if unit in owner:
                raise MergeError(f"model {unit[0]} seed {unit[1]} fold {unit[2]} is in both {owner[unit]} and "
                                 f"{run['path']}; merge each unit once (leave one of the runs out)")
            owner[unit] = run["path"]
    seeds: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        for seed in sorted({int(s) for s in run["results"]["seed"]}):
            seeds.setdefault(seed, []).append(run)
    for seed, holders in seeds.items():
        first = holders[0]
        reference = _test_splits(first["splits"], seed)
        for other in holders[1:]:
            splits = _test_splits(other["splits"], seed)
            if reference is None or splits is None:
                missing = first["path"] if reference is None else other["path"]
                raise MergeError(f"seed {seed}: {missing / SPLITS_JSON} has no split of this seed")
            if splits != reference:
                folds = sorted(k for k in set(reference) | set(splits) if reference.get(k) != splits.get(k))
                raise MergeError(f"seed {seed}: the test split differs between {first['path']} and {other['path']} "
                                 f"(fold(s) {folds}); paired comparisons need the same test cases: merge runs "
                                 "made with the same data, seeds and --use_5fold")


def expected_units(paths: Sequence[Path]) -> list[UnitKey] | None:
    """The units of the experiments the runs belong to (every shard's, for a shard), from their config.json;
    ``None`` when a run has no readable configuration."""
    units: dict[UnitKey, None] = {}
    for path in paths:
        try:
            cfg = load_run_config(path)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        units.update(dict.fromkeys(experiment_units(cfg)))
    return list(units)


def merge_runs(run_dirs: Sequence[str | Path], output: str | Path) -> list[Path]:
    """Merge ``run_dirs`` into ``output`` (created): tables, comparison, statistics, ranking, charts.
    Returns the written files. Raises :class:`MergeError` (module docstring)."""
    if not run_dirs:
        raise MergeError("no run folder given")
    paths = [Path(p) for p in run_dirs]
    if len({p.resolve() for p in paths}) != len(paths):
        raise MergeError("a run folder is given twice")
    output = Path(output)
    if output.resolve() in {p.resolve() for p in paths}:
        raise MergeError(f"--output {output} is one of the run folders; write the merge to a new folder")
    runs = [_load_run(p) for p in paths]
    check_mergeable(runs)
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()

    tables: dict[str, pd.DataFrame] = {
        RESULTS_CSV: concat([r["results"].assign(**{SOURCE_COLUMN: str(r["path"])}) for r in runs])}
    for name in UNIT_TABLES[1:] + RECORD_TABLES:
        tables[name] = concat([r["tables"][name].assign(**{SOURCE_COLUMN: str(r["path"])})
                               for r in runs if r["tables"][name] is not None])
    stage = concat([r["tables"][STAGE_PAM_CSV].assign(**{SOURCE_COLUMN: str(r["path"])})
                    for r in runs if r["tables"][STAGE_PAM_CSV] is not None])
    if not stage.empty:  # measured once per model: the first run that measured a model gives its rows
        stage = stage[stage[SOURCE_COLUMN] == stage.groupby("model", sort=False)[SOURCE_COLUMN].transform("first")]
    tables[STAGE_PAM_CSV] = stage
    for name, df in tables.items():
        if not df.empty:
            write_csv(output / name, df)
            written.append(output / name)
    splits: dict[str, Any] = {}
    for run in runs:
        for seed, entry in run["splits"].items():
            splits.setdefault(seed, entry)
    write_json(output / SPLITS_JSON, splits)
    merged = {UnitKey.of(row) for row in tables[RESULTS_CSV][UNIT_COLUMNS].to_dict("records")}
    expected = expected_units(paths)
    missing = None if expected is None else [k.as_dict() for k in expected if k not in merged]
    write_json(output / MERGED_JSON, {"runs": [str(p) for p in paths], "units": int(len(tables[RESULTS_CSV])),
                                      "expected_units": None if expected is None else len(expected),
                                      "missing_units": missing, "configs": {str(r["path"]): r["config"] for r in runs}})
    per_case = tables[PER_CASE_CSV]
    write_comparison_files(output, tables[RESULTS_CSV], per_case if not per_case.empty else None)
    written += [output / SPLITS_JSON, output / MERGED_JSON]
    written += [p for p in sorted(output.glob("*.csv")) if p not in written]
    written += make_all_plots(output)
    written.append(write_report(output))
    return written

