"""Real BraTS scale on tiny data: bounded open files over > 1,000 cases, patient-grouped and
stratified splits, the training budget in steps (one process and two), preprocessing as its own
step, gradient clipping, validation every K epochs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

import data_loader as dl
import integrated_experiment
from brats_data.datasets import MAX_OPEN_CASES
from brats_data.splits import make_splits, patient_id, read_patient_map, stratified_subset
from experiment.config import ExperimentConfig
from experiment.data import training_budget
from training.trainer import UnitTrainer
from utils.experiment_utils import get_model

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 48, 40)


# ----------------------------------------------------------------------------- open files
def _many_cases(root: Path, n: int) -> Path:
    """``n`` tiny cases in the BraTS 2021 layout, copies of two small synthetic cases (cheap to build)."""
    dl.generate_synthetic_dataset(root / "src", n_cases=2, seed=0, shape=(16, 16, 16), difficulty="easy")
    src = root / "src" / "BRATS_SYNTHETIC" / "BraTS2021_Training_Data"
    out = root / "BRATS2021" / "BraTS2021_Training_Data"
    for i in range(n):
        template = src / f"BraTS2021_0000{i % 2}"
        case = out / f"BraTS2021_{i:05d}"
        case.mkdir(parents=True)
        for f in template.iterdir():
            shutil.copyfile(f, case / f.name.replace(template.name, case.name))
    return root


CHILD = textwrap.dedent("""
    import os, resource, sys, torch
    sys.path.insert(0, {root!r})
    import data_loader as dl
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    class Probe(dl.PatchDataset):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x, y, torch.tensor(len(os.listdir("/proc/self/fd")))

    cases = dl.discover_cases({data!r}, "brats2021")
    cache = dl.PreprocessedCache({cache!r}, cases)
    ds = Probe(cache, cache.case_ids, ["t1ce", "flair"], (8, 8, 8), samples_per_epoch=len(cases), seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    peak, n, dtype = 0, 0, None
    for x, y, fds in loader:
        peak, n, dtype = max(peak, int(fds.max())), n + len(x), y.dtype
    print(peak, n, dtype)
""")


@pytest.mark.slow
def test_an_epoch_over_1100_cases_stays_under_256_open_files(tmp_path):
    n = 1100
    root = _many_cases(tmp_path, n)
    cases = dl.discover_cases(root, "brats2021")
    dl.PreprocessedCache(tmp_path / "cache", cases).build(num_workers=2, progress=False)
    script = CHILD.format(root=str(ROOT), data=str(root), cache=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak, seen, dtype = proc.stdout.split()
    assert int(seen) == n and dtype == "torch.uint8", "every case read once; labels stay uint8 in the loader"
    assert int(peak) < 3 * MAX_OPEN_CASES + 40, f"a worker held {peak} open files"


# ----------------------------------------------------------------------------- splits
def test_brats2023_timepoints_of_one_patient_never_cross_splits_or_folds():
    ids = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(60) for t in range(1 + p % 3)]
    assert patient_id("BraTS-GLI-00007-002") == "BraTS-GLI-00007" and patient_id("BraTS2021_00007") == "BraTS2021_00007"
    for use_5fold in (False, True):
        for seed in range(5):
            split = make_splits(ids, seed=seed, use_5fold=use_5fold)
            tests = []
            for fold in split["folds"]:
                where = {}
                for part in ("train", "val", "test"):
                    for cid in fold[part]:
                        assert where.setdefault(patient_id(cid), part) == part, (cid, fold["fold"])
                tests += fold["test"]
            if use_5fold:
                assert sorted(tests) == sorted(ids), "every case is tested exactly once"
            assert split["cases"]["BraTS-GLI-00005-002"]["group"] == "BraTS-GLI-00005"


def test_2018_stratification_keeps_the_lgg_share_of_every_split_within_one_case():
    ids = [f"Brats18_{i:03d}" for i in range(285)]
    grade = {cid: "LGG" if i % 19 < 5 else "HGG" for i, cid in enumerate(ids)}  # 75 LGG, like BraTS 2018
    et = {cid: "ET" if i % 7 else "no-ET" for i, cid in enumerate(ids)}
    strata = {cid: f"{grade[cid]}/{et[cid]}" for cid in ids}
    share = sum(g == "LGG" for g in grade.values()) / len(ids)
    for seed in range(20):
        for use_5fold in (False, True):
            split = make_splits(ids, seed=seed, use_5fold=use_5fold, strata=strata)
            for fold in split["folds"]:
                for part in ("train", "val", "test"):
                    lgg = sum(grade[c] == "LGG" for c in fold[part])
                    assert abs(lgg - share * len(fold[part])) <= 1.0, (seed, part, lgg, len(fold[part]))
            assert split["cases"][ids[0]]["stratum"] == strata[ids[0]]
    assert make_splits(list(reversed(ids)), seed=3, strata=strata) == make_splits(ids, seed=3, strata=strata)


def test_max_samples_subset_is_seeded_stratified_and_whole_patients():
    ids = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(100) for t in range(2)]
    strata = {cid: "LGG" if int(cid[10:15]) % 4 == 0 else "HGG" for cid in ids}
    subset = stratified_subset(ids, 40, seed=0, strata=strata)
    assert subset == stratified_subset(list(reversed(ids)), 40, seed=0, strata=strata)
    assert subset != sorted(ids)[:40], "not the first N ids"
    assert Counter(patient_id(c) for c in subset) == Counter({p: 2 for p in {patient_id(c) for c in subset}})
    assert sum(strata[c] == "LGG" for c in subset) == 10


def test_patient_map_groups_any_layout_and_must_cover_every_case(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("case_id,patient_id\na,p1\nb,p1\nc,p2\n")
    assert read_patient_map(path, ["a", "b", "c"]) == {"a": "p1", "b": "p1", "c": "p2"}
    with pytest.raises(ValueError, match="no patient"):
        read_patient_map(path, ["a", "b", "c", "d"])


# ----------------------------------------------------------------------------- budget and loop
def test_iters_per_epoch_fixes_the_steps_whatever_the_number_of_processes():
    cfg = ExperimentConfig(dim="3d", batch_size=4, iters_per_epoch=250, epochs=10)
    for world in (1, 2, 8):
        budget = training_budget(cfg, n_train=1000, world_size=world)
        assert budget["steps_per_epoch"] == 250 and budget["total_steps"] == 2500
        assert budget["global_batch_size"] == 4 * world and budget["samples_seen"] == 2500 * 4 * world
    plain = ExperimentConfig(dim="3d", batch_size=4, epochs=10)
    assert training_budget(plain, 1000, 1)["steps_per_epoch"] == 250
    assert training_budget(plain, 1000, 4)["steps_per_epoch"] == 63, "without it, steps shrink with the GPUs"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    dl.generate_synthetic_dataset(root, n_cases=10, seed=0, shape=SHAPE, difficulty="easy")
    return root


def cli_args(data_root: Path, results: Path, *extra: str) -> list[str]:
    return ["--dataset_version", "synthetic", "--data_path", str(data_root), "--synthetic_cases", "10",
            "--synthetic_shape", *map(str, SHAPE), "--synthetic_difficulty", "easy", "--cache_dir",
            str(data_root / "cache"), "--dim", "3d", "--patch_size", "32", "32", "32", "--batch_size", "1",
            "--num_workers", "0", "--device", "cpu", "--results_dir", str(results), "--no_efficiency",
            "--models", "unet3d_xs", *extra]


@pytest.mark.slow
def test_iters_per_epoch_gives_the_same_steps_in_one_and_two_processes(data_root, tmp_path):
    extra = ("--iters_per_epoch", "3", "--epochs", "2")
    env = {k: v for k, v in os.environ.items() if k != "RANK"} | {"OMP_NUM_THREADS": "1"}
    script = str(ROOT / "integrated_experiment.py")
    one = subprocess.run([sys.executable, script, *cli_args(data_root, tmp_path / "one", *extra)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                          *cli_args(data_root, tmp_path / "two", *extra)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    for proc, name, world in ((one, "one", 1), (two, "two", 2)):
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = next((tmp_path / name).glob("integrated_experiment_results_*"))
        config = json.loads((run / "config.json").read_text())
        assert (config["steps_per_epoch"], config["total_steps"]) == (3, 6)
        assert config["global_batch_size"] == world and config["samples_seen"] == 6 * world
        results = pd.read_csv(run / "integrated_experiment_results.csv")
        assert list(results["steps_per_epoch"]) == [3] and list(results["total_steps"]) == [6]
        assert "(" in (run / "run.log").read_text() and "3 steps)" in (run / "run.log").read_text()


@pytest.mark.slow
def test_preprocess_only_then_a_run_reuses_the_cache(data_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = cli_args(data_root, tmp_path / "results", "--epochs", "1", "--iters_per_epoch", "1")
    args[args.index("--cache_dir") + 1] = str(cache)
    assert integrated_experiment.main([*args, "--preprocess_only"]) == 0
    out = capsys.readouterr().out
    assert "preprocessed 10 cases" in out and "0 skipped" in out and "GiB on disk" in out
    assert not (tmp_path / "results").exists(), "nothing is trained"
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*/image.npy")}
    assert len(stamps) == 10
    assert integrated_experiment.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/image.npy")} == stamps, "no case was rebuilt"


def test_gradient_clipping_bounds_the_update_known_answer(monkeypatch):
    """With SGD at lr 1 in place of AdamW, the update is the clipped gradient: its norm is the clip."""
    cfg = ExperimentConfig(dim="3d", patch_size=[32, 32, 32], grad_clip=0.5, device="cpu")
    trainer = UnitTrainer.__new__(UnitTrainer)
    model = torch.nn.Linear(4, 1, bias=False)
    model.weight.data.zero_()
    trainer.cfg, trainer.device, trainer.model, trainer.train_module = cfg, torch.device("cpu"), model, model
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=False)
    monkeypatch.setattr(UnitTrainer, "compute_loss", lambda self, logits, label: (logits * 100).sum())
    trainer.autocast = lambda: torch.autocast("cpu", enabled=False)
    trainer.train_step(torch.ones(1, 4), torch.zeros(1, dtype=torch.uint8))
    assert model.weight.norm().item() == pytest.approx(0.5, rel=1e-5), "|update| = clip norm"
    cfg.grad_clip = 0.0
    model.weight.data.zero_()
    trainer.train_step(torch.ones(1, 4), torch.zeros(1, dtype=torch.uint8))
    assert model.weight.norm().item() == pytest.approx(200.0, rel=1e-5), "0 turns clipping off"


@pytest.mark.slow
def test_val_every_validates_every_kth_and_the_last_epoch(data_root, tmp_path):
    assert integrated_experiment.main(cli_args(data_root, tmp_path, "--epochs", "3", "--val_every", "2",
                                               "--iters_per_epoch", "1")) == 0
    run = next(tmp_path.glob("integrated_experiment_results_*"))
    epochs = pd.read_csv(run / "all_epochs_results.csv").set_index("epoch")
    assert epochs["val_dice_mean"].notna().tolist() == [False, True, True]
    best = pd.read_csv(run / "integrated_experiment_results.csv")["best_epoch"].item()
    assert best in (1, 2)


def test_batchnorm_becomes_syncbatchnorm_under_torchrun_on_gpus_only():
    """The conversion the trainer makes before wrapping in DDP (torch's SyncBatchNorm has no CPU kernel,
    so a gloo run keeps per-rank statistics; rank 0's are broadcast before each validation)."""
    from types import SimpleNamespace

    def converted(distributed: bool, device: str, sync_bn: bool = True) -> bool:
        trainer = UnitTrainer.__new__(UnitTrainer)
        trainer.ctx, trainer.device, trainer.unit = SimpleNamespace(distributed=distributed), torch.device(device), "u"
        trainer.cfg = ExperimentConfig(dim="3d", sync_bn=sync_bn)
        model = trainer._sync_batchnorm(get_model("dualbranch_04_unet_xs", "3d", (32, 32, 32)))
        return any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())

    assert converted(True, "cuda")
    assert not converted(True, "cuda", sync_bn=False) and not converted(True, "cpu") and not converted(False, "cuda")


def test_waiting_ranks_read_rank0s_status_not_a_stale_one(data_root, monkeypatch):
    """Other ranks wait on the file system for rank 0's build; a status file an older job left is ignored."""
    import threading
    import time
    from types import SimpleNamespace

    from experiment import data
    from utils.io import write_json

    cfg = ExperimentConfig(dataset_version="synthetic", data_path=str(data_root), synthetic_cases=10,
                           synthetic_shape=list(SHAPE), synthetic_difficulty="easy", cache_dir=str(data_root / "cache"),
                           dim="3d", device="cpu")
    data.prepare_data(cfg, SimpleNamespace(is_main=True, distributed=False))  # the cache exists
    status = data._status_file(cfg)
    write_json(status, {"status": "error", "message": "an older job's failure"})
    os.utime(status, (time.time() - 3600,) * 2)
    monkeypatch.setattr(data, "POLL_SECONDS", 0.05)
    timer = threading.Timer(0.5, lambda: write_json(status, {"status": "ok", "skipped": []}))
    timer.start()
    cache, skipped = data.prepare_data(cfg, SimpleNamespace(is_main=False, distributed=True))
    timer.join()
    assert skipped == [] and len(cache.case_ids) == 10
    status.unlink()
