"""Public facade of the experiment package for scripts outside the project (as ``data_loader.py`` is over
``brats_data/``).

    from experiment_runner import ExperimentConfig, run_integrated_experiment
    summary = run_integrated_experiment(ExperimentConfig(dataset_version="synthetic", dim="3d", models=["unet3d_xs"]))

:func:`run_integrated_experiment` here runs the experiment as the command line does, charts included
(``visualization.ChartCallbacks``); ``experiment.loop.run_integrated_experiment`` takes the callbacks
explicitly. Where things live: ``experiment/config.py`` (configuration, loading a run's config),
``experiment/run_folder.py`` (every file and column of a run folder, ``UnitKey``), ``experiment/data.py``,
``experiment/training.py`` (``UnitTrainer`` and its hooks, ``train_model``), ``experiment/predictor.py``
(``Predictor``), ``experiment/evaluation.py`` (``evaluate_model``, ``evaluate_checkpoint``),
``experiment/efficiency.py``, ``experiment/loop.py`` (the only loop over seeds x folds x models).
"""

from __future__ import annotations

from collections.abc import Sequence

from experiment.config import ExperimentConfig, load_run_config
from experiment.data import DataError, prepare_data
from experiment.efficiency import measure_efficiency
from experiment.evaluation import EvaluationResult, evaluate_checkpoint, evaluate_model, predict_volume
from experiment.loop import (
    EXIT_BAD_DATA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNITS_FAILED,
    RunCallbacks,
    RunSummary,
)
from experiment.loop import run_integrated_experiment as _run_experiment
from experiment.predictor import InferenceSettings, Predictor
from experiment.run_folder import (
    EPOCH_COLUMNS,
    PER_CASE_COLUMNS,
    RESULT_COLUMNS,
    UNIT_COLUMNS,
    RunFolder,
    UnitKey,
)
from experiment.training import (
    Interrupted,
    NonFiniteLoss,
    TrainResult,
    UnitTrainer,
    register_trainer,
    train_model,
)


def run_integrated_experiment(cfg: ExperimentConfig, callbacks: Sequence[RunCallbacks] | None = None) -> RunSummary:
    """Run the experiment of ``cfg``; by default with the charts of the command line."""
    if callbacks is None:
        from visualization import ChartCallbacks

        callbacks = [ChartCallbacks()]
    return _run_experiment(cfg, callbacks)


def unit_name(model: str, seed: int, fold: int, use_5fold: bool) -> str:
    """The name of one (model, seed, fold) unit, as in its checkpoint file names (``UnitKey.name``)."""
    return UnitKey(model, seed, fold).name(use_5fold)


__all__ = [
    "EPOCH_COLUMNS", "EXIT_BAD_DATA", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNITS_FAILED", "PER_CASE_COLUMNS",
    "RESULT_COLUMNS", "UNIT_COLUMNS", "DataError", "EvaluationResult", "ExperimentConfig", "InferenceSettings",
    "Interrupted", "NonFiniteLoss", "Predictor", "RunCallbacks", "RunFolder", "RunSummary", "TrainResult",
    "UnitKey", "UnitTrainer", "evaluate_checkpoint", "evaluate_model", "load_run_config", "measure_efficiency",
    "predict_volume", "prepare_data", "register_trainer", "run_integrated_experiment", "train_model", "unit_name",
]
