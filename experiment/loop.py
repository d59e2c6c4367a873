"""The experiment: seeds x folds x models -> train, evaluate, measure, write. The only loop.

    run_integrated_experiment(cfg)
        preflight(cfg)                 unknown models, dims, patch sizes, missing weights: before any work
        open_run(cfg, ctx)             run folder, data and cache, splits, config.json, run.log
        for each unit: run_unit(...)   train -> evaluate the best weights -> efficiency -> rows
        finish_run(...)                model_comparison.csv, charts, slice figures
"""

from __future__ import annotations

import datetime as _dt
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import data_loader as dl
from experiment.config import ExperimentConfig, resume_config
from experiment.data import make_all_splits, prepare_data, training_budget
from experiment.efficiency import count_parameters, measure_efficiency
from experiment.evaluation import EvaluationResult, evaluate_checkpoint
from experiment.run_folder import EFFICIENCY_KEYS, LOG_FILE, RESULTS_CSV, RunFolder, UnitKey
from experiment.training import STOP, Interrupted, TrainResult, train_model
from utils import distributed as du
from utils.checkpoint import load_checkpoint
from utils.experiment_utils import get_model

log = logging.getLogger(__name__)

EXIT_OK, EXIT_BAD_DATA, EXIT_UNITS_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130
LOGGED_PACKAGES = ("experiment", "brats_data", "visualization", "models", "utils")
SLICE_MODALITIES = ["t1ce", "flair"]  # the modalities drawn in the segmentation slice figures


@dataclass
class RunSummary:
    run_dir: Path
    exit_code: int
    failed: list[dict[str, Any]]


@dataclass
class RunState:
    """What the loop carries from unit to unit."""

    cfg: ExperimentConfig
    ctx: du.DistContext
    run: RunFolder
    cache: Any
    splits: dict[str, Any]
    done: set[tuple[str, int, int]]
    efficiency: dict[str, tuple[dict, str]] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[tuple[int, int, str], dict[str, Any]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- logging
@contextmanager
def run_logging(ctx: du.DistContext, log_file: Path | None = None) -> Iterator[None]:
    """Progress to stdout and warnings to stderr (rank 0; other ranks: warnings only, prefixed), and,
    once the run folder exists, everything with timestamps to ``run.log`` (see :func:`add_log_file`)."""
    loggers = [logging.getLogger(name) for name in LOGGED_PACKAGES]
    previous = [(lg, lg.level, lg.propagate) for lg in loggers]
    handlers: list[logging.Handler] = []
    if ctx.is_main:
        out = logging.StreamHandler(sys.stdout)
        # the console shows the run's own progress; other packages' notes go to run.log only
        out.addFilter(lambda record: record.levelno < logging.WARNING and record.name.startswith("experiment"))
        handlers.append(out)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("%(message)s" if ctx.is_main else f"[rank {ctx.rank}] %(message)s"))
    handlers.append(err)
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.propagate = False
        for h in handlers:
            lg.addHandler(h)
    try:
        yield
    finally:
        for lg, level, propagate in previous:
            for h in list(lg.handlers):
                if h in handlers or getattr(h, "_run_log", False):
                    lg.removeHandler(h)
            lg.setLevel(level)
            lg.propagate = propagate
        for h in handlers:
            h.close()


def add_log_file(path: Path) -> None:
    """Append everything the run logs, with timestamps, to ``path`` (rank 0 only)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._run_log = True  # type: ignore[attr-defined]
    for name in LOGGED_PACKAGES:
        logging.getLogger(name).addHandler(handler)


# ----------------------------------------------------------------------------- opening the run
def preflight(cfg: ExperimentConfig) -> None:
    """Fail before any work on what the registry or the disk can already tell."""
    for name in cfg.model_names:
        get_model(name, cfg.dim, cfg.spatial_patch)  # the registry checks the name, the dim and the patch size
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
        "device": str(ctx.device), "amp": cfg.resolved_amp(ctx.device), "versions": _versions(),
        "git_commit": _git_commit(), "n_cases": n_cases, "command": sys.argv,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def open_run(cfg: ExperimentConfig, ctx: du.DistContext) -> RunState:
    """The run folder (new, or the resumed one), the prepared data, the splits, ``config.json``."""
    resuming = cfg.resume is not None
    path = cfg.resume if resuming else None
    if ctx.is_main and path is None:
        path = RunFolder.create(cfg.results_dir).path
    run = RunFolder(du.broadcast_object(str(path) if path else None), cfg.use_5fold)
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
    return RunState(cfg, ctx, run, cache, splits, done)


# ----------------------------------------------------------------------------- one unit
def _efficiency_on_main(state: RunState, name: str) -> tuple[dict, str]:
    """Efficiency is measured once per model, on rank 0 alone; the others wait."""
    cfg, ctx = state.cfg, state.ctx
    if name in state.efficiency:
        return state.efficiency[name]
    values, notes = {}, ""
    if ctx.is_main:
        if cfg.measure_efficiency:
            values, stages, notes = measure_efficiency(name, cfg, ctx.device)
            state.run.write_stage_pam(name, stages)
        else:
            values = {"params": count_parameters(get_model(name, cfg.dim, cfg.spatial_patch))}
            notes = "efficiency measurement disabled"
    du.barrier()
    state.efficiency[name] = (values, notes)
    return values, notes


def _record_failure(state: RunState, key: UnitKey, epoch: int, exc: Exception) -> None:
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if state.ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    state.failed.append({**key.as_dict(), "epoch": epoch, "reason": reason})
    if state.ctx.is_main:
        log.error("unit %s failed (%s); going on with the next unit", state.run.unit(key), reason, exc_info=exc)
        state.run.record_failure(key, epoch, reason)


def _write_unit(state: RunState, key: UnitKey, result: TrainResult, evaluation: EvaluationResult,
                efficiency: tuple[dict, str]) -> None:
    values, notes = efficiency
    row = {**evaluation.summary(), **{k: values.get(k, np.nan) for k in EFFICIENCY_KEYS},
           "best_epoch": result.best_epoch, "best_val_dice": result.best_val_dice,
           "steps_per_epoch": result.steps_per_epoch, "total_steps": result.steps_per_epoch * state.cfg.epochs,
           "world_size": state.ctx.world_size, "ranks_in_sync": result.ranks_in_sync, "efficiency_notes": notes}
    state.run.write_unit(key, row, evaluation.per_case, evaluation.confusion, evaluation.modality_weights)
    log.info("[%s seed %d fold %d] test Dice WT/TC/ET %.3f/%.3f/%.3f", key.model, key.seed, key.fold,
             row["test_dice_wt"], row["test_dice_tc"], row["test_dice_et"])
    if evaluation.first_prediction is not None and key.seed == state.cfg.seeds[0]:
        case_id, pred = evaluation.first_prediction
        slot = state.predictions.setdefault((key.seed, key.fold, case_id), {
            "image": np.asarray(state.cache.image(case_id)[dl.modality_indices(SLICE_MODALITIES)], np.float32),
            "label": np.asarray(state.cache.label(case_id)), "preds": {}, "modalities": SLICE_MODALITIES})
        slot["preds"][key.model] = pred
    if state.cfg.gradcam and evaluation.first_prediction is not None:
        _write_gradcam(state, key, result, evaluation.first_prediction[0])
    state.run.remove_last(key)


def _write_gradcam(state: RunState, key: UnitKey, result: TrainResult, case_id: str) -> None:
    """--gradcam: ``gradcam_{unit}.png``, the Grad-CAM overlay of the unit's first test case (rank 0,
    visualization/gradcam.py); a failure only warns."""
    try:
        from visualization.gradcam import write_unit_gradcam

        write_unit_gradcam(key.model, result.best_state, state.cfg, state.cache, case_id,
                           state.run / f"gradcam_{state.run.unit(key)}.png", state.ctx.device)
    except Exception as exc:  # an explanation figure must never cost the unit
        log.warning("warning: Grad-CAM of %s failed: %s: %s", state.run.unit(key), type(exc).__name__, exc)


def run_unit(state: RunState, key: UnitKey, split: dict[str, list[str]]) -> bool:
    """Train, evaluate and measure one unit; write its rows. False when the unit failed (recorded).

    Raises :class:`Interrupted` on a stop request: the unit stays resumable.
    """
    cfg, ctx, run = state.cfg, state.ctx, state.run
    if ctx.is_main and cfg.resume is not None:  # an unfinished unit's epoch rows come from its checkpoint
        run.reset_epoch_rows(key, load_checkpoint_curves(run.last_checkpoint(key)))
    last_epoch = {"epoch": -1}

    def on_epoch_end(row: dict[str, Any]) -> None:
        last_epoch["epoch"] = row["epoch"]
        run.append_epoch(key, row)

    try:
        result = train_model(key.model, cfg, state.cache, split, key.seed, key.fold, run, ctx,
                             on_epoch_end=on_epoch_end)
        evaluation = evaluate_checkpoint({"model_name": key.model, "state_dict": result.best_state}, cfg,
                                         state.cache, split["test"], ctx.device, keep_first_prediction=True)
        efficiency = _efficiency_on_main(state, key.model)
    except Interrupted:
        raise
    except Exception as exc:  # NaN loss, out of memory, a bug in one model: contain it to this unit
        _record_failure(state, key, last_epoch["epoch"] + 1, exc)
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
def _draw(run: RunFolder, predictions: dict[tuple[int, int, str], dict[str, Any]]) -> None:
    """Charts from the run folder's CSVs, and slice figures of the saved test predictions."""
    try:
        from visualization.visualization_dataframe import make_all_plots

        make_all_plots(run.path)
    except Exception as exc:  # a chart must never cost the results
        log.warning("warning: charts failed: %s: %s", type(exc).__name__, exc)
    try:
        from visualization.visualization_3d import plot_segmentation_slices

        for (seed, fold, case_id), item in predictions.items():
            name = f"segmentation_slices_seed_{seed}" + (f"_fold_{fold}" if fold else "") + f"_{case_id}.png"
            plot_segmentation_slices(item["image"], item["label"], item["preds"], run / name,
                                     modality_names=item["modalities"])
    except Exception as exc:
        log.warning("warning: slice figures failed: %s: %s", type(exc).__name__, exc)


def finish_run(state: RunState) -> RunSummary:
    if state.ctx.is_main:
        state.run.finish()
        _draw(state.run, state.predictions)
        log.info("results: %s", state.run / RESULTS_CSV)
    return RunSummary(state.run.path, EXIT_UNITS_FAILED if state.failed else EXIT_OK, state.failed)


# ----------------------------------------------------------------------------- the whole experiment
def run_integrated_experiment(cfg: ExperimentConfig) -> RunSummary:
    """Run every (seed, fold, model) unit of ``cfg`` and write the run folder. Its files: experiment/run_folder.py, README "Outputs"."""
    torch.multiprocessing.set_sharing_strategy(cfg.sharing_strategy)
    ctx = du.init_distributed(cfg.device)
    STOP.install()
    try:
        with run_logging(ctx):
            return _run(cfg, ctx)
    finally:
        STOP.restore()
        du.cleanup()


def _run(cfg: ExperimentConfig, ctx: du.DistContext) -> RunSummary:
    if cfg.resume is not None:
        cfg = resume_config(cfg)
    preflight(cfg)
    state = open_run(cfg, ctx)
    for seed in cfg.seeds:
        for split in state.splits[str(seed)]["folds"]:
            for name in cfg.model_names:
                key = UnitKey(name, seed, split["fold"])
                if (name, seed, key.fold) in state.done:
                    continue
                try:
                    run_unit(state, key, split)
                except Interrupted:
                    log.warning("interrupted during %s; continue with: python integrated_experiment.py "
                                "--resume %s", state.run.unit(key), state.run.path)
                    return RunSummary(state.run.path, EXIT_INTERRUPTED, state.failed)
    return finish_run(state)
