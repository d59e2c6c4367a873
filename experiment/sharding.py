"""An experiment's units in their one order, shards of them, and several run folders of one experiment.

    experiment_units(cfg)      every (model, seed, fold) of the experiment, in the loop's order: each seed
                               (as --seeds gives them), each fold (0, or 0-4 / --folds with --use_5fold),
                               each model (as --models gives them); what ``--list_units`` prints
    shard_units(cfg)           the units of ``--shard I/N``: those whose position modulo N is I (all without it)
    open_runs(paths)           run folders of one experiment (shards, or jobs that ran other units of it),
                               checked: same configuration except which units ran, same splits, no unit twice

A shard is a whole run of its own (its own run folder named ``..._shard_I_of_N``, the full ``splits.json``,
``config.json`` with ``shard``); ``python -m visualization`` merges the shards' folders, and
``evaluate_experiment.py`` and ``predict.py`` take several of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from experiment.config import N_FOLDS, RUNTIME_FIELDS, ExperimentConfig
from experiment.run_folder import RunFolder, UnitKey, choose_checkpoints

# What may differ between run folders of one experiment: which units ran, and where and how they ran.
UNIT_SELECTION_FIELDS = ("models", "seeds", "folds", "shard")
NOT_COMPARED = (*RUNTIME_FIELDS, *UNIT_SELECTION_FIELDS, "resume", "results_dir", "gradcam", "measure_efficiency")


class ExperimentMismatch(ValueError):
    """Run folders that are not runs of one experiment (the message names the folders and the difference)."""


def experiment_folds(cfg: ExperimentConfig) -> list[int]:
    if not cfg.use_5fold:
        return [0]
    return list(cfg.folds) if cfg.folds else list(range(N_FOLDS))


def experiment_units(cfg: ExperimentConfig) -> list[UnitKey]:
    """Every unit of the experiment in the loop's order (seeds, then folds, then models; model fastest)."""
    return [UnitKey(name, seed, fold) for seed in cfg.seeds for fold in experiment_folds(cfg)
            for name in cfg.model_names]


def shard_units(cfg: ExperimentConfig) -> list[UnitKey]:
    """The units this command runs: with ``--shard I/N`` those at positions I, I+N, I+2N ... of
    :func:`experiment_units`; every unit without it."""
    units = experiment_units(cfg)
    return units if cfg.shard is None else cfg.shard.select(units)


def check_shard(cfg: ExperimentConfig) -> None:
    """A shard that would hold no unit is a mistake in the job (more shards than units): ``ValueError``."""
    if cfg.shard is None:
        return
    total, index = len(experiment_units(cfg)), cfg.shard.index
    if index >= total:
        raise ValueError(f"--shard {cfg.shard}: the experiment has {total} unit(s), so shard {index} holds none; "
                         f"use at most {total} shards (--list_units prints them)")


def shard_suffix(cfg: ExperimentConfig) -> str:
    """The end of a shard's run-folder name: ``_shard_I_of_N`` (empty without ``--shard``)."""
    if cfg.shard is None:
        return ""
    return f"_shard_{cfg.shard.index}_of_{cfg.shard.count}"


def list_units_lines(cfg: ExperimentConfig) -> list[str]:
    """What ``--list_units`` prints: ``position model seed fold`` per unit (of the shard, with ``--shard``),
    then the count (``N units``, or ``K of N units in shard I/N``)."""
    units = experiment_units(cfg)
    mine = set(shard_units(cfg))
    lines = [f"{i} {key.model} {key.seed} {key.fold}" for i, key in enumerate(units) if key in mine]
    if cfg.shard is None:
        return lines + [f"{len(units)} units"]
    return lines + [f"{len(mine)} of {len(units)} units in shard {cfg.shard}"]


# ----------------------------------------------------------------------------- several run folders
def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The experiment-defining fields (all but :data:`NOT_COMPARED`) whose values differ between two saved
    configurations, as ``name (a vs b)``."""
    names = sorted((set(a) | set(b)) - set(NOT_COMPARED))
    return [f"{n} ({a.get(n)!r} vs {b.get(n)!r})" for n in names if a.get(n) != b.get(n)]


def check_one_experiment(paths: Sequence[Path], configs: Sequence[dict[str, Any]],
                         splits: Sequence[dict[str, Any] | None]) -> None:
    """Raise :class:`ExperimentMismatch` unless the run folders ``paths`` are runs of one experiment: their
    configurations (``config.json`` ``config``) agree on everything but :data:`NOT_COMPARED`, and the splits
    of every seed two of them share are identical."""
    first = configs[0]
    for path, cfg in zip(paths[1:], configs[1:]):
        diff = config_differences(first, cfg)
        if diff:
            raise ExperimentMismatch(f"{paths[0]} and {path} are not runs of one experiment: their config.json "
                                     f"differ in {', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}")
    seen: dict[str, tuple[Path, Any]] = {}
    for path, run_splits in zip(paths, splits):
        for seed, entry in (run_splits or {}).items():
            if seed in seen and seen[seed][1] != entry:
                raise ExperimentMismatch(f"seed {seed}: the splits differ between {seen[seed][0]} and {path}; "
                                         "runs of one experiment share their splits.json")
            seen.setdefault(seed, (path, entry))


def open_runs(run_dirs: Iterable[str | Path], **runtime: Any) -> list[tuple[RunFolder, ExperimentConfig]]:
    """Open run folders of one experiment (``RunFolder.open`` each, ``runtime`` as there) and check them
    (:func:`check_one_experiment`; a folder given twice is refused too)."""
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("no run folder given")
    if len({p.resolve() for p in paths}) != len(paths):
        raise ExperimentMismatch("a run folder is given twice")
    opened = [RunFolder.open(p, **runtime) for p in paths]
    check_one_experiment(paths, [run.read_config()["config"] for run, _ in opened],
                         [run.read_splits() for run, _ in opened])
    return opened


def check_disjoint_units(owners: Iterable[tuple[UnitKey, Path]]) -> None:
    """Each unit's best checkpoint in one run folder only: ``ExperimentMismatch`` naming both otherwise."""
    seen: dict[UnitKey, Path] = {}
    for key, path in owners:
        if key in seen:
            raise ExperimentMismatch(f"model {key.model} seed {key.seed} fold {key.fold} has a best checkpoint in "
                                     f"both {seen[key]} and {path}; give each unit's run folder once")
        seen[key] = path


def select_checkpoints(runs: Sequence[RunFolder], models: Sequence[str] | None = None,
                       seeds: Sequence[int] | None = None, folds: Sequence[int] | None = None) -> list[Path]:
    """``RunFolder.select_checkpoints`` over several run folders of one experiment (each unit in one of them)."""
    owners = [(key, path) for run in runs for key, path in run.checkpoint_units().items()]
    check_disjoint_units((key, path.parent) for key, path in owners)
    where = str(runs[0].path) if len(runs) == 1 else f"{len(runs)} run folders ({', '.join(str(r.path) for r in runs)})"
    return choose_checkpoints(dict(owners), where, models, seeds, folds)
