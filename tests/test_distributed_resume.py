"""The CLI as users launch it, in subprocesses: torchrun with two CPU processes (gloo), and a run
killed with SIGKILL then continued with --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import data_loader as dl
from metrics import REGION_METRIC_KEYS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 48, 40)
N_CASES = 10


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    dl.generate_synthetic_dataset(root, n_cases=N_CASES, seed=0, shape=SHAPE)
    return root


def cli_args(data_root: Path, results: Path, *extra: str) -> list[str]:
    return [
        "--dataset_version", "synthetic", "--data_path", str(data_root), "--synthetic_cases", str(N_CASES),
        "--synthetic_shape", *map(str, SHAPE), "--cache_dir", str(data_root / "cache"), "--dim", "3d",
        "--patch_size", "32", "32", "32", "--batch_size", "2", "--patches_per_case", "2", "--num_workers", "0",
        "--device", "cpu", "--results_dir", str(results), "--no_efficiency", "--lr", "3e-3", *extra,
    ]


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    return env


def only_run_dir(results: Path) -> Path:
    runs = list(results.glob("integrated_experiment_results_*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_torchrun_two_processes_gloo(data_root, tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "integrated_experiment.py"),
           *cli_args(data_root, results, "--models", "unet3d_xs", "--seeds", "24", "42", "--epochs", "2")]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = only_run_dir(results)
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch_size"] == 4
    res = pd.read_csv(run / "integrated_experiment_results.csv")
    assert sorted(zip(res["model"], res["seed"])) == [("unet3d_xs", 24), ("unet3d_xs", 42)]
    assert res["ranks_in_sync"].all(), "DDP ranks must end with identical weights"
    assert (res["world_size"] == 2).all()
    epochs = pd.read_csv(run / "all_epochs_results.csv")
    assert len(epochs) == 4 and not epochs.duplicated(["model", "seed", "fold", "epoch"]).any()
    # every test case scored once although the cases were sharded over the two ranks
    per_case = pd.read_csv(run / "per_case_results.csv")
    splits = json.loads((run / "splits.json").read_text())
    for seed in (24, 42):
        assert sorted(per_case.query("seed == @seed")["case_id"]) == sorted(splits[str(seed)]["folds"][0]["test"])
    for seed in (24, 42):
        ckpt = torch.load(run / f"unet3d_xs_seed_{seed}_best.pth", weights_only=True)
        assert ckpt["model_name"] == "unet3d_xs" and not any(k.startswith("module.") for k in ckpt["state_dict"])
    # the default tracker under torchrun: rank 0 alone writes, one TensorBoard run (one event file) per unit
    units = sorted((run / "tensorboard").iterdir())
    assert [u.name for u in units] == ["unet3d_xs_seed_24", "unet3d_xs_seed_42"]
    assert all(len(list(u.glob("events.out.tfevents.*"))) == 1 for u in units)
    assert (run / "report.html").is_file()


def _wait_for_epoch_row(path: Path, model: str, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it could be killed: {proc.stderr.read()[-3000:]}")
        if path.exists():
            try:
                df = pd.read_csv(path)
            except (pd.errors.EmptyDataError, pd.errors.ParserError):
                df = pd.DataFrame()
            if not df.empty and (df["model"] == model).any():
                return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the second model's first epoch")


def test_sigkill_then_resume_matches_an_uninterrupted_run(data_root, tmp_path):
    models = ["unet3d_xs", "unet3d_stride_xs"]
    extra = ("--models", *models, "--epochs", "3", "--deterministic")
    script = str(ROOT / "integrated_experiment.py")

    reference = tmp_path / "reference"
    ref = subprocess.run([sys.executable, script, *cli_args(data_root, reference, *extra)], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_dir = only_run_dir(reference)

    results = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, script, *cli_args(data_root, results, *extra)], cwd=ROOT,
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        results.mkdir(exist_ok=True)
        while not list(results.glob("integrated_experiment_results_*")):
            time.sleep(0.05)
        run = only_run_dir(results)
        _wait_for_epoch_row(run / "all_epochs_results.csv", models[1], proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed = pd.read_csv(run / "integrated_experiment_results.csv")
    assert list(killed["model"]) == [models[0]], "the first model had finished before the kill"

    resumed = subprocess.run([sys.executable, script, "--resume", str(run), "--device", "cpu", "--num_workers", "0"],
                             cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch" in resumed.stdout
    assert only_run_dir(results) == run

    keys = ["model", "seed", "fold"]
    got = pd.read_csv(run / "integrated_experiment_results.csv").sort_values(keys).reset_index(drop=True)
    want = pd.read_csv(ref_dir / "integrated_experiment_results.csv").sort_values(keys).reset_index(drop=True)
    assert list(got["model"]) == sorted(models)
    cols = [f"test_{k}" for k in REGION_METRIC_KEYS] + ["best_epoch", "best_val_dice"]
    pd.testing.assert_frame_equal(got[keys + cols], want[keys + cols], rtol=1e-5)
    epochs = pd.read_csv(run / "all_epochs_results.csv")
    assert len(epochs) == 2 * 3 and not epochs.duplicated(keys + ["epoch"]).any()
    ref_epochs = pd.read_csv(ref_dir / "all_epochs_results.csv")
    order = keys + ["epoch"]
    pd.testing.assert_frame_equal(
        epochs.sort_values(order)[order + ["train_loss", "val_dice_mean"]].reset_index(drop=True),
        ref_epochs.sort_values(order)[order + ["train_loss", "val_dice_mean"]].reset_index(drop=True), rtol=1e-5)
    # TensorBoard (the default tracker): the killed unit's run got the resumed process's event file, and each step
    # shows once: what the killed process logged after the last checkpoint is discarded, that epoch logged again
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = json.loads((run / "config.json").read_text())["steps_per_epoch"]
    assert len(list((run / "tensorboard" / f"{models[1]}_seed_24").glob("events.out.tfevents.*"))) == 2
    for model in models:
        acc = EventAccumulator(str(run / "tensorboard" / f"{model}_seed_24"), size_guidance={"scalars": 0})
        acc.Reload()
        losses = acc.Scalars("train/loss")
        assert [e.step for e in losses] == [steps, 2 * steps, 3 * steps], model
        rows = epochs[epochs["model"] == model].sort_values("epoch")
        assert [e.value for e in losses] == pytest.approx(list(rows["train_loss"]), rel=1e-6)
        running = [e.step for e in acc.Scalars("train/loss_running")]
        assert running == sorted(set(running)) and running[-1] == 3 * steps, model
        assert [e.step for e in acc.Scalars("test/dice_mean")] == [3 * steps]


def test_sigterm_stops_cleanly_and_leaves_a_resumable_run(data_root, tmp_path):
    results = tmp_path / "results"
    script = str(ROOT / "integrated_experiment.py")
    proc = subprocess.Popen([sys.executable, script, *cli_args(data_root, results, "--models", "unet3d_xs",
                                                                "--epochs", "4")],
                            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        results.mkdir(exist_ok=True)
        while not list(results.glob("integrated_experiment_results_*")):
            time.sleep(0.05)
        run = only_run_dir(results)
        _wait_for_epoch_row(run / "all_epochs_results.csv", "unet3d_xs", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, proc.stderr.read()[-2000:]
    last = run / "last" / "unet3d_xs_seed_24_last.pth"
    state = torch.load(last, weights_only=True)
    assert state["epoch"] >= 0 and {"optimizer", "scheduler", "rng", "curves"} <= set(state)
