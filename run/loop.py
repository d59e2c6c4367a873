"""The experiment: seeds x folds x models -> train, evaluate, measure, write. The only loop.

    run_experiment(cfg, callbacks)
        preflight(cfg)                 unknown models, dims, patch sizes, trainers, missing weights: before any work
        open_run(cfg, ctx)             run folder, data and cache, splits, config.json, run.log
        for each unit: run_unit(...)   train -> evaluate the best weights -> efficiency -> rows -> on_unit_end
                                       (the units of --shard, experiment/sharding.py; under torchrun a failure on
                                       some ranks only ends the job within seconds, run/rank_failure.py)
        finish_run(...)                model_comparison.csv, statistics -> on_run_end

What is drawn, reported or tracked is not the loop's business: the :class:`~run.callbacks.RunCallbacks` objects
given by the caller (``experiment_runner.run_callbacks``: ``visualization.ChartCallbacks`` for charts, slice
figures, Grad-CAM and report.html, then the trackers of ``--tracker``, ``run/tracking.py``) are called on rank 0,
and a callback that fails is a warning in ``run.log``, never a lost result. ``run/`` never imports
``visualization/``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from evaluation.efficiency import count_parameters, measure_efficiency
from evaluation.scoring import EvaluationResult, choose_postprocess, evaluate_checkpoint
from experiment.config import ExperimentConfig, resume_config
from experiment.data import make_all_splits, prepare_data, training_budget
from experiment.run_folder import EFFICIENCY_KEYS, LOG_FILE, RESULTS_CSV, RunFolder, UnitKey, unit_costs
from experiment.sharding import check_shard, shard_suffix, shard_units
from models import get_model, model_spec
from run.callbacks import RunCallbacks, RunState, notify
from run.logs import add_log_file, run_logging
from run.rank_failure import RankFailureWatch
from training.trainer import STOP, Interrupted, TrainResult, train_model, trainer_class
from utils import distributed as du
from utils.checkpoint import load_checkpoint
from utils.errors import first_line
from utils.runtime import hardware_name

log = logging.getLogger(__name__)

EXIT_OK, EXIT_BAD_DATA, EXIT_UNITS_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130


@dataclass
class RunSummary:
    run_dir: Path
    exit_code: int
    failed: list[dict[str, Any]]


# ----------------------------------------------------------------------------- opening the run
def preflight(cfg: ExperimentConfig) -> None:
    """Fail before any work on what the registry or the disk can already tell."""
    trainer_class(cfg.trainer)  # an unknown trainer or an import path that does not import
    if cfg.augmentation == "nnunet" and cfg.augmentation_params is None:  # recorded in config.json
        from training.augmentation import NNUNET_PARAMS

        cfg.augmentation_params = dict(NNUNET_PARAMS)
    check_shard(cfg)  # a shard with no unit
    dataset = cfg.dataset_def()  # MSD/nnU-Net: their dataset.json must map
    if cfg.dataset is None:  # recorded in config.json and the checkpoints: the record the run is made with
        cfg.dataset = dataset.to_dict()
    for name in cfg.model_names:
        # the registry checks the name, the dim and the patch size
        get_model(name, cfg.dim, cfg.spatial_patch, dataset.num_classes)
        missing = [m for m in model_spec(name).modalities if m not in dataset.modalities]
        if missing:
            raise ValueError(f"model '{name}' needs the modalities {', '.join(missing)}, which dataset "
                             f"{dataset.name} lacks (it has {', '.join(dataset.modalities)})")
        weights = Path(cfg.pretrained_dir) / f"{name}.pth"
        if cfg.use_pretrained and not weights.is_file():
            raise FileNotFoundError(f"--use_pretrained: no weights for '{name}' at {weights} "
                                    "(nothing is downloaded; put a checkpoint or state dict there)")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import monai

    return {"python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "cuda": str(torch.version.cuda)}


def _config_record(cfg: ExperimentConfig, ctx: du.DistContext, n_cases: int, n_train: int) -> dict[str, Any]:
    """config.json: the configuration, the training budget (of the first split; see the per-unit
    ``steps_per_epoch`` column for the others), where and with what it ran."""
    return {
        "config": cfg.to_dict(), "world_size": ctx.world_size, **training_budget(cfg, n_train, ctx.world_size),
        "device": str(ctx.device), "hardware": hardware_name(ctx.device), "amp": cfg.resolved_amp(ctx.device),
        "versions": _versions(),
        "git_commit": _git_commit(), "n_cases": n_cases, "command": sys.argv,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def open_run(cfg: ExperimentConfig, ctx: du.DistContext, callbacks: Sequence[RunCallbacks] = ()) -> RunState:
    """The run folder (new, or the resumed one), the prepared data, the splits, ``config.json``."""
    resuming = cfg.resume is not None
    path = cfg.resume if resuming else None
    if ctx.is_main and path is None:
        path = RunFolder.create(cfg.results_dir, suffix=shard_suffix(cfg)).path
    run = RunFolder(du.broadcast_object(str(path) if path else None), cfg.use_5fold, cfg.dataset_def().scheme)
    if ctx.is_main:
        add_log_file(run / LOG_FILE)
        log.info("run folder: %s", run.path)
    cache, errors = prepare_data(cfg, ctx)
    case_ids = list(cache.case_ids)
    if ctx.is_main:
        run.write_skipped(errors)
        for e in errors:
            log.warning("skipped case %s: %s (%s)", e["case_id"], e["reason"], e["path"])
    splits = (run.read_splits() if resuming else None) or make_all_splits(cfg, cache)
    if ctx.is_main:
        first = splits[str(cfg.seeds[0])]["folds"][0]
        run.write_config(_config_record(cfg, ctx, len(case_ids), len(first["train"])))
        run.write_splits(splits)
    done = run.finished_units() if resuming else set()
    return RunState(cfg, ctx, run, cache, splits, done, callbacks=tuple(callbacks))


# ----------------------------------------------------------------------------- one unit
def _efficiency_on_main(state: RunState, name: str) -> tuple[dict, str]:
    """Efficiency is measured once per model, on rank 0 alone; the others wait."""
    cfg, ctx = state.cfg, state.ctx
    if name in state.efficiency:
        return state.efficiency[name]
    values, notes, error = {}, "", None
    if ctx.is_main:
        try:
            if cfg.measure_efficiency:
                values, stages, notes = measure_efficiency(name, cfg, ctx.device)
                state.run.write_stage_pam(name, stages)
            else:
                model = get_model(name, cfg.dim, cfg.spatial_patch, cfg.output_channels())
                values = {"params": count_parameters(model)}
                notes = "efficiency measurement disabled"
        except Exception as exc:
            error = exc
    # the others wait for rank 0's outcome; a failure there fails the unit on every rank at the same point
    outcome = du.broadcast_object(None if error is None else first_line(error, with_type=True))
    if error is not None:
        raise error
    if outcome is not None:
        raise RuntimeError(f"efficiency measurement on rank 0 failed: {outcome}")
    state.efficiency[name] = (values, notes)
    return values, notes


def _record_failure(state: RunState, key: UnitKey, epoch: int, exc: Exception, traceback: bool = True) -> None:
    reason = first_line(exc, with_type=True)
    if state.ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    state.failed.append({**key.as_dict(), "epoch": epoch, "reason": reason})
    if state.ctx.is_main:
        log.error("unit %s failed (%s); going on with the next unit", state.run.unit(key), reason,
                  exc_info=exc if traceback else None)
        state.run.record_failure(key, epoch, reason)
        notify(state, "on_unit_failed", key, epoch, reason)


def _record_job_end(state: RunState, key: UnitKey, epoch: int, reason: str) -> None:
    """A unit that failed on some ranks only ends the job (run/rank_failure.py): rank 0 records it, from
    the watchdog thread, before every rank leaves; callbacks get 10 s."""
    if state.progress.get("key") == key:  # the failing rank may not know (only rank 0 sees the epochs end)
        epoch = state.progress["epoch"] + 1
    log.error("unit %s failed: %s", state.run.unit(key), reason)
    state.run.record_failure(key, epoch, reason)
    log.error("continue with: python integrated_experiment.py --resume %s", state.run.path)
    callbacks = threading.Thread(target=notify, args=(state, "on_unit_failed", key, epoch, reason), daemon=True)
    callbacks.start()
    callbacks.join(timeout=10)


def _write_unit(state: RunState, key: UnitKey, result: TrainResult, evaluation: EvaluationResult,
                efficiency: tuple[dict, str]) -> None:
    values, notes = efficiency
    row = {**evaluation.summary(), **evaluation.costs(), **{k: values.get(k, np.nan) for k in EFFICIENCY_KEYS},
           "best_epoch": result.best_epoch, "best_val_dice": result.best_val_dice,
           "steps_per_epoch": result.steps_per_epoch, "total_steps": result.steps_per_epoch * state.cfg.epochs,
           "world_size": state.ctx.world_size, "ranks_in_sync": result.ranks_in_sync, "efficiency_notes": notes,
           **unit_costs(result.curves), "cost_hardware": hardware_name(state.ctx.device), **result.postprocess}
    state.run.write_unit(key, row, evaluation.per_case, evaluation.confusion, evaluation.modality_weights)
    log.info("[%s seed %d fold %d] test Dice WT/TC/ET %.3f/%.3f/%.3f", key.model, key.seed, key.fold,
             row["test_dice_wt"], row["test_dice_tc"], row["test_dice_et"])
    state.run.remove_last(key)
    notify(state, "on_unit_end", key, result, evaluation)


def run_unit(state: RunState, key: UnitKey, split: dict[str, list[str]]) -> bool:
    """Train, evaluate and measure one unit; write its rows. False when the unit failed (recorded).

    Raises :class:`Interrupted` on a stop request: the unit stays resumable.
    """
    cfg, ctx, run = state.cfg, state.ctx, state.run
    if ctx.is_main and cfg.resume is not None:  # an unfinished unit's epoch rows come from its checkpoint
        run.reset_epoch_rows(key, load_checkpoint_curves(run.last_checkpoint(key)))
    last_epoch = state.progress = {"key": key, "epoch": -1}
    notify(state, "on_unit_start", key)

    def on_epoch_end(row: dict[str, Any]) -> None:
        last_epoch["epoch"] = row["epoch"]
        run.append_epoch(key, row)
        notify(state, "on_epoch_end", key, row)

    def on_progress(epoch: int, step: int, loss: float) -> None:
        notify(state, "on_train_progress", key, epoch, step, loss)

    try:
        result = train_model(key.model, cfg, state.cache, split, key.seed, key.fold, run, ctx,
                             on_epoch_end=on_epoch_end, on_progress=on_progress if state.callbacks else None)
        checkpoint = {"model_name": key.model, "state_dict": result.best_state, "num_classes": cfg.output_channels(),
                      "region_based": cfg.region_based, "dataset": cfg.dataset}
        if cfg.postprocess:  # chosen on the unit's validation cases, before the test
            rule, with_rule, without = choose_postprocess(checkpoint, cfg, state.cache, split["val"], ctx.device)
            checkpoint["postprocess"] = rule.to_dict()
            result.postprocess = {"postprocess_rule": rule.json(), "postprocess_val_dice": with_rule,
                                  "raw_val_dice": without}
            if ctx.is_main:
                run.record_postprocess(key, rule.to_dict())
                log.info("[%s] post-processing: %s (validation mean Dice %.4f -> %.4f)", run.unit(key),
                         rule.describe(), without, with_rule)
        evaluation = evaluate_checkpoint(checkpoint, cfg, state.cache, split["test"], ctx.device,
                                         keep_first_prediction=True)
        efficiency = _efficiency_on_main(state, key.model)
    except Interrupted:
        raise
    except Exception as exc:  # NaN loss, out of memory, a bug in one model: contain it to this unit
        epoch = last_epoch["epoch"] + 1
        if state.watch is not None:  # under torchrun: returns only if every rank failed here alike
            log.error("unit %s failed on rank %d", run.unit(key), ctx.rank, exc_info=exc)
            state.watch.unit_failed(key, run.unit(key), epoch, exc)
        _record_failure(state, key, epoch, exc, traceback=state.watch is None)
        du.barrier()
        return False
    if ctx.is_main:
        _write_unit(state, key, result, evaluation, efficiency)
    du.barrier()
    return True


def load_checkpoint_curves(path: Path) -> list[dict[str, Any]]:
    """The epoch rows a unit's last checkpoint recorded; none when it has no last checkpoint."""
    return list(load_checkpoint(path)["curves"]) if path.exists() else []


# ----------------------------------------------------------------------------- the end
def finish_run(state: RunState) -> RunSummary:
    if state.ctx.is_main:
        state.run.finish()
        notify(state, "on_run_end")
        log.info("results: %s", state.run / RESULTS_CSV)
    return RunSummary(state.run.path, EXIT_UNITS_FAILED if state.failed else EXIT_OK, state.failed)


# ----------------------------------------------------------------------------- the whole experiment
def run_experiment(cfg: ExperimentConfig, callbacks: Sequence[RunCallbacks] = ()) -> RunSummary:
    """Run every (seed, fold, model) unit of ``cfg`` and write the run folder (experiment/run_folder.py, README
    "Outputs"); ``callbacks`` (charts, reports, trackers: ``experiment_runner.run_callbacks(cfg)``) are called on
    rank 0. The public entry with the command line's callbacks is ``experiment_runner.run_integrated_experiment``."""
    torch.multiprocessing.set_sharing_strategy(cfg.sharing_strategy)
    ctx = du.init_distributed(cfg.device)
    STOP.install()
    try:
        with run_logging(ctx):
            return _run(cfg, ctx, callbacks)
    finally:
        STOP.restore()
        du.cleanup()


def _run(cfg: ExperimentConfig, ctx: du.DistContext, callbacks: Sequence[RunCallbacks]) -> RunSummary:
    if cfg.resume is not None:
        cfg = resume_config(cfg)
    preflight(cfg)
    state = open_run(cfg, ctx, list(callbacks))
    if ctx.distributed:
        state.watch = RankFailureWatch.start(ctx, functools.partial(_record_job_end, state))
    try:
        notify(state, "on_run_start")
        for key in units_in_order(state):
            split = next(f for f in state.splits[str(key.seed)]["folds"] if f["fold"] == key.fold)
            try:
                run_unit(state, key, split)
            except Interrupted:
                notify(state, "on_unit_interrupted", key)
                log.warning("interrupted during %s; continue with: python integrated_experiment.py "
                            "--resume %s", state.run.unit(key), state.run.path)
                return RunSummary(state.run.path, EXIT_INTERRUPTED, state.failed)
        return finish_run(state)
    finally:
        if state.watch is not None:
            state.watch.close()


def units_in_order(state: RunState) -> list[UnitKey]:
    """The units this command runs (experiment/sharding.py: the experiment's order, this shard's units), less
    the finished ones; on ``--resume`` the units in ``failed_runs.csv`` come last, so that a unit that fails
    again (and may end the job under torchrun) never keeps the others from running. Rank 0's list, on every rank
    (the ranks must run the same units in the same order, whatever their view of the shared file system)."""
    todo = [key for key in shard_units(state.cfg) if key not in state.done]
    failed = state.run.failed_units() if state.cfg.resume is not None and state.ctx.is_main else set()
    order = [key for key in todo if key not in failed] + [key for key in todo if key in failed]
    return [UnitKey(*k) for k in du.broadcast_object([(k.model, k.seed, k.fold) for k in order])]
