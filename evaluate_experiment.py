"""Re-evaluate every best checkpoint of a run folder on its test split.

    python evaluate_experiment.py --results_dir baseline_results/integrated_experiment_results_YYYYMMDD_HHMMSS

Writes ``RUN_DIR/evaluation_results.csv`` (one row per checkpoint, the test columns of
``integrated_experiment_results.csv``) and ``RUN_DIR/evaluation_per_case_results.csv``. The data are
read through the same preprocessed cache and the same ``evaluate_model`` as during the run, so the
metrics equal the run's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

import data_loader as dl
from experiment_runner import (
    PER_CASE_COLUMNS,
    UNIT_COLUMNS,
    ExperimentConfig,
    evaluate_model,
)
from metrics import REGION_METRIC_KEYS
from utils.checkpoint import BEST_KEYS, CheckpointError, load_checkpoint
from utils.distributed import resolve_device
from utils.experiment_utils import get_model, model_spec
from utils.io import read_json, write_csv

EVALUATION_CSV = "evaluation_results.csv"
EVALUATION_PER_CASE_CSV = "evaluation_per_case_results.csv"
TEST_COLUMNS = [f"test_{k}" for k in REGION_METRIC_KEYS] + ["test_dice_mean"]


def evaluate_run(run_dir: str | Path, data_path: str | None = None, device: str = "auto",
                 cache_dir: str | None = None) -> pd.DataFrame:
    """Evaluate every ``*_best.pth`` of ``run_dir``; returns (and writes) the evaluation table."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "splits.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (config.json and splits.json are needed)")
    saved = read_json(run_dir / "config.json")["config"]
    overrides = {k: v for k, v in {"data_path": data_path, "cache_dir": cache_dir}.items() if v is not None}
    cfg = ExperimentConfig.from_dict({**saved, **overrides, "resume": None})
    splits = read_json(run_dir / "splits.json")
    checkpoints = sorted(run_dir.glob("*_best.pth"))
    if not checkpoints:
        raise FileNotFoundError(f"no *_best.pth checkpoints in {run_dir}")
    torch_device = resolve_device(device)

    cases = dl.discover_cases(Path(cfg.data_path), cfg.dataset_version, max_samples=cfg.max_samples)
    cache = dl.PreprocessedCache(cfg.resolved_cache_dir(), cases)
    cache.build(num_workers=1, progress=True, skip_bad_cases=cfg.skip_bad_cases)

    rows, per_case = [], []
    for path in checkpoints:
        ckpt = load_checkpoint(path, BEST_KEYS + ("seed", "fold"))
        name, seed, fold = ckpt["model_name"], int(ckpt["seed"]), int(ckpt["fold"])
        fold_split = next((f for f in splits[str(seed)]["folds"] if f["fold"] == fold), None)
        if fold_split is None:
            raise CheckpointError(f"{path}: seed {seed} fold {fold} is not in {run_dir / 'splits.json'}")
        model = get_model(name, cfg.dim, cfg.spatial_patch)
        model.load_state_dict(ckpt["state_dict"])
        model.to(torch_device)
        result = evaluate_model(model, cache, fold_split["test"], model_spec(name).modalities, dim=cfg.dim,
                                patch=cfg.spatial_patch, overlap=cfg.overlap, device=torch_device,
                                amp=cfg.resolved_amp(torch_device), sw_batch_size=cfg.sw_batch_size,
                                desc=f"evaluate {path.name}")
        key = {"model": name, "seed": seed, "fold": fold}
        rows.append({**key, **result.summary(), "best_epoch": ckpt["epoch"], "best_val_dice": ckpt["best_val_dice"],
                     "checkpoint": path.name})
        per_case += [{**key, **r} for r in result.per_case]
    table = pd.DataFrame(rows)
    table = table[UNIT_COLUMNS + TEST_COLUMNS + [c for c in table.columns if c not in UNIT_COLUMNS + TEST_COLUMNS]]
    write_csv(run_dir / EVALUATION_CSV, table)
    write_csv(run_dir / EVALUATION_PER_CASE_CSV, pd.DataFrame(per_case, columns=PER_CASE_COLUMNS))
    return table


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
        print(table[UNIT_COLUMNS + TEST_COLUMNS].to_string(index=False))
    print(f"written: {Path(args.results_dir) / EVALUATION_CSV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
