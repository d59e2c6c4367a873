"""Beyond one launcher, on one machine (gloo, CPU): two torchrun launchers meeting through a c10d rendezvous
(``--nnodes 2 --node_rank {0,1}``, one process each, as two nodes would) run one experiment into one run folder
with the metrics of the same command under one ``torchrun --standalone --nproc_per_node 2``; and predict.py
under torchrun shares the cases out over its processes and writes the files one process writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import data_loader as dl
from metrics import REGION_METRIC_KEYS
from tests.test_predict import tiny_run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 48, 40)
N_CASES = 10
KEYS = ["model", "seed", "fold"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher]


def test_two_launchers_through_a_c10d_rendezvous_equal_one_launcher_of_two_processes(tmp_path):
    data = tmp_path / "data"
    dl.generate_synthetic_dataset(data, n_cases=N_CASES, seed=0, shape=SHAPE)
    args = ["--dataset_version", "synthetic", "--data_path", str(data), "--synthetic_cases", str(N_CASES),
            "--synthetic_shape", *map(str, SHAPE), "--cache_dir", str(data / "cache"), "--dim", "3d",
            "--patch_size", "32", "32", "32", "--batch_size", "2", "--patches_per_case", "2", "--num_workers", "0",
            "--device", "cpu", "--no_efficiency", "--lr", "3e-3", "--models", "unet3d_xs", "--epochs", "1",
            "--deterministic"]
    script = str(ROOT / "integrated_experiment.py")
    one = subprocess.run(torchrun("--standalone", "--nproc_per_node=2", script, *args, "--results_dir",
                                  str(tmp_path / "one")), cwd=ROOT, env=child_env(), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    port = free_port()
    nodes = [subprocess.Popen(torchrun("--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                                       "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                                       "--rdzv_id", "two_nodes", script, *args, "--results_dir", str(tmp_path / "two")),
                              cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]

    runs = list((tmp_path / "two").iterdir())
    assert len(runs) == 1, f"both nodes use rank 0's run folder: {runs}"
    (two,), (single,) = runs, list((tmp_path / "one").iterdir())
    cols = [f"test_{k}" for k in REGION_METRIC_KEYS] + ["test_dice_mean", "best_epoch", "best_val_dice",
                                                          "steps_per_epoch", "world_size"]
    got = pd.read_csv(two / "integrated_experiment_results.csv")
    want = pd.read_csv(single / "integrated_experiment_results.csv")
    assert got["ranks_in_sync"].all() and (got["world_size"] == 2).all() and len(got) == 1
    pd.testing.assert_frame_equal(got[KEYS + cols], want[KEYS + cols], check_exact=True)
    epochs = [pd.read_csv(run / "all_epochs_results.csv")[KEYS + ["epoch", "train_loss", "val_dice_mean"]]
              for run in (two, single)]
    pd.testing.assert_frame_equal(epochs[0], epochs[1], check_exact=True)
    per_case = [pd.read_csv(run / "per_case_results.csv").sort_values("case_id").reset_index(drop=True)
                for run in (two, single)]
    pd.testing.assert_frame_equal(per_case[0], per_case[1], check_exact=True)


def test_predict_under_torchrun_writes_the_files_of_one_process(tmp_path_factory, tmp_path):
    run, cases = tiny_run(tmp_path_factory)  # 4 cases, 2 checkpoints
    common = ["--run_dir", str(run), "--input", str(cases), "--device", "cpu", "--save_probabilities"]
    # both in subprocesses with one thread each: CPU kernels sum in an order that depends on the thread count
    one = subprocess.run([sys.executable, str(ROOT / "predict.py"), *common, "--output", str(tmp_path / "one")],
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "on 2 processes" not in one.stdout and "cases/s" in one.stdout.strip().splitlines()[-1]
    proc = subprocess.run(torchrun("--standalone", "--nproc_per_node=2", str(ROOT / "predict.py"), *common,
                                   "--output", str(tmp_path / "two")),
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("predicted 4 case(s) with 2 checkpoint(s) on 2 processes (2 + 2 cases)"), last
    assert "cases/s" in last
    assert proc.stdout.count("predicted ") == 1, "one summary (rank 0's), counting every rank's cases"
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 2 * 4
    for name in names:
        one, two = tmp_path / "one" / name, tmp_path / "two" / name
        if name.endswith(".nii.gz"):
            assert one.read_bytes() == two.read_bytes(), name
        else:  # .npz: a zip whose entries carry their write time; the arrays must be equal
            a, b = np.load(one), np.load(two)
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
