"""Re-evaluate every best checkpoint of a run folder on its test split.

    python evaluate_experiment.py --results_dir baseline_results/integrated_experiment_results_YYYYMMDD_HHMMSS

Writes ``RUN_DIR/evaluation_results.csv`` (one row per checkpoint, the test columns of
``integrated_experiment_results.csv``) and ``RUN_DIR/evaluation_per_case_results.csv``, through the
same cache and the same ``evaluate_checkpoint`` as the run, so the metrics equal the run's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

import data_loader as dl
from experiment.config import load_run_config
from experiment.data import open_prepared_cache
from experiment.evaluation import evaluate_checkpoint
from experiment.run_folder import EVALUATION_CSV, TEST_METRIC_COLUMNS, UNIT_COLUMNS, RunFolder
from utils.checkpoint import BEST_KEYS, CheckpointError, load_checkpoint
from utils.distributed import resolve_device


def evaluate_run(run_dir: str | Path, data_path: str | None = None, device: str = "auto",
                 cache_dir: str | None = None) -> pd.DataFrame:
    """Evaluate every ``*_best.pth`` of ``run_dir``; returns (and writes) the evaluation table."""
    if not RunFolder.is_run_folder(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run folder (config.json and splits.json are needed)")
    cfg = load_run_config(run_dir, data_path=data_path, cache_dir=cache_dir)
    run = RunFolder(run_dir, cfg.use_5fold)
    splits, checkpoints = run.read_splits(), run.best_checkpoints()
    if not checkpoints:
        raise FileNotFoundError(f"no *_best.pth checkpoints in {run_dir}")
    torch_device, cache = resolve_device(device), open_prepared_cache(cfg)
    rows, per_case = [], []
    for path in checkpoints:
        ckpt = load_checkpoint(path, BEST_KEYS + ("seed", "fold"))
        key = {"model": ckpt["model_name"], "seed": int(ckpt["seed"]), "fold": int(ckpt["fold"])}
        split = next((f for f in splits.get(str(key["seed"]), {}).get("folds", []) if f["fold"] == key["fold"]), None)
        if split is None:
            raise CheckpointError(f"{path}: seed {key['seed']} fold {key['fold']} is not in {run / 'splits.json'}")
        result = evaluate_checkpoint(ckpt, cfg, cache, split["test"], torch_device, desc=f"evaluate {path.name}")
        rows.append({**key, **result.summary(), "best_epoch": ckpt["epoch"], "best_val_dice": ckpt["best_val_dice"],
                     "checkpoint": path.name})
        per_case += [{**key, **r} for r in result.per_case]
    return run.write_evaluation(rows, per_case)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Re-evaluate the best checkpoints of a run folder on its test split.")
    p.add_argument("--results_dir", required=True, metavar="RUN_DIR", help="the run folder")
    p.add_argument("--data_path", default=None, help="dataset root, if it moved since the run")
    p.add_argument("--cache_dir", default=None, help="preprocessed cache folder, if not the run's")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    try:
        table = evaluate_run(args.results_dir, args.data_path, args.device, args.cache_dir)
    except (dl.BadCaseError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 12):
        print(table[UNIT_COLUMNS + TEST_METRIC_COLUMNS].to_string(index=False))
    print(f"written: {Path(args.results_dir) / EVALUATION_CSV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
