"""Under torchrun, the metrics a run reports are those of the checkpoint it saves: every rank
validates and tests with rank 0's weights and buffers (BatchNorm running statistics included), so
re-evaluating the saved checkpoints in one process gives the run's test metrics exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import data_loader as dl
from metrics import REGION_METRIC_KEYS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 48, 40)
N_CASES = 40  # 4 test cases: 2 per rank
BATCHNORM_MODELS = ["dualbranch_04_unet_xs"]  # its RepLK blocks hold BatchNorm
OTHER_MODELS = ["dualbranch_14_mobilenetv2_expand2_xs"]


def test_two_ranks_report_the_metrics_of_the_saved_checkpoints(tmp_path):
    data = tmp_path / "data"
    dl.generate_synthetic_dataset(data, n_cases=N_CASES, seed=0, shape=SHAPE, difficulty="easy")
    env = {k: v for k, v in os.environ.items() if k != "RANK"} | {"OMP_NUM_THREADS": "1"}
    args = ["--dataset_version", "synthetic", "--data_path", str(data), "--synthetic_cases", str(N_CASES),
            "--synthetic_shape", *map(str, SHAPE), "--synthetic_difficulty", "easy", "--dim", "3d",
            "--patch_size", "32", "32", "32", "--batch_size", "2", "--patches_per_case", "1", "--num_workers", "0",
            "--device", "cpu", "--results_dir", str(tmp_path / "results"), "--no_efficiency", "--epochs", "1",
            "--models", *BATCHNORM_MODELS, *OTHER_MODELS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "integrated_experiment.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = next((tmp_path / "results").glob("integrated_experiment_results_*"))
    results = pd.read_csv(run / "integrated_experiment_results.csv").set_index(["model", "seed", "fold"])
    assert sorted(results.index.get_level_values("model")) == sorted(BATCHNORM_MODELS + OTHER_MODELS)
    assert results["ranks_in_sync"].all() and (results["world_size"] == 2).all()
    assert (results["n_test_cases"] == 4).all()

    evaluate = subprocess.run([sys.executable, str(ROOT / "evaluate_experiment.py"), "--results_dir", str(run),
                               "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    evaluated = pd.read_csv(run / "evaluation_results.csv").set_index(["model", "seed", "fold"])
    columns = [f"test_{k}" for k in REGION_METRIC_KEYS] + ["test_dice_mean"]
    pd.testing.assert_frame_equal(evaluated.loc[results.index, columns], results[columns], check_exact=True)
