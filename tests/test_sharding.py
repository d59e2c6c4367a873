"""Sweeps in pieces: --list_units (the one order of an experiment's units), --folds, --shard I/N (each shard its
own run folder), and the shards put back together: merged by ``python -m visualization``, evaluated and used
for prediction as several run folders of one experiment, equal to the run made in one piece."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import data_loader as dl
import evaluate_experiment
import integrated_experiment
import predict
from experiment.config import ExperimentConfig, Shard, load_run_config
from experiment.run_folder import MEASURED_COLUMNS
from experiment.sharding import experiment_units, shard_units
from metrics import REGION_METRIC_KEYS
from visualization.__main__ import main as merge_main

SHAPE = (48, 48, 40)
N_CASES = 10
KEYS = ["model", "seed", "fold"]
MODELS = ["unet3d_xs", "unet3d_stride_xs"]


def list_units(capsys, *flags: str) -> list[str]:
    assert integrated_experiment.main(["--dim", "3d", "--models", *MODELS, *flags, "--list_units"]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_list_units_prints_seeds_then_folds_then_models_and_the_count(capsys):
    lines = list_units(capsys, "--seeds", "42", "24", "--use_5fold", "--folds", "3", "1")
    expected = [(seed, fold, model) for seed in (42, 24) for fold in (1, 3) for model in MODELS]
    assert lines[:-1] == [f"{i} {m} {s} {f}" for i, (s, f, m) in enumerate(expected)]
    assert lines[-1] == "8 units"
    assert list_units(capsys, "--seeds", "24") == ["0 unet3d_xs 24 0", "1 unet3d_stride_xs 24 0", "2 units"]
    assert len(list_units(capsys, "--seeds", "24", "--use_5fold")) == 2 * 5 + 1  # folds 0-4 without --folds


def test_shards_partition_the_units_by_position_modulo_n(capsys):
    flags = ("--seeds", "24", "42", "--use_5fold", "--folds", "0", "2", "4")  # 12 units
    everything = list_units(capsys, *flags)[:-1]
    seen = []
    for i in range(5):
        lines = list_units(capsys, *flags, "--shard", f"{i}/5")
        assert lines[-1] == f"{len(lines) - 1} of 12 units in shard {i}/5"
        assert [int(line.split()[0]) for line in lines[:-1]] == list(range(i, 12, 5))
        seen += lines[:-1]
    assert sorted(seen) == sorted(everything) and len(seen) == len(set(seen)) == 12
    cfg = ExperimentConfig(dim="3d", models=MODELS, seeds=[24], use_5fold=True, shard="1/2")
    assert shard_units(cfg) == experiment_units(cfg)[1::2]


def test_a_shard_is_parsed_once_and_saved_as_its_i_of_n_string(tmp_path):
    cfg = ExperimentConfig(dim="3d", models=MODELS, shard=" 2 / 5 ")
    assert cfg.shard == Shard(2, 5) and str(cfg.shard) == "2/5"
    assert cfg.to_dict()["shard"] == "2/5" and ExperimentConfig.from_dict(cfg.to_dict()).shard == Shard(2, 5)
    (tmp_path / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))  # as a run folder holds it
    assert load_run_config(tmp_path).shard == Shard(2, 5)
    for bad in ("5/5", "-1/5", "1", "a/b"):
        with pytest.raises(ValueError, match="--shard takes I/N"):
            ExperimentConfig(shard=bad)
    with pytest.raises(ValueError, match="--shard takes I/N"):
        Shard(3, 2)


def test_bad_shard_and_fold_flags_are_refused(capsys):
    for flags in (["--shard", "3/3"], ["--shard", "1"], ["--folds", "1"], ["--use_5fold", "--folds", "5"]):
        with pytest.raises(SystemExit) as exit_info:
            integrated_experiment.main(["--dim", "3d", "--models", *MODELS, *flags, "--list_units"])
        assert exit_info.value.code == 2, flags
    capsys.readouterr()
    # a shard past the last unit: refused before any work (2 units, shard 2 of 3 would hold none)
    assert integrated_experiment.main(["--dim", "3d", "--models", *MODELS, "--device", "cpu",
                                       "--shard", "2/3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds none" in err[0] and "at most 2 shards" in err[0]


# ----------------------------------------------------------------------------- a sweep in three shards
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The same experiment (2 models x folds 1 and 3 of a 5-fold split: 4 units) run in one piece and as three
    shards, deterministic; the shards merged by ``python -m visualization``."""
    root = tmp_path_factory.mktemp("sweep")
    data = root / "data"
    dl.generate_synthetic_dataset(data, n_cases=N_CASES, seed=0, shape=SHAPE)
    base = ["--dataset_version", "synthetic", "--data_path", str(data), "--synthetic_cases", str(N_CASES),
            "--synthetic_shape", *map(str, SHAPE), "--cache_dir", str(data / "cache"), "--dim", "3d",
            "--patch_size", "32", "32", "32", "--batch_size", "2", "--patches_per_case", "2", "--num_workers", "0",
            "--device", "cpu", "--no_efficiency", "--lr", "3e-3", "--epochs", "1", "--deterministic",
            "--models", *MODELS, "--seeds", "24", "--use_5fold", "--folds", "1", "3"]
    assert integrated_experiment.main([*base, "--results_dir", str(root / "whole")]) == 0
    for i in range(3):
        assert integrated_experiment.main([*base, "--results_dir", str(root / "shards"), "--shard", f"{i}/3"]) == 0
    whole = next((root / "whole").iterdir())
    shards = sorted((root / "shards").iterdir(), key=lambda p: p.name[-6:])
    assert merge_main([*map(str, shards), "--output", str(root / "merged")]) == 0
    return {"root": root, "data": data, "whole": whole, "shards": shards, "merged": root / "merged"}


def test_each_shard_is_a_run_folder_named_by_its_shard_with_the_full_splits(sweep):
    whole_splits = json.loads((sweep["whole"] / "splits.json").read_text())
    assert len(whole_splits["24"]["folds"]) == 5, "--folds runs some folds of the full 5-fold split"
    units = []
    for i, shard in enumerate(sweep["shards"]):
        assert shard.name.startswith("integrated_experiment_results_") and shard.name.endswith(f"_shard_{i}_of_3")
        assert json.loads((shard / "splits.json").read_text()) == whole_splits
        assert json.loads((shard / "config.json").read_text())["config"]["shard"] == f"{i}/3"
        results = pd.read_csv(shard / "integrated_experiment_results.csv")
        units += list(results[KEYS].itertuples(index=False, name=None))
    # positions 0, 3 | 1 | 2 of (fold 1: xs, stride; fold 3: xs, stride)
    assert units == [("unet3d_xs", 24, 1), ("unet3d_stride_xs", 24, 3), ("unet3d_stride_xs", 24, 1),
                     ("unet3d_xs", 24, 3)]


def test_merged_shards_equal_the_unsharded_run(sweep):
    whole, merged = sweep["whole"], sweep["merged"]
    cols = [f"test_{k}" for k in REGION_METRIC_KEYS] + ["test_dice_mean", "best_epoch", "best_val_dice",
                                                          "steps_per_epoch"]
    want = pd.read_csv(whole / "integrated_experiment_results.csv").sort_values(KEYS).reset_index(drop=True)
    got = pd.read_csv(merged / "integrated_experiment_results.csv").sort_values(KEYS).reset_index(drop=True)
    assert len(want) == 4
    pd.testing.assert_frame_equal(got[KEYS + cols], want[KEYS + cols], check_exact=True)
    for name, order in (("per_case_results.csv", KEYS + ["case_id"]), ("all_epochs_results.csv", KEYS + ["epoch"])):
        a = pd.read_csv(whole / name).sort_values(order).reset_index(drop=True)
        b = pd.read_csv(merged / name).sort_values(order).reset_index(drop=True)
        numeric = [c for c in a.columns if c not in (*MEASURED_COLUMNS, "source_run") and c in b.columns]
        pd.testing.assert_frame_equal(b[numeric], a[numeric], check_exact=True)
    assert json.loads((merged / "splits.json").read_text()) == json.loads((whole / "splits.json").read_text())
    record = json.loads((merged / "merged_runs.json").read_text())
    assert record["expected_units"] == 4 and record["missing_units"] == []
    comparison = pd.read_csv(merged / "model_comparison.csv").set_index("model")
    expected = pd.read_csv(whole / "model_comparison.csv").set_index("model")
    pd.testing.assert_series_equal(comparison["test_dice_mean_mean"], expected["test_dice_mean_mean"])


def test_a_merge_missing_a_shard_names_the_missing_units(sweep, tmp_path, capsys):
    assert merge_main([str(sweep["shards"][0]), str(sweep["shards"][2]), "--output", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "1 unit(s) of the experiment finished in none of these runs (unet3d_stride_xs seed 24 fold 1)" in err
    record = json.loads((tmp_path / "m" / "merged_runs.json").read_text())
    assert record["missing_units"] == [{"model": "unet3d_stride_xs", "seed": 24, "fold": 1}]
    assert merge_main([str(sweep["whole"]), str(sweep["shards"][1]), "--output", str(tmp_path / "m2")]) == 2
    assert "is in both" in capsys.readouterr().err, "overlapping units are refused, as for any merge"


def test_evaluate_experiment_takes_the_shards_of_one_experiment(sweep, capsys):
    shards = sweep["shards"]
    assert evaluate_experiment.main(["--results_dir", *map(str, shards), "--device", "cpu"]) == 0
    capsys.readouterr()
    columns = [f"test_{k}" for k in REGION_METRIC_KEYS] + ["test_dice_mean"]
    for shard in shards:
        evaluated = pd.read_csv(shard / "evaluation_results.csv").set_index(KEYS)
        results = pd.read_csv(shard / "integrated_experiment_results.csv").set_index(KEYS)
        assert sorted(evaluated.index) == sorted(results.index), "each folder gets its own units' evaluation"
        pd.testing.assert_frame_equal(evaluated.loc[results.index, columns], results[columns], check_exact=True)


def _other_experiment(shard: Path, dest: Path) -> Path:
    other = shutil.copytree(shard, dest)
    record = json.loads((other / "config.json").read_text())
    record["config"]["epochs"] = 7
    (other / "config.json").write_text(json.dumps(record))
    return other


def test_runs_of_different_experiments_or_the_same_unit_twice_are_refused(sweep, tmp_path, capsys):
    shards = sweep["shards"]
    other = _other_experiment(shards[1], tmp_path / "other_run")
    cases = sweep["data"] / "BRATS_SYNTHETIC" / "BraTS2021_Training_Data"
    commands = [
        (evaluate_experiment.main, ["--results_dir", str(shards[0]), str(other), "--device", "cpu"]),
        (predict.main, ["--run_dir", str(shards[0]), str(other), "--input", str(cases), "--output",
                        str(tmp_path / "p"), "--device", "cpu", "--models", "unet3d_xs"]),
    ]
    for main, args in commands:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not runs of one experiment" in err[0] and "epochs (1 vs 7)" in err[0], err
    args = ["--run_dir", str(sweep["whole"]), str(shards[0]), "--input", str(cases), "--output",
            str(tmp_path / "p"), "--device", "cpu", "--models", "unet3d_xs"]
    assert predict.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 24 fold" in err[0] and "has a best checkpoint in both" in err[0], err
    assert not (tmp_path / "p").exists(), "nothing is written before the checks pass"


def test_predict_over_the_shards_equals_predict_over_the_unsharded_run(sweep, tmp_path, capsys):
    source = sweep["data"] / "BRATS_SYNTHETIC" / "BraTS2021_Training_Data"
    cases = tmp_path / "cases"
    for case in sorted(source.iterdir())[:2]:
        shutil.copytree(case, cases / case.name)
    common = ["--input", str(cases), "--device", "cpu", "--models", "unet3d_xs", "--save_probabilities"]
    assert predict.main(["--run_dir", *map(str, sweep["shards"]), "--output", str(tmp_path / "a"), *common]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "predicted 2 case(s) with 2 checkpoint(s)" in line and "cases/s" in line  # folds 1 and 3, two shards
    assert predict.main(["--run_dir", str(sweep["whole"]), "--output", str(tmp_path / "b"), *common]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == 4
    for name in names:
        if name.endswith(".nii.gz"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
