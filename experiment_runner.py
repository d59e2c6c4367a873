"""Public facade of the suite for scripts outside the project (as ``data_loader.py`` is over ``brats_data/``).

    from experiment_runner import ExperimentConfig, run_integrated_experiment
    summary = run_integrated_experiment(ExperimentConfig(dataset_version="synthetic", dim="3d", models=["unet3d_xs"]))

:func:`run_integrated_experiment` is the one entry that runs an experiment as the command line does: with
:func:`run_callbacks` (charts, slice figures, Grad-CAM and report.html of ``visualization.ChartCallbacks``, then the
trackers of ``--tracker``) unless other callbacks are given; ``run.loop.run_experiment`` is the loop itself and
builds no callbacks. Where things live, one folder per phase (README, "Development map"): ``experiment/`` (what a
run is: configuration, run folder, units and shards, data loaders), ``training/`` (``UnitTrainer`` and its hooks,
``train_model``, augmentation, losses), ``inference/`` (``Predictor``, post-processing, NIfTI export, the official
evaluation), ``evaluation/`` (``evaluate_model``, ``evaluate_checkpoint``, efficiency), ``run/`` (the only loop over
seeds x folds x models, tracking, rank failure).
"""

from __future__ import annotations

from collections.abc import Sequence

from evaluation.efficiency import measure_efficiency
from evaluation.scoring import EvaluationResult, evaluate_checkpoint, evaluate_model, predict_volume
from experiment.config import ExperimentConfig, load_run_config, resume_config
from experiment.data import DataError, prepare_data
from experiment.run_folder import (
    EPOCH_COLUMNS,
    PER_CASE_COLUMNS,
    RESULT_COLUMNS,
    UNIT_COLUMNS,
    RunFolder,
    UnitKey,
)
from inference.predictor import InferenceSettings, Predictor
from run.callbacks import RunCallbacks
from run.loop import EXIT_BAD_DATA, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNITS_FAILED, RunSummary, run_experiment
from run.tracking import make_trackers
from training.trainer import (
    Interrupted,
    NonFiniteLoss,
    TrainResult,
    UnitTrainer,
    register_trainer,
    train_model,
)


def run_callbacks(cfg: ExperimentConfig) -> list[RunCallbacks]:
    """The command line's callbacks: charts, slice figures, Grad-CAM and report.html, then the trackers of
    ``cfg.tracker`` (TensorBoard, MLflow; with ``--resume``, the run's own tracker unless this command names
    another)."""
    from visualization import ChartCallbacks

    return [ChartCallbacks(), *make_trackers(resume_config(cfg) if cfg.resume is not None else cfg)]


def run_integrated_experiment(cfg: ExperimentConfig, callbacks: Sequence[RunCallbacks] | None = None) -> RunSummary:
    """Run the experiment of ``cfg`` with ``callbacks``, by default those of the command line
    (:func:`run_callbacks`)."""
    return run_experiment(cfg, run_callbacks(cfg) if callbacks is None else callbacks)


def unit_name(model: str, seed: int, fold: int, use_5fold: bool) -> str:
    """The name of one (model, seed, fold) unit, as in its checkpoint file names (``UnitKey.name``)."""
    return UnitKey(model, seed, fold).name(use_5fold)


__all__ = [
    "EPOCH_COLUMNS", "EXIT_BAD_DATA", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNITS_FAILED", "PER_CASE_COLUMNS",
    "RESULT_COLUMNS", "UNIT_COLUMNS", "DataError", "EvaluationResult", "ExperimentConfig", "InferenceSettings",
    "Interrupted", "NonFiniteLoss", "Predictor", "RunCallbacks", "RunFolder", "RunSummary", "TrainResult",
    "UnitKey", "UnitTrainer", "evaluate_checkpoint", "evaluate_model", "load_run_config", "measure_efficiency",
    "predict_volume", "prepare_data", "register_trainer", "run_callbacks", "run_experiment",
    "run_integrated_experiment", "train_model", "unit_name",
]
