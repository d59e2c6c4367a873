"""Public facade of the experiment package (as ``data_loader.py`` is over ``brats_data/``).

    from experiment_runner import ExperimentConfig, run_integrated_experiment
    summary = run_integrated_experiment(ExperimentConfig(dataset_version="synthetic", dim="3d", models=["unet3d_xs"]))

Where things live: ``experiment/config.py`` (configuration, loading a run's config),
``experiment/run_folder.py`` (every file and column of a run folder), ``experiment/data.py``,
``experiment/training.py`` (``train_model``), ``experiment/evaluation.py`` (``predict_volume``,
``evaluate_model``, ``evaluate_checkpoint``), ``experiment/efficiency.py``, ``experiment/loop.py``
(``run_integrated_experiment``, the only loop over seeds x folds x models).
"""

from experiment.config import ExperimentConfig, load_run_config, unit_name
from experiment.data import DataError, prepare_data
from experiment.efficiency import measure_efficiency
from experiment.evaluation import EvaluationResult, evaluate_checkpoint, evaluate_model, predict_volume
from experiment.loop import (
    EXIT_BAD_DATA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNITS_FAILED,
    RunSummary,
    run_integrated_experiment,
)
from experiment.run_folder import (
    EPOCH_COLUMNS,
    PER_CASE_COLUMNS,
    RESULT_COLUMNS,
    UNIT_COLUMNS,
    RunFolder,
)
from experiment.training import Interrupted, NonFiniteLoss, TrainResult, train_model

__all__ = [
    "EPOCH_COLUMNS", "EXIT_BAD_DATA", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNITS_FAILED", "PER_CASE_COLUMNS",
    "RESULT_COLUMNS", "UNIT_COLUMNS", "DataError", "EvaluationResult", "ExperimentConfig", "Interrupted",
    "NonFiniteLoss", "RunFolder", "RunSummary", "TrainResult", "evaluate_checkpoint", "evaluate_model",
    "load_run_config", "measure_efficiency", "predict_volume", "prepare_data", "run_integrated_experiment",
    "train_model", "unit_name",
]
