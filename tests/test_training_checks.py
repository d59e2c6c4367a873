"""The training loop's GPU-speed changes, checked on CPU: the non-finite and stop checks (run every
few steps, not every step) still stop every rank at the same step and never checkpoint non-finite
weights; --channels_last, --compile and --grad_checkpoint give the plain run's metrics; stage-wise
PAM names the real stages; RepLK models are fused for latency; the GPU benchmark drives the
suite's own training function."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import data_loader as dl
from evaluation.efficiency import inference_copy, measure_efficiency, named_stages
from experiment.config import ExperimentConfig
from run.loop import run_experiment
from training import trainer as training
from utils import runtime
from utils.experiment_utils import get_model

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 48, 40)
N_CASES = 10


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    dl.generate_synthetic_dataset(root, n_cases=N_CASES, seed=0, shape=SHAPE)
    return root


def cli_args(data_root: Path, results: Path, *extra: str) -> list[str]:
    return ["--dataset_version", "synthetic", "--data_path", str(data_root), "--synthetic_cases", str(N_CASES),
            "--synthetic_shape", *map(str, SHAPE), "--cache_dir", str(data_root / "cache"), "--dim", "3d",
            "--patch_size", "32", "32", "32", "--batch_size", "1", "--patches_per_case", "2", "--num_workers", "0",
            "--device", "cpu", "--results_dir", str(results), "--no_efficiency", "--lr", "3e-3", *extra]


@pytest.mark.slow
def test_ranks_stop_together_and_never_checkpoint_non_finite_weights(data_root, tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RANK"} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_inject.py"), str(record),
           *cli_args(data_root, tmp_path / "results", "--models", "unet3d_xs", "unet3d_stride_xs", "--epochs", "3")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, "the stop request ends the run with 130 on every rank"
    run = next((tmp_path / "results").glob("integrated_experiment_results_*"))
    for model, error in (("unet3d_xs", "NonFiniteLoss"), ("unet3d_stride_xs", "Interrupted")):
        seen = [json.loads((record / f"{model}_rank{r}.json").read_text()) for r in (0, 1)]
        assert seen[0] == seen[1] == {"epoch": 1, "step": 2, "error": error}, (model, seen, proc.stderr[-3000:])
    failed = pd.read_csv(run / "failed_runs.csv")
    assert list(failed["model"]) == ["unet3d_xs"] and "non-finite" in failed.loc[0, "reason"]
    assert failed.loc[0, "epoch"] == 1
    checkpoints = list(run.rglob("*.pth"))
    assert {p.name for p in checkpoints} >= {"unet3d_xs_seed_24_best.pth", "unet3d_xs_seed_24_last.pth",
                                             "unet3d_stride_xs_seed_24_last.pth"}
    for path in checkpoints:
        state = torch.load(path, weights_only=True)
        assert state["epoch"] == 0, "nothing of the failed or stopped epoch is saved"
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point()), path


def _aot_eager_compile(monkeypatch) -> None:
    """The CPU test checks the wiring of --compile with a backend that compiles in seconds."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))


@pytest.mark.slow
@pytest.mark.parametrize("option", ["channels_last", "compile", "grad_checkpoint"])
def test_speed_options_give_the_plain_runs_metrics(data_root, tmp_path, monkeypatch, option):
    if option == "compile":
        _aot_eager_compile(monkeypatch)
    results = {}
    for name, flags in (("plain", {}), (option, {option: True})):
        cfg = ExperimentConfig(data_path=str(data_root), dataset_version="synthetic", synthetic_cases=N_CASES,
                               synthetic_shape=list(SHAPE), cache_dir=str(data_root / "cache"), epochs=1,
                               models=["unet3d_xs"], dim="3d", patch_size=[32, 32, 32], num_workers=0,
                               results_dir=str(tmp_path / name), device="cpu", patches_per_case=2, lr=3e-3,
                               batch_size=2, deterministic=True, measure_efficiency=False, **flags)
        summary = run_experiment(cfg)
        assert summary.exit_code == 0
        results[name] = (pd.read_csv(summary.run_dir / "integrated_experiment_results.csv").iloc[0],
                         pd.read_csv(summary.run_dir / "all_epochs_results.csv").iloc[0],
                         torch.load(summary.run_dir / "unet3d_xs_seed_24_best.pth", weights_only=True))
    (plain, plain_epoch, plain_ckpt), (other, other_epoch, other_ckpt) = results["plain"], results[option]
    assert other_epoch["train_loss"] == pytest.approx(plain_epoch["train_loss"], rel=1e-3)
    for key in ("dice_wt", "dice_tc", "dice_et"):
        assert other[f"test_{key}"] == pytest.approx(plain[f"test_{key}"], abs=0.01), key
    assert set(other_ckpt["state_dict"]) == set(plain_ckpt["state_dict"]), "checkpoints hold the bare model's keys"
    assert not any(k.startswith("_orig_mod") for k in other_ckpt["state_dict"])


def test_grad_checkpoint_gives_the_same_gradients_and_uses_monai_where_it_can():
    torch.manual_seed(0)
    plain = get_model("unet3d_xs", "3d", (32, 32, 32))
    checkpointed = get_model("unet3d_xs", "3d", (32, 32, 32))
    checkpointed.load_state_dict(plain.state_dict())
    assert "stages checkpointed" in runtime.enable_grad_checkpoint(checkpointed)
    x = torch.randn(2, 2, 32, 32, 32)
    for model in (plain, checkpointed):
        model.train()
        model(x).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    swin = get_model("swin_unetr", "3d", (64, 64, 64))
    assert runtime.enable_grad_checkpoint(swin).startswith("MONAI use_checkpoint")
    assert all(m.use_checkpoint for m in swin.modules() if hasattr(m, "use_checkpoint"))


def test_stage_wise_pam_names_every_branch_stage_fusion_bottleneck_and_decoder():
    names = [n for n, _ in named_stages(get_model("dualbranch_01_unet_s", "3d", (32, 32, 32)))]
    for branch in ("t1ce", "flair"):
        assert [n for n in names if n.startswith(f"branch_{branch}.")] == [
            f"branch_{branch}.stage{i}" for i in range(1, 5)]
    assert {"fusion", "bottleneck", "head"} <= set(names)
    assert [n for n in names if n.startswith("decoder")] == ["decoder4", "decoder3", "decoder2", "decoder1"]
    assert names.index("branch_flair.stage4") < names.index("fusion") < names.index("bottleneck")


def test_replk_models_are_fused_for_latency_with_the_same_output():
    model = get_model("dualbranch_04_unet_xs", "3d", (32, 32, 32)).eval()
    fused, n = inference_copy(model)
    assert n > 0
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-3, atol=1e-4)
    cfg = ExperimentConfig(dim="3d", patch_size=[32, 32, 32], dataset_version="synthetic")
    _, _, notes = measure_efficiency("dualbranch_04_unet_xs", cfg, torch.device("cpu"))
    assert f"latency with {n} RepLK convolutions re-parameterised" in notes
    assert inference_copy(get_model("unet3d_xs", "3d", (32, 32, 32)))[1] == 0


@pytest.mark.slow
def test_gpu_benchmark_times_the_suites_own_training_epoch(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []
    train_epoch = training.UnitTrainer.train_epoch

    def spy(self, loader, epoch):
        calls.append((self.model_name, epoch, len(loader)))
        return train_epoch(self, loader, epoch)

    monkeypatch.setattr(training.UnitTrainer, "train_epoch", spy)
    t_loop, t_bare, n = bench.loop_vs_bare("unet3d_xs", (32, 32, 32), (40, 48, 48), torch.device("cpu"), 8, 0,
                                           tmp_path)
    assert calls == [("unet3d_xs", 0, n), ("unet3d_xs", 1, n)] and n == 8
    assert t_loop > 0 and t_bare > 0
    assert not list(tmp_path.rglob("integrated_experiment_results.csv")), "the benchmark writes no results"
    # with the nnunet augmentation the loop is fed the loader's larger regions and augments them on the device
    shapes = []
    batch_transform = training.UnitTrainer.batch_transform

    def spy_transform(self, image, label):
        out = batch_transform(self, image, label)
        shapes.append((tuple(image.shape[2:]), tuple(out[0].shape[2:])))
        return out

    monkeypatch.setattr(training.UnitTrainer, "batch_transform", spy_transform)
    bench.loop_vs_bare("unet3d_xs", (32, 32, 32), (40, 48, 48), torch.device("cpu"), 4, 0, tmp_path / "aug", "nnunet")
    loop_calls = [big for big, _ in shapes if big != (32, 32, 32)]  # then the bare steps on the augmented batch
    assert len(loop_calls) == 2 * 4 + 1 and all(min(big) > 32 for big in loop_calls)  # + the bare batch
    assert all(small == (32, 32, 32) for _, small in shapes)
