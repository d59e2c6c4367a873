"""The baselines built by MONAI (models/monai_baselines.py) and the cost columns of a unit (experiment/run_folder.py).

- MedNeXt's built parameter counts against the paper's (kernel 3), and its deep-supervision outputs;
- each new family (MedNeXt, SegResNet, SwinUNETR-V2, MONAI's DynUNet at nnU-Net's settings) trained for one epoch
  in 2D and in 3D (the four models in one run per dimension), then ``predict.py`` on each checkpoint;
- the cost columns: present and positive in integrated_experiment_results.csv, model_comparison.csv and the
  report's efficiency table (every number equal to its CSV cell), and a resumed unit's training time the sum over
  its sessions.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import integrated_experiment
import predict
from experiment.config import ExperimentConfig, build_parser
from experiment.run_folder import COST_KEYS, COST_LABEL_KEYS, EPOCH_COST_KEYS, unit_costs
from integrated_experiment import config_from_args
from models import create_model, list_models, model_spec
from models.catalog import CATALOG_PATCH
from models.monai_baselines import MEDNEXT_PUBLISHED_K3
from run.callbacks import RunCallbacks
from run.loop import run_experiment
from tests.browser import parse_tables, table_mismatches
from training import trainer as training

SHAPE = (64, 64, 32)  # --synthetic_shape X Y Z: volumes (Z, Y, X) = (32, 64, 64)
PATCH = {"3d": ["32", "32", "64"], "2d": ["32", "64"]}  # SwinUNETR-V2 needs 32 | every axis and 64 on one
FAMILY_MODELS = ["mednext_s_k3", "segresnet_16", "swin_unetr_v2", "dynunet"]  # one model of each new family
# The paper gives one decimal (rounding: +-0.05M) and not the input and output channels of its count; the
# counts built here (4 modalities in, 4 classes out) must agree within 0.1M.
MEDNEXT_TOLERANCE = 0.1e6


# ------------------------------------------------------------------ counts and deep supervision
@pytest.mark.parametrize("variant", sorted(MEDNEXT_PUBLISHED_K3))
def test_mednext_k3_parameters_match_the_paper(variant):
    name = f"mednext_{variant}_k3"
    with torch.device("meta"):
        model = create_model(name, "3d", CATALOG_PATCH["3d"])
    built = sum(p.numel() for p in model.parameters() if p.requires_grad)
    published = model_spec(name).published
    assert published is not None and published.params == MEDNEXT_PUBLISHED_K3[variant]
    assert abs(built - published.params) <= MEDNEXT_TOLERANCE, f"{name}: built {built:,}, paper {published.params:,}"
    assert model_spec(f"mednext_{variant}_k5").published is None  # the paper's table is at kernel 3


def _meta_count(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, "3d", CATALOG_PATCH["3d"]).parameters() if p.requires_grad)


def test_the_new_families_specs():
    names = [f"mednext_{v}_k{k}" for v in "sbml" for k in (3, 5)] + ["segresnet_16", "segresnet_32", "swin_unetr_v2"]
    assert set(names) <= set(list_models())
    for name in names:
        spec = model_spec(name)
        assert spec.modalities == ("t1", "t1ce", "t2", "flair") and spec.dims == ("2d", "3d"), name
        assert spec.deep_supervision == name.startswith("mednext"), name
        assert spec.published is None or name.endswith("_k3"), "published counts: MedNeXt at kernel 3 only"
    assert _meta_count("segresnet_32") > 3 * _meta_count("segresnet_16")  # twice the width
    assert _meta_count("mednext_s_k5") > _meta_count("mednext_s_k3")  # larger depthwise kernels


@pytest.mark.parametrize("dim, patch", [("3d", (32, 32, 32)), ("2d", (32, 64))])
def test_mednext_deep_supervision_is_a_list_from_full_resolution_down(dim, patch):
    torch.manual_seed(0)
    model = create_model("mednext_s_k3", dim, patch, num_classes=3, deep_supervision=True)
    x = torch.randn(1, 4, *patch)
    outputs = model.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 5
    for i, out in enumerate(outputs):
        assert out.shape == (1, 3, *(p // 2**i for p in patch)), f"output {i}: {tuple(out.shape)}"
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 3, *patch)  # inference sees the full resolution only
    with pytest.raises(ValueError, match="no decoder outputs at several scales"):
        create_model("segresnet_16", dim, patch, deep_supervision=True)


# ------------------------------------------------------------------ cost columns from epoch rows
def test_unit_costs_sum_the_sessions_and_take_the_peak():
    rows = [{"epoch_time_s": 30.0, "train_time_s": 20.0, "steps": 10, "peak_mem_gb": 2.0, "peak_mem_reserved_gb": 3.0,
             "peak_mem_kind": "cuda"},
            {"epoch_time_s": 90.0, "train_time_s": 60.0, "steps": 30, "peak_mem_gb": 1.5, "peak_mem_reserved_gb": 4.0,
             "peak_mem_kind": "cuda"}]
    costs = unit_costs(rows)
    assert costs["train_time_h"] == pytest.approx(120.0 / 3600)
    assert costs["train_s_per_1k_steps"] == pytest.approx(80.0 / 40 * 1000)
    assert (costs["train_peak_mem_gb"], costs["train_peak_mem_reserved_gb"]) == (2.0, 4.0)
    assert costs["train_peak_mem_kind"] == "cuda"
    old = unit_costs([{"epoch": 0, "epoch_time_s": 5.0}])  # a row written before the cost columns existed
    assert old["train_time_h"] == pytest.approx(5.0 / 3600)
    assert all(math.isnan(old[k]) for k in ("train_s_per_1k_steps", "train_peak_mem_gb"))


# ------------------------------------------------------------------ the command line, predict.py, the report
def _args(data: Path, results: Path, dim: str, models: list[str], epochs: int = 1) -> list[str]:
    return ["--dataset_version", "synthetic", "--data_path", str(data), "--synthetic_cases", "6",
            "--synthetic_shape", *map(str, SHAPE), "--synthetic_difficulty", "easy", "--cache_dir", str(data / "cache"),
            "--dim", dim, "--models", *models, "--patch_size", *PATCH[dim], "--epochs", str(epochs),
            "--iters_per_epoch", "1", "--batch_size", "1", "--num_workers", "0", "--device", "cpu",
            "--seeds", "24", "--no_efficiency", "--tracker", "none", "--results_dir", str(results)]


@pytest.fixture(scope="module", params=["3d", "2d"])
def trained(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(dim, run folder, data folder): one epoch of one step of each family's model through the command line."""
    root = tmp_path_factory.mktemp(f"baselines_{request.param}")
    assert integrated_experiment.main(_args(root / "data", root / "results", request.param, FAMILY_MODELS)) == 0
    (run,) = list((root / "results").glob("integrated_experiment_results_*"))
    return request.param, run, root / "data"


def test_each_family_trains_and_predict_py_reads_its_checkpoint(trained, tmp_path):
    dim, run, data = trained
    results = pd.read_csv(run / "integrated_experiment_results.csv")
    assert sorted(results["model"]) == sorted(FAMILY_MODELS)
    assert results["test_dice_mean"].between(0, 1).all()
    case = sorted((data / "BRATS_SYNTHETIC" / "BraTS2021_Training_Data").iterdir())[0]
    shutil.copytree(case, tmp_path / "input" / case.name)
    for model in FAMILY_MODELS:
        out = tmp_path / f"out_{model}"
        assert predict.main(["--run_dir", str(run), "--input", str(tmp_path / "input"), "--output", str(out),
                             "--models", model, "--device", "cpu"]) == 0
        seg = nib.load(str(out / f"{case.name}.nii.gz"))
        assert seg.shape == nib.load(str(case / f"{case.name}_t1.nii.gz")).shape
        assert set(np.unique(np.asanyarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_cost_columns_are_positive_in_the_csvs_and_shown_in_the_report(trained):
    _, run, _ = trained
    results = pd.read_csv(run / "integrated_experiment_results.csv")
    assert (results[COST_KEYS[:3] + COST_KEYS[4:]] > 0).all().all(), results[COST_KEYS]
    assert results["train_peak_mem_reserved_gb"].isna().all(), "no reserved figure on the CPU"
    assert set(results["train_peak_mem_kind"]) == {"cpu_rss"} and results["cost_hardware"].str.startswith("CPU").all()
    # 1 step: the seconds per 1,000 steps are 1,000 times the training pass
    epochs = pd.read_csv(run / "all_epochs_results.csv").set_index("model").loc[results["model"]]
    assert set(EPOCH_COST_KEYS) <= set(epochs.columns) and (epochs["steps"] == 1).all()
    np.testing.assert_allclose(results["train_s_per_1k_steps"], 1000 * epochs["train_time_s"].to_numpy())
    assert (epochs["train_time_s"] < epochs["epoch_time_s"]).all(), "the epoch adds validation to the training pass"

    comparison = pd.read_csv(run / "model_comparison.csv").set_index("model")
    for key in ("train_time_h", "train_s_per_1k_steps", "train_peak_mem_gb", "inference_s_per_case"):
        assert (comparison[f"{key}_mean"] > 0).all() and f"{key}_std" in comparison, key
    assert set(COST_LABEL_KEYS) <= set(comparison.columns)

    text = (run / "report.html").read_text()
    tables = {t["id"]: t for t in parse_tables(text)}
    assert table_mismatches([tables["efficiency"]], run) == []
    for row in tables["efficiency"]["rows"]:
        shown = {v["col"]: v for v in row["values"]}
        for key in ("train_time_h", "train_s_per_1k_steps", "train_peak_mem_gb", "inference_s_per_case"):
            value = shown[f"{key}_mean"]
            assert value["text"] != "–" and float(value["value"]) > 0, (row["key"], key)
        assert shown["train_peak_mem_kind"]["text"] == "cpu_rss"
        assert shown["cost_hardware"]["text"].startswith("CPU")
    assert "costs measured on CPU" in text  # the training-budget line names the hardware


class _StopAfterFirstEpoch(RunCallbacks):
    def on_epoch_end(self, state, key, row):
        training.STOP.requested = True  # seen after the epoch's row and checkpoint: the unit stays resumable


def test_a_resumed_units_training_time_sums_its_sessions(tmp_path, monkeypatch):
    monkeypatch.setattr(training.STOP, "requested", False)
    argv = _args(tmp_path / "data", tmp_path / "results", "2d", ["segresnet_16"], epochs=2)
    cfg = config_from_args(build_parser().parse_args(argv))
    first = run_experiment(cfg, [_StopAfterFirstEpoch()])
    assert first.exit_code == 130
    monkeypatch.setattr(training.STOP, "requested", False)
    resumed = run_experiment(ExperimentConfig(resume=str(first.run_dir), device="cpu", num_workers=0))
    assert resumed.exit_code == 0
    epochs = pd.read_csv(first.run_dir / "all_epochs_results.csv").sort_values("epoch")
    assert list(epochs["epoch"]) == [0, 1] and epochs["train_time_s"].notna().all()
    row = pd.read_csv(first.run_dir / "integrated_experiment_results.csv").iloc[0]
    assert row["train_time_h"] * 3600 == pytest.approx(epochs["epoch_time_s"].sum(), rel=1e-9)
    assert row["train_s_per_1k_steps"] == pytest.approx(epochs["train_time_s"].sum() / 2 * 1000, rel=1e-9)
    assert row["train_peak_mem_gb"] == pytest.approx(epochs["peak_mem_gb"].max(), rel=1e-12)
