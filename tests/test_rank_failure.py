"""One rank's exception inside a unit reaches every rank (run/rank_failure.py): rank 0's decision from
the ranks' collective sequence numbers (a store in memory), and the CLI under torchrun on gloo with exceptions
injected on both ranks (the run goes on) and on rank 1 only, inside DDP's step (the job ends in seconds, the
unit recorded, earlier results intact), then --resume."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import data_loader as dl
from experiment.run_folder import UnitKey
from run.rank_failure import CONTINUE, DEFAULT_TIMEOUT_S, END, EXIT_JOB_ENDED, RankFailureWatch, failure_timeout_s

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the decision
class MemoryStore:
    """The calls of a torch.distributed store the watch makes (set, get, check), in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.data[key] = value.encode() if isinstance(value, str) else value

    def get(self, key: str) -> bytes:
        return self.data[key]

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)


class Left(Exception):
    pass


def leave(code: int) -> None:
    raise Left(code)


def watches(world: int, seqs: list[int], timeout_s: float = 60.0) -> tuple[MemoryStore, list, list]:
    store, ended = MemoryStore(), []
    made = [RankFailureWatch(store, r, world, lambda *a: ended.append(a), timeout_s=timeout_s, poll_s=0.01,
                             exit_process=leave, seq=lambda r=r: seqs[r]) for r in range(world)]
    return store, made, ended


def post_failure(watch: RankFailureWatch, unit: str, seq: int) -> None:
    """What ``unit_failed`` writes before it waits for the decision."""
    key = UnitKey("unet3d_xs", 24, 0)
    record = {**key.as_dict(), "epoch": 2, "reason": f"RuntimeError: out of memory on rank {watch.rank}", "seq": seq}
    watch._failed_here.add(unit)
    watch.store.set(watch._key(unit, "failed", watch.rank), json.dumps(record))
    watch.store.set(watch._key("active"), unit)


def decision(store: MemoryStore, watch: RankFailureWatch, unit: str) -> str | None:
    return watch._get(watch._key(unit, "decision"))


def test_every_rank_failing_at_the_same_point_goes_on():
    store, (w0, w1), ended = watches(2, [9, 9])
    post_failure(w1, "u", 9)
    w1._poll()
    w0._poll()
    assert decision(store, w0, "u") is None, "rank 0 is still computing at the same point: wait"
    post_failure(w0, "u", 9)
    w0._poll()
    assert decision(store, w0, "u") == CONTINUE and not ended
    w1._poll()  # the other ranks see it and stay


def test_a_rank_waiting_in_a_collective_ends_the_job_at_once():
    seqs = [9, 9]
    store, (w0, w1), ended = watches(2, seqs)
    post_failure(w1, "u", 9)
    w0._poll()
    assert decision(store, w0, "u") is None
    seqs[0] = 10  # rank 0 entered DDP's gradient all-reduce, which rank 1 never will
    with pytest.raises(Left, match=str(EXIT_JOB_ENDED)):
        w0._poll()
    assert decision(store, w0, "u") == END
    ((key, epoch, reason),) = ended
    assert key == UnitKey("unet3d_xs", 24, 0) and epoch == 2
    assert "out of memory on rank 1" in reason and "on rank 1 of 2" in reason and "rank(s) 0 waited" in reason
    with pytest.raises(Left):
        w1._poll()  # every other rank leaves too


def test_ranks_failing_at_different_points_or_too_late_end_the_job():
    store, (w0, w1, w2), ended = watches(3, [5, 7, 5])
    post_failure(w0, "u", 5)
    post_failure(w1, "u", 7)
    with pytest.raises(Left):
        w0._poll()
    assert "different points" in ended[0][2]
    store, (w0, w1), ended = watches(2, [4, 4], timeout_s=0.05)
    post_failure(w1, "u", 4)
    w0._poll()
    time.sleep(0.1)
    with pytest.raises(Left):
        w0._poll()
    assert "no other rank failed there within" in ended[0][2]


def test_the_failing_rank_waits_for_the_decision_and_the_timeout_is_configurable(monkeypatch):
    store, (w0, w1), _ = watches(2, [3, 3])
    store.set(w1._key("u", "decision"), CONTINUE)
    w1.unit_failed(UnitKey("m", 1, 0), "u", 0, RuntimeError("boom"))  # returns: every rank failed alike
    assert json.loads(store.get(w1._key("u", "failed", 1)))["reason"] == "RuntimeError: boom"
    store.set(w1._key("v", "decision"), END)
    with pytest.raises(Left):
        w1.unit_failed(UnitKey("m", 1, 0), "v", 0, RuntimeError("boom"))
    monkeypatch.setenv("BRATS_FAILURE_TIMEOUT_S", "12.5")
    assert failure_timeout_s() == 12.5
    monkeypatch.setenv("BRATS_FAILURE_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="BRATS_FAILURE_TIMEOUT_S"):
        failure_timeout_s()


# ----------------------------------------------------------------------------- the CLI under torchrun
SHAPE = (48, 48, 40)
N_CASES = 10
# README: "both processes gone 0.7 s after the exception"; the default timeout is 60 s (see the tests below)
LATENCY_BOUND_S = 10.0
assert LATENCY_BOUND_S * 5 < DEFAULT_TIMEOUT_S, "the bound must tell the decision from the timeout"


def cli_args(data: Path, results: Path, *extra: str) -> list[str]:
    return ["--dataset_version", "synthetic", "--data_path", str(data), "--synthetic_cases", str(N_CASES),
            "--synthetic_shape", *map(str, SHAPE), "--cache_dir", str(data / "cache"), "--dim", "3d",
            "--patch_size", "32", "32", "32", "--batch_size", "2", "--patches_per_case", "2", "--num_workers", "0",
            "--device", "cpu", "--results_dir", str(results), "--no_efficiency", "--lr", "3e-3", "--deterministic",
            *(extra or ("--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "24", "42", "--epochs", "2"))]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RANK"} | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("BRATS_FAILURE_TIMEOUT_S", None)  # the default bound
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    dl.generate_synthetic_dataset(root, n_cases=N_CASES, seed=0, shape=SHAPE)
    return root


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_one_ranks_exception_ends_the_job_in_seconds_and_resume_finishes_it(data, tmp_path):
    results, record, env = tmp_path / "results", tmp_path / "record", child_env()
    record.mkdir()
    # units: (unet3d_xs, 24), (unet3d_stride_xs, 24), (unet3d_xs, 42), (unet3d_stride_xs, 42)
    specs = [{"model": "unet3d_stride_xs", "seed": 24, "epoch": 0, "step": 2, "ranks": [0, 1]},  # both: goes on
             {"model": "unet3d_xs", "seed": 42, "epoch": 1, "step": 2, "ranks": [1]}]  # rank 1 only, in DDP's step
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_fail_inject.py"), str(record), json.dumps(specs), *cli_args(data, results)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    ended = time.time()
    assert proc.returncode != 0, "the job ends non-zero"
    assert "exitcode  : 3" in proc.stderr, proc.stderr[-3000:]
    raised = json.loads((record / "raised_unet3d_xs_42_rank1.json").read_text())
    assert not (record / "raised_unet3d_xs_42_rank0.json").exists()
    latency = ended - raised["time"]
    print(f"one rank's exception -> both ranks gone in {latency:.1f} s")
    # the claim: ended by the sequence-number decision within a poll interval or two (0.7 s measured), not by the
    # 60 s timeout (BRATS_FAILURE_TIMEOUT_S unset: the default). 10 s leaves a 2-core machine shared with other jobs
    # room for torchrun's teardown, yet is 6x below the timeout, and a watchdog that polled rarely (or decided on the
    # timeout only) would miss it; `< 60` could not tell the decision from the timeout
    assert latency < LATENCY_BOUND_S, f"the job took {latency:.1f} s to end after rank 1's exception"

    run = next(results.iterdir())
    failed = pd.read_csv(run / "failed_runs.csv")
    assert list(zip(failed["model"], failed["seed"], failed["epoch"])) == [("unet3d_stride_xs", 24, 0),
                                                                          ("unet3d_xs", 42, 1)]
    assert "injected on rank 0" in failed.loc[0, "reason"], "both ranks failed alike: recorded, run went on"
    assert "injected on rank 1" in failed.loc[1, "reason"] and "on rank 1 of 2" in failed.loc[1, "reason"]
    finished = pd.read_csv(run / "integrated_experiment_results.csv")
    assert list(zip(finished["model"], finished["seed"])) == [("unet3d_xs", 24)]
    assert finished["ranks_in_sync"].all()
    kept = digest(run / "unet3d_xs_seed_24_best.pth")
    last = torch.load(run / "last" / "unet3d_xs_seed_42_last.pth", weights_only=True)
    assert last["epoch"] == 0, "the failed epoch saved nothing; the unit continues from its last checkpoint"
    run_log = (run / "run.log").read_text()
    assert "unit unet3d_xs_seed_42 failed" in run_log and "--resume" in run_log

    resume = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              str(ROOT / "integrated_experiment.py"), "--resume", str(run), "--device", "cpu", "--num_workers", "0"]
    proc = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[unet3d_xs_seed_42] resuming at epoch 1" in proc.stdout
    done = pd.read_csv(run / "integrated_experiment_results.csv")
    # the unit never tried first, then the failed ones, in the experiment's order
    assert list(zip(done["model"], done["seed"])) == [("unet3d_xs", 24), ("unet3d_stride_xs", 42),
                                                      ("unet3d_stride_xs", 24), ("unet3d_xs", 42)]
    assert done["ranks_in_sync"].all() and (done["world_size"] == 2).all()
    assert digest(run / "unet3d_xs_seed_24_best.pth") == kept, "earlier results are kept as they were"
    pd.testing.assert_frame_equal(done.iloc[:1], finished)
    epochs = pd.read_csv(run / "all_epochs_results.csv")
    assert len(epochs) == 4 * 2 and not epochs.duplicated(["model", "seed", "fold", "epoch"]).any()
    assert not (run / "last").exists()



@pytest.mark.slow
def test_one_ranks_exception_before_validation_ends_the_job_too(data, tmp_path):
    """Rank 1 raises as validation starts; rank 0 waits in the broadcast of rank 0's weights, then would wait in
    the gathering of the validation cases: the same prompt end."""
    results, record = tmp_path / "results", tmp_path / "record"
    record.mkdir()
    specs = [{"model": "unet3d_xs", "seed": 24, "epoch": 0, "step": "validate", "ranks": [1]}]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_fail_inject.py"), str(record), json.dumps(specs),
           *cli_args(data, results, "--models", "unet3d_xs", "--epochs", "1")]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    ended = time.time()
    assert proc.returncode != 0 and "exitcode  : 3" in proc.stderr, proc.stderr[-3000:]
    latency = ended - json.loads((record / "raised_unet3d_xs_24_rank1.json").read_text())["time"]
    assert latency < LATENCY_BOUND_S, f"the job took {latency:.1f} s to end after rank 1's exception"
    failed = pd.read_csv(next(results.iterdir()) / "failed_runs.csv")
    assert list(zip(failed["model"], failed["epoch"])) == [("unet3d_xs", 0)]
    reason = failed.loc[0, "reason"]
    assert "injected on rank 1" in reason and "rank(s) 0 waited in a collective" in reason
    print(f"one rank's exception before validation -> both ranks gone in {latency:.1f} s")
