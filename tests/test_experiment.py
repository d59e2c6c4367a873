"""End-to-end runs of the suite on a tiny synthetic dataset: the run-folder contract, evaluation
reproduction, 2D mode, 5-fold CV, failure containment, determinism and checkpoint safety."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import data_loader as dl
import evaluate_experiment
import integrated_experiment
from experiment.run_folder import MEASURED_COLUMNS
from experiment_runner import (
    EPOCH_COLUMNS,
    RESULT_COLUMNS,
    ExperimentConfig,
    run_integrated_experiment,
)
from metrics import REGION_METRIC_KEYS
from training.trainer import UnitTrainer
from utils.checkpoint import CheckpointError, load_checkpoint

pytestmark = pytest.mark.slow

SHAPE = (48, 48, 40)
N_CASES = 10
TIMING_COLUMNS = {*MEASURED_COLUMNS, "efficiency_notes"}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    dl.generate_synthetic_dataset(root, n_cases=N_CASES, seed=0, shape=SHAPE)
    return root


def tiny_config(data_root: Path, results: Path, **changes) -> ExperimentConfig:
    base = dict(
        data_path=str(data_root), dataset_version="synthetic", synthetic_cases=N_CASES,
        synthetic_shape=list(SHAPE), cache_dir=str(data_root / "cache"), epochs=2, models=["unet3d_xs"],
        dim="3d", patch_size=[32, 32, 32], num_workers=0, results_dir=str(results), device="cpu",
        patches_per_case=2, seeds=[24], lr=3e-3, batch_size=2,
    )
    base.update(changes)
    return ExperimentConfig(**base)


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    cfg = tiny_config(data_root, tmp_path_factory.mktemp("results"), models=["unet3d_xs", "unet3d_stride_xs"])
    summary = run_integrated_experiment(cfg)
    return cfg, summary


def test_run_writes_every_file_and_column(finished_run):
    cfg, summary = finished_run
    run = summary.run_dir
    assert summary.exit_code == 0 and not summary.failed
    assert run.name.startswith("integrated_experiment_results_")
    for name in ["config.json", "splits.json", "integrated_experiment_results.csv", "all_epochs_results.csv",
                 "per_case_results.csv", "model_comparison.csv", "stage_wise_pam_results.csv",
                 "learning_curves.png", "model_comparison_chart.png", "parameter_efficiency.png",
                 "interactive_3d_analysis.html", "unet3d_xs_seed_24_best.pth", "unet3d_stride_xs_seed_24_best.pth"]:
        assert (run / name).is_file(), name
    results = pd.read_csv(run / "integrated_experiment_results.csv")
    assert set(RESULT_COLUMNS) <= set(results.columns)
    assert sorted(results["model"]) == ["unet3d_stride_xs", "unet3d_xs"]
    assert (results["fold"] == 0).all()
    # PAM is a GPU measurement: empty on CPU; everything else is measured.
    assert results[["pam_train_mb", "pam_inference_mb"]].isna().all().all()
    assert (results["params"] > 1000).all() and (results["flops"] > 1e6).all()
    assert (results["latency_ms"] > 0).all()
    epochs = pd.read_csv(run / "all_epochs_results.csv")
    assert set(EPOCH_COLUMNS) <= set(epochs.columns)
    assert len(epochs) == 2 * cfg.epochs
    assert sorted(epochs.loc[epochs.model == "unet3d_xs", "epoch"]) == [0, 1]
    assert list(pd.read_csv(run / "stage_wise_pam_results.csv").columns)[:4] == [
        "model", "stage", "pam_train_mb", "pam_inference_mb"]
    comparison = pd.read_csv(run / "model_comparison.csv")
    assert len(comparison) == 2 and {"test_dice_wt_mean", "test_dice_wt_std", "n_runs"} <= set(comparison.columns)
    assert not (run / "last").exists(), "the resume state of finished units is removed"


def readme_outputs() -> list[re.Pattern]:
    """The file names of the README's Outputs table (first column), as patterns: ``{...}`` matches any text."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Outputs\n", 1)[1].split("\n## ", 1)[0]
    names = [name for line in section.splitlines() if line.startswith("| `")
             for name in re.findall(r"`([^`]+)`", line.split(" | ")[0])]
    return [re.compile("".join(".+" if part.startswith("{") else re.escape(part)
                               for part in re.split(r"(\{[^}]*\})", name)) + "$") for name in names]


def assert_listed_under_outputs(run: Path) -> None:
    patterns = readme_outputs()
    unlisted = [p.name + ("/" if p.is_dir() else "") for p in run.iterdir()
                if not any(pat.match(p.name + ("/" if p.is_dir() else "")) for pat in patterns)]
    assert not unlisted, f"written by the run but not listed under the README's Outputs: {unlisted}"


def test_every_file_of_a_run_is_listed_under_outputs(finished_run):
    _, summary = finished_run
    evaluate_experiment.main(["--results_dir", str(summary.run_dir)])  # evaluation_*.csv too
    assert_listed_under_outputs(summary.run_dir)
    assert len(readme_outputs()) > 20
    assert not any(p.match("unlisted_file.csv") for p in readme_outputs())


def test_summary_equals_mean_of_per_case_rows(finished_run):
    _, summary = finished_run
    run = summary.run_dir
    results = pd.read_csv(run / "integrated_experiment_results.csv")
    per_case = pd.read_csv(run / "per_case_results.csv")
    splits = dl_json(run / "splits.json")
    test_ids = sorted(splits["24"]["folds"][0]["test"])
    for row in results.itertuples():
        cases = per_case[per_case.model == row.model]
        assert sorted(cases["case_id"]) == test_ids
        for key in REGION_METRIC_KEYS:
            assert getattr(row, f"test_{key}") == pytest.approx(cases[key].mean())
        assert row.test_dice_mean == pytest.approx(cases[["dice_wt", "dice_tc", "dice_et"]].mean(axis=1).mean())


def dl_json(path: Path):
    import json

    return json.loads(path.read_text())


def test_splits_are_patient_disjoint_and_cover_all_cases(finished_run):
    _, summary = finished_run
    fold = dl_json(summary.run_dir / "splits.json")["24"]["folds"][0]
    train, val, test = (set(fold[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == N_CASES


def test_checkpoints_load_weights_only_with_contract_keys(finished_run):
    cfg, summary = finished_run
    ckpt = torch.load(summary.run_dir / "unet3d_xs_seed_24_best.pth", weights_only=True)
    assert {"model_name", "state_dict", "config", "epoch", "best_val_dice"} <= set(ckpt)
    assert ckpt["model_name"] == "unet3d_xs" and 0 <= ckpt["epoch"] < cfg.epochs
    results = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv").set_index("model")
    assert ckpt["best_val_dice"] == pytest.approx(results.loc["unet3d_xs", "best_val_dice"])
    assert ckpt["epoch"] == results.loc["unet3d_xs", "best_epoch"]


def test_evaluate_experiment_reproduces_the_run_metrics(finished_run):
    _, summary = finished_run
    assert evaluate_experiment.main(["--results_dir", str(summary.run_dir), "--device", "cpu"]) == 0
    evaluated = pd.read_csv(summary.run_dir / "evaluation_results.csv").set_index(["model", "seed", "fold"])
    original = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv").set_index(["model", "seed", "fold"])
    columns = [f"test_{k}" for k in REGION_METRIC_KEYS] + ["test_dice_mean"]
    pd.testing.assert_frame_equal(evaluated.loc[original.index, columns], original[columns], rtol=1e-9)


def test_two_d_mode_trains_on_slices_and_scores_whole_volumes(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, dim="2d", patch_size=[32, 32], epochs=1, patches_per_case=4)
    summary = run_integrated_experiment(cfg)
    assert summary.exit_code == 0
    per_case = pd.read_csv(summary.run_dir / "per_case_results.csv")
    assert len(per_case) >= 1 and per_case[list(REGION_METRIC_KEYS)].notna().all().all()
    ckpt = load_checkpoint(summary.run_dir / "unet3d_xs_seed_24_best.pth")
    assert ckpt["dim"] == "2d" and ckpt["patch_size"] == [32, 32]


def test_five_fold_tests_every_case_exactly_once(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, epochs=1, use_5fold=True, patches_per_case=1, measure_efficiency=False)
    summary = run_integrated_experiment(cfg)
    assert summary.exit_code == 0
    results = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv")
    assert sorted(results["fold"]) == [0, 1, 2, 3, 4]
    per_case = pd.read_csv(summary.run_dir / "per_case_results.csv")
    assert sorted(per_case["case_id"]) == sorted(dl_json(summary.run_dir / "splits.json")["24"]["folds"][0]["train"]
                                                 + dl_json(summary.run_dir / "splits.json")["24"]["folds"][0]["val"]
                                                 + dl_json(summary.run_dir / "splits.json")["24"]["folds"][0]["test"])
    assert per_case["case_id"].is_unique
    for k in range(5):
        assert (summary.run_dir / f"unet3d_xs_seed_24_fold_{k}_best.pth").is_file()
        assert len(list(summary.run_dir.glob(f"segmentation_slices_seed_24_fold_{k}_*.png"))) == 1
    assert_listed_under_outputs(summary.run_dir)


def test_a_failing_unit_is_recorded_and_the_others_finish(data_root, tmp_path, monkeypatch):
    compute_loss = UnitTrainer.compute_loss

    def inject(self, logits, label):
        loss = compute_loss(self, logits, label)
        if self.model_name == "unet3d_stride_xs" and self.epoch == 1:
            return loss * float("nan")
        if self.model_name == "unet3d_2modal_s":
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return loss

    monkeypatch.setattr(UnitTrainer, "compute_loss", inject)

    cfg = tiny_config(data_root, tmp_path, models=["unet3d_stride_xs", "unet3d_2modal_s", "unet3d_xs"],
                      measure_efficiency=False)
    summary = run_integrated_experiment(cfg)
    assert summary.exit_code == 3
    failed = pd.read_csv(summary.run_dir / "failed_runs.csv").set_index("model")
    assert set(failed.index) == {"unet3d_stride_xs", "unet3d_2modal_s"}
    assert "non-finite" in failed.loc["unet3d_stride_xs", "reason"] and failed.loc["unet3d_stride_xs", "epoch"] == 1
    assert "OutOfMemoryError" in failed.loc["unet3d_2modal_s", "reason"]
    results = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv")
    assert list(results["model"]) == ["unet3d_xs"]
    assert results[[f"test_{k}" for k in REGION_METRIC_KEYS]].notna().all().all()
    assert len(pd.read_csv(summary.run_dir / "all_epochs_results.csv").query("model == 'unet3d_xs'")) == cfg.epochs


def test_deterministic_runs_give_identical_results(data_root, tmp_path):
    frames = []
    for i in range(2):
        cfg = tiny_config(data_root, tmp_path / str(i), deterministic=True, epochs=1, measure_efficiency=False)
        run = run_integrated_experiment(cfg).run_dir
        frames.append([pd.read_csv(run / name) for name in
                       ("integrated_experiment_results.csv", "all_epochs_results.csv", "per_case_results.csv")])
    for a, b in zip(*frames):
        keep = [c for c in a.columns if c not in TIMING_COLUMNS]
        pd.testing.assert_frame_equal(a[keep], b[keep], check_exact=True)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_with_a_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil_best.pth"
    with open(path, "wb") as f:
        pickle.dump({"model_name": "unet3d_xs", "state_dict": _Payload(marker)}, f)
    torch.save({"model_name": "unet3d_xs", "state_dict": _Payload(marker)}, tmp_path / "evil2_best.pth")
    marker.unlink(missing_ok=True)
    for p in (path, tmp_path / "evil2_best.pth"):
        with pytest.raises(CheckpointError, match="refusing"):
            load_checkpoint(p)
    assert not marker.exists(), "the payload must never run"


def test_cli_lists_models_and_rejects_bad_flags(capsys):
    assert integrated_experiment.main(["--list_models"]) == 0
    out = capsys.readouterr().out
    assert "unet3d_xs" in out and "modalities=t1ce,flair" in out
    with pytest.raises(SystemExit):
        integrated_experiment.main(["--dim", "3d", "--patch_size", "64", "64"])
    with pytest.raises(SystemExit):
        integrated_experiment.main(["--use_nnunet_loss", "--use_standard_loss"])


def test_cli_unknown_model_fails_before_any_work(tmp_path, capsys):
    code = integrated_experiment.main(["--dataset_version", "synthetic", "--data_path", str(tmp_path),
                                       "--models", "no_such_model", "--results_dir", str(tmp_path / "r")])
    assert code == 2
    assert "Unknown model 'no_such_model'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_default_loss_is_nnunet_and_standard_flag_switches():
    parser = integrated_experiment.build_parser()
    assert integrated_experiment.config_from_args(parser.parse_args([])).loss == "nnunet"
    assert integrated_experiment.config_from_args(parser.parse_args(["--use_standard_loss"])).loss == "standard"
    cfg = integrated_experiment.config_from_args(parser.parse_args([]))
    assert (cfg.dim, cfg.epochs, cfg.batch_size, cfg.seeds, cfg.num_workers, cfg.overlap) == ("2d", 10, 1, [24], 8, 0.1)
    assert cfg.patch_size == [128, 128, 128] and cfg.sharing_strategy == "file_descriptor"
    assert not math.isnan(cfg.lr)
    assert np.isclose(cfg.overlap, 0.1)


def _copy_as_brats2021(data_root: Path, dest: Path) -> Path:
    import shutil

    src = data_root / "BRATS_SYNTHETIC" / "BraTS2021_Training_Data"
    out = dest / "BRATS2021" / "BraTS2021_Training_Data"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.json"))
    return out


def test_bad_case_stops_before_training_naming_case_and_file(data_root, tmp_path, capsys):
    cases = _copy_as_brats2021(data_root, tmp_path / "data")
    (cases / "BraTS2021_00003" / "BraTS2021_00003_t1.nii.gz").unlink()
    args = ["--dataset_version", "brats2021", "--data_path", str(tmp_path / "data"), "--dim", "3d",
            "--models", "unet3d_xs", "--patch_size", "32", "32", "32", "--epochs", "1", "--batch_size", "2",
            "--num_workers", "0", "--device", "cpu", "--results_dir", str(tmp_path / "results"), "--no_efficiency"]
    assert integrated_experiment.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BraTS2021_00003" in err[0] and "BraTS2021_00003_t1.nii.gz" in err[0]
    assert not list((tmp_path / "results").glob("*/*.pth")), "nothing may be trained"

    assert integrated_experiment.main(args + ["--skip_bad_cases"]) == 0
    run = next((tmp_path / "results").glob("integrated_experiment_results_*/skipped_cases.csv")).parent
    skipped = pd.read_csv(run / "skipped_cases.csv")
    assert list(skipped["case_id"]) == ["BraTS2021_00003"] and "t1" in skipped["path"][0]
    used = dl_json(run / "splits.json")["24"]["folds"][0]
    assert "BraTS2021_00003" not in used["train"] + used["val"] + used["test"]


def test_config_json_records_configuration_versions_and_commit(finished_run):
    cfg, summary = finished_run
    saved = dl_json(summary.run_dir / "config.json")
    assert saved["config"]["models"] == cfg.models and saved["config"]["patch_size"] == [32, 32, 32]
    assert saved["config"]["loss"] == "nnunet" and saved["global_batch_size"] == cfg.batch_size
    assert {"python", "torch", "monai", "numpy"} <= set(saved["versions"])
    assert saved["versions"]["torch"] == torch.__version__
    assert isinstance(saved["git_commit"], str) and saved["git_commit"]


def test_evaluate_checkpoint_equals_the_runs_test_metrics(finished_run):
    from evaluation.scoring import evaluate_checkpoint
    from experiment.config import load_run_config
    from experiment.data import open_prepared_cache

    cfg, summary = finished_run
    run_cfg = load_run_config(summary.run_dir, device="cpu")
    cache = open_prepared_cache(run_cfg, progress=False)
    split = dl_json(summary.run_dir / "splits.json")["24"]["folds"][0]
    ckpt = load_checkpoint(summary.run_dir / "unet3d_stride_xs_seed_24_best.pth")
    result = evaluate_checkpoint(ckpt, run_cfg, cache, split["test"], torch.device("cpu"))
    original = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv").set_index("model")
    for column, value in result.summary().items():
        if column in original.columns:
            assert value == pytest.approx(original.loc["unet3d_stride_xs", column], rel=1e-9), column
    per_case = pd.read_csv(summary.run_dir / "per_case_results.csv").query("model == 'unet3d_stride_xs'")
    assert [r["case_id"] for r in result.per_case] == list(per_case["case_id"])


def test_run_log_holds_the_runs_progress_with_timestamps(finished_run):
    cfg, summary = finished_run
    lines = (summary.run_dir / "run.log").read_text().splitlines()
    epoch_lines = [line for line in lines if "epoch " in line and "val Dice WT/TC/ET" in line]
    assert len(epoch_lines) == 2 * cfg.epochs, "one line per epoch and model"
    assert all(line[:4].isdigit() and line[4] == "-" for line in epoch_lines), "each line starts with a timestamp"
    assert any("run folder:" in line for line in lines) and any("test Dice WT/TC/ET" in line for line in lines)


# ------------------------------------------------------------------ trainers
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _cli_args(data_root: Path, results: Path) -> list[str]:
    return ["--data_path", str(data_root), "--dataset_version", "synthetic", "--synthetic_cases", str(N_CASES),
            "--synthetic_shape", *map(str, SHAPE), "--cache_dir", str(data_root / "cache"), "--epochs", "1",
            "--models", "unet3d_xs", "--dim", "3d", "--patch_size", "32", "32", "32", "--num_workers", "0",
            "--device", "cpu", "--patches_per_case", "2", "--seeds", "24", "--lr", "3e-3", "--batch_size", "2",
            "--no_efficiency", "--results_dir", str(results)]


def test_the_docs_example_trainer_trains_through_the_cli(data_root, tmp_path):
    """docs/TRAINERS.md's example, selected by ``--trainer module:Class`` in a fresh process: the unit trains with
    its loss and batch transform (the epoch loss differs from the default trainer's on the same unit), and
    config.json and run.log name it."""
    import json
    import os
    import re
    import subprocess
    import sys

    example = re.search(r"```python\n(.*?)```", (DOCS / "TRAINERS.md").read_text(), re.S).group(1)
    (tmp_path / "my_trainers.py").write_text(example)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "integrated_experiment.py"),
                           *_cli_args(data_root, tmp_path / "custom"), "--trainer", "my_trainers:DiceFocalTrainer"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = next((tmp_path / "custom").iterdir())
    assert json.loads((run / "config.json").read_text())["config"]["trainer"] == "my_trainers:DiceFocalTrainer"
    assert "trainer my_trainers.DiceFocalTrainer" in (run / "run.log").read_text()
    custom = pd.read_csv(run / "all_epochs_results.csv")
    assert pd.read_csv(run / "integrated_experiment_results.csv")["test_dice_wt"].notna().all()

    default = run_integrated_experiment(tiny_config(data_root, tmp_path / "default", epochs=1,
                                                    measure_efficiency=False)).run_dir
    plain = pd.read_csv(default / "all_epochs_results.csv")
    assert custom["train_loss"].iloc[0] != pytest.approx(plain["train_loss"].iloc[0], rel=1e-3)


def test_trainer_hooks_are_called_and_unknown_trainers_refused(data_root, tmp_path, capsys):
    from training.trainer import TRAINERS, register_trainer, trainer_class

    calls = []

    @register_trainer("RecordingSGDTrainer")
    class RecordingSGDTrainer(UnitTrainer):
        def build_optimizer(self):
            calls.append("optimizer")
            return torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=0.9)

        def batch_transform(self, image, label):
            calls.append(("batch", str(image.device), label.dtype))
            return image, label

    try:
        assert trainer_class("RecordingSGDTrainer") is RecordingSGDTrainer
        cfg = tiny_config(data_root, tmp_path, epochs=1, measure_efficiency=False, trainer="RecordingSGDTrainer")
        summary = run_integrated_experiment(cfg)
        assert summary.exit_code == 0
        steps = int(pd.read_csv(summary.run_dir / "integrated_experiment_results.csv")["steps_per_epoch"].iloc[0])
        assert calls[0] == "optimizer" and calls[1:] == [("batch", "cpu", torch.int64)] * steps
    finally:
        TRAINERS.pop("RecordingSGDTrainer", None)
    with pytest.raises(ValueError, match="registered: UnitTrainer"):
        trainer_class("NoSuchTrainer")
    with pytest.raises(ValueError, match="not a subclass"):
        trainer_class("os:path")
    code = integrated_experiment.main(["--dataset_version", "synthetic", "--data_path", str(tmp_path / "none"),
                                       "--trainer", "NoSuchTrainer", "--results_dir", str(tmp_path / "r")])
    assert code == 2 and "unknown --trainer 'NoSuchTrainer'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
