"""Re-evaluate every best checkpoint of a run folder on its test split; export its test predictions;
score them with the official BraTS evaluation.

    python evaluate_experiment.py --results_dir RUN_DIR                      # evaluation_results.csv
    python evaluate_experiment.py --results_dir RUN_DIR --export_predictions --official_eval
    python evaluate_experiment.py --results_dir SHARD_0 SHARD_1 SHARD_2    # run folders of one experiment

Without options it writes ``RUN_DIR/evaluation_results.csv`` (one row per checkpoint, the test columns of
``integrated_experiment_results.csv``) and ``RUN_DIR/evaluation_per_case_results.csv``, through the same
cache and the same ``evaluate_checkpoint`` as the run, so the metrics equal the run's.
``--export_predictions`` writes ``RUN_DIR/predictions/{unit}/{case_id}.nii.gz`` and the ground truth
``RUN_DIR/predictions/references/{case_id}.nii.gz``; ``--official_eval`` scores those folders with the
official package in its own environment into ``RUN_DIR/official_brats_metrics.csv`` (inference/official_eval.py).
Several run folders of one experiment (the shards of a sweep; ``experiment.sharding.open_runs``: the same
configuration and splits, each unit in one folder) are evaluated in one command, each into its own folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from brats_data import BadCaseError
from evaluation.scoring import evaluate_checkpoint
from experiment.data import open_prepared_cache
from experiment.run_folder import (
    EVALUATION_CSV,
    OFFICIAL_METRICS_CSV,
    UNIT_COLUMNS,
    RunFolder,
    test_metric_columns,
)
from experiment.sharding import check_disjoint_units, open_runs
from inference.export import export_run_predictions
from inference.official_eval import (
    DEFAULT_BRATS_EVAL_PYTHON,
    OfficialEvaluationError,
    run_official_evaluation,
)
from inference.postprocess import PostprocessRule
from utils.checkpoint import CheckpointError
from utils.distributed import resolve_device
from utils.errors import first_line


def evaluate_run(run_dir: str | Path, data_path: str | None = None, device: str = "auto",
                 cache_dir: str | None = None, postprocess: bool = True) -> pd.DataFrame:
    """Evaluate every ``*_best.pth`` of ``run_dir`` (with its post-processing rule unless ``postprocess`` is False);
    returns (and writes) the evaluation table."""
    return evaluate_runs([run_dir], data_path, device, cache_dir, postprocess)


def evaluate_runs(run_dirs: Sequence[str | Path], data_path: str | None = None, device: str = "auto",
                  cache_dir: str | None = None, postprocess: bool = True) -> pd.DataFrame:
    """Evaluate every ``*_best.pth`` of run folders of one experiment (checked first), each into its own
    ``evaluation_results.csv``; returns their tables, concatenated."""
    opened = open_runs(run_dirs, data_path=data_path, cache_dir=cache_dir)
    check_disjoint_units((key, run.path) for run, _ in opened for key in run.checkpoint_units())
    units = [run.test_units() for run, _ in opened]  # a folder without checkpoints raises before any work
    torch_device, cache = resolve_device(device), open_prepared_cache(opened[0][1])
    return pd.concat([_evaluate(run, cfg, run_units, cache, torch_device, postprocess)
                      for (run, cfg), run_units in zip(opened, units)], ignore_index=True)


def _evaluate(run: RunFolder, cfg: Any, units: Any, cache: Any, torch_device: Any, postprocess: bool
              ) -> pd.DataFrame:
    rows, per_case = [], []
    for unit in units:
        ckpt, key = unit.checkpoint, unit.key.as_dict()
        result = evaluate_checkpoint(ckpt, cfg, cache, unit.test_ids, torch_device, postprocess=postprocess,
                                     desc=f"evaluate {unit.path.name}")
        rule = PostprocessRule.from_dict(ckpt.get("postprocess")) if postprocess else PostprocessRule()
        rows.append({**key, **result.summary(), "best_epoch": ckpt["epoch"],
                     "best_val_dice": ckpt["best_val_dice"], "checkpoint": unit.path.name,
                     "postprocess_rule": rule.json()})
        per_case += [{**key, **r} for r in result.per_case]
    return run.write_evaluation(rows, per_case)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Re-evaluate the best checkpoints of a run folder on its test split.")
    p.add_argument("--results_dir", required=True, nargs="+", metavar="RUN_DIR",
                   help="the run folder, or several of one experiment (e.g. the shards of a sweep)")
    p.add_argument("--data_path", default=None, help="dataset root, if it moved since the run")
    p.add_argument("--cache_dir", default=None, help="preprocessed cache folder, if not the run's")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--export_predictions", action="store_true", help="write the test predictions and their ground "
                   "truth as NIfTI under RUN_DIR/predictions/ (instead of re-evaluating)")
    p.add_argument("--official_eval", action="store_true", help="score RUN_DIR/predictions/ with the official BraTS "
                   f"evaluation -> {OFFICIAL_METRICS_CSV} (after --export_predictions, if given)")
    p.add_argument("--no_postprocess", action="store_true", help="without the post-processing rule a run chose "
                   "(--postprocess): the raw figures, and raw exported predictions")
    p.add_argument("--brats_eval_python", default=None, metavar="PATH",
                   help=f"python of the official package's environment (default {DEFAULT_BRATS_EVAL_PYTHON})")
    args = p.parse_args(argv)
    runs = [Path(r) for r in args.results_dir]
    try:
        if len(runs) > 1:  # refuse runs of different experiments before any work
            open_runs(runs, data_path=args.data_path, cache_dir=args.cache_dir)
        if not (args.export_predictions or args.official_eval):
            table = evaluate_runs(runs, args.data_path, args.device, args.cache_dir, not args.no_postprocess)
            scheme = RunFolder.open(runs[0], data_path=args.data_path, cache_dir=args.cache_dir)[0].scheme
            with pd.option_context("display.width", 200, "display.max_columns", 12):
                print(table[UNIT_COLUMNS + test_metric_columns(scheme)].to_string(index=False))
            for run in runs:
                print(f"written: {run / EVALUATION_CSV}")
        for run in runs if args.export_predictions else ():
            out = export_run_predictions(run, args.data_path, args.cache_dir, args.device,
                                         postprocess=not args.no_postprocess)
            print(f"written: {out}")
        for run in runs if args.official_eval else ():
            table = run_official_evaluation(run, args.brats_eval_python)
            names = (f"{m}_{r}" for m in ("lesionwise_dsc_mean", "global_dsc") for r in ("wt", "tc", "et"))
            summary = [c for c in names if c in table.columns]
            with pd.option_context("display.width", 200, "display.max_columns", 12):
                print(table.groupby(UNIT_COLUMNS)[summary].mean().to_string())
            print(f"written: {run / OFFICIAL_METRICS_CSV}")
    except (BadCaseError, CheckpointError, OfficialEvaluationError, FileNotFoundError, ValueError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
