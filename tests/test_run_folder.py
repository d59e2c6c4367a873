"""The configuration table (CLI built from ExperimentConfig, round trip, override rules) and the
run folder (every contract file written by RunFolder, rows replaced not repeated)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import integrated_experiment
from experiment.config import RUNTIME_FIELDS, ExperimentConfig, cli_fields, load_run_config, resume_config
from experiment.run_folder import (
    COMPARISON_CSV,
    CONFUSION_JSON,
    EPOCH_COLUMNS,
    EPOCHS_CSV,
    FAILED_COLUMNS,
    FAILED_CSV,
    MODALITY_COLUMNS,
    MODALITY_CSV,
    PER_CASE_COLUMNS,
    PER_CASE_CSV,
    RANKING_CSV,
    RESULT_COLUMNS,
    RESULTS_CSV,
    SKIPPED_COLUMNS,
    SKIPPED_CSV,
    STAGE_PAM_COLUMNS,
    STAGE_PAM_CSV,
    STATISTICS_CSV,
    RunFolder,
    UnitKey,
    comparison_table,
)
from metrics import REGION_METRIC_KEYS
from metrics.statistics import RANKING_COLUMNS, TEST_COLUMNS


def test_every_cli_option_is_a_config_field_and_maps_back():
    parser = integrated_experiment.build_parser()
    dests = {a.dest for a in parser._actions} - {"help", "list_models", "list_units", "preprocess_only"}
    assert dests == {f.name for f in cli_fields()}
    args = ["--dim", "3d", "--epochs", "3", "--seeds", "1", "2", "--patch_size", "32", "32", "32",
            "--synthetic_shape", "40", "48", "56", "--no_efficiency", "--use_5fold", "--amp", "fp16",
            "--resume", "r", "--max_samples", "7", "--cache_dir", "c"]
    cfg = integrated_experiment.config_from_args(parser.parse_args(args))
    assert (cfg.dim, cfg.epochs, cfg.seeds, cfg.patch_size) == ("3d", 3, [1, 2], [32, 32, 32])
    assert cfg.synthetic_shape == [40, 48, 56] and cfg.measure_efficiency is False and cfg.use_5fold
    assert (cfg.amp, cfg.resume, cfg.max_samples, cfg.cache_dir) == ("fp16", "r", 7, "c")


@pytest.mark.parametrize("flags,loss", [([], "nnunet"), (["--use_nnunet_loss"], "nnunet"),
                                        (["--use_standard_loss"], "standard")])
def test_loss_flags_select_the_loss(flags, loss):
    parser = integrated_experiment.build_parser()
    assert integrated_experiment.config_from_args(parser.parse_args(flags)).loss == loss


def test_a_rejected_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        integrated_experiment.main(["--overlap", "1.5"])
    assert exit_info.value.code == 2 and "--overlap must be in [0, 1)" in capsys.readouterr().err


def _saved_run(tmp_path, **changes) -> ExperimentConfig:
    cfg = ExperimentConfig(dataset_version="synthetic", dim="3d", models=["unet3d_xs"], epochs=7,
                           patch_size=[32, 32, 32], data_path="/old/data", num_workers=8, **changes)
    (tmp_path / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "world_size": 1}))
    return cfg


def test_config_round_trips_through_config_json(tmp_path):
    cfg = _saved_run(tmp_path, seeds=[3, 4], use_5fold=True, lr=2e-3)
    loaded = load_run_config(tmp_path)
    assert loaded == cfg  # every field, including those without a flag
    assert loaded.spatial_patch == (32, 32, 32)


def test_blending_round_trips_and_older_runs_keep_the_cosine_window(tmp_path):
    cfg = _saved_run(tmp_path, blending="nnunet")
    assert load_run_config(tmp_path) == cfg and load_run_config(tmp_path).blending == "nnunet"
    parser = integrated_experiment.build_parser()
    assert integrated_experiment.config_from_args(parser.parse_args(["--blending", "gaussian"])).blending == "gaussian"
    assert integrated_experiment.config_from_args(parser.parse_args([])).blending == "cosine"
    record = json.loads((tmp_path / "config.json").read_text())
    del record["config"]["blending"]  # a config.json written before --blending
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert load_run_config(tmp_path).blending == "cosine"
    with pytest.raises(ValueError, match="blending"):
        ExperimentConfig(blending="linear")


def test_overrides_change_runtime_fields_only(tmp_path):
    _saved_run(tmp_path)
    loaded = load_run_config(tmp_path, data_path="/new/data", num_workers=0, device="cpu", cache_dir=None)
    assert (loaded.data_path, loaded.num_workers, loaded.device) == ("/new/data", 0, "cpu")
    assert loaded.cache_dir is None and loaded.epochs == 7 and loaded.resume is None
    with pytest.raises(ValueError, match="epochs"):
        load_run_config(tmp_path, epochs=20)
    assert set(RUNTIME_FIELDS) <= {f.name for f in cli_fields()}
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run_config(tmp_path / "nowhere")


def test_resume_takes_the_runs_experiment_and_this_commands_runtime(tmp_path):
    _saved_run(tmp_path)
    command = ExperimentConfig(resume=str(tmp_path), device="cpu", num_workers=0, epochs=99)
    merged = resume_config(command)
    assert merged.epochs == 7 and merged.models == ["unet3d_xs"] and merged.dim == "3d"
    assert (merged.device, merged.num_workers, merged.resume) == ("cpu", 0, str(tmp_path))
    assert merged.data_path == "/old/data", "a default --data_path keeps the run's data"


def _unit_rows(key: UnitKey) -> tuple[dict, list[dict]]:
    per_case = [{"case_id": f"c{i}", **{k: 0.5 + 0.1 * i for k in REGION_METRIC_KEYS}} for i in range(2)]
    row = {f"test_{k}": 0.55 for k in REGION_METRIC_KEYS} | {"test_dice_mean": 0.55, "params": 10.0,
                                                           "flops": 20.0, "best_epoch": 1, "best_val_dice": 0.6}
    return row, per_case


def test_run_folder_writes_every_contract_file_with_its_columns(tmp_path):
    run = RunFolder.create(tmp_path, use_5fold=True)
    assert run.path.name.startswith("integrated_experiment_results_") and run.path.parent == tmp_path
    assert RunFolder.create(tmp_path).path != run.path, "a second run in the same second gets its own folder"
    key = UnitKey("unet3d_xs", 24, 2)
    assert run.best_checkpoint(key).name == "unet3d_xs_seed_24_fold_2_best.pth"
    assert run.last_checkpoint(key).parent.name == "last"
    run.write_config({"config": ExperimentConfig().to_dict()})
    run.write_splits({"24": {"folds": []}})
    run.write_skipped([{"case_id": "c9", "path": "/x/c9_t1.nii.gz", "reason": "missing"}])
    run.append_epoch(key, {"epoch": 0, "train_loss": 1.0, "val_dice_mean": 0.5})
    run.record_failure(UnitKey("unet3d_s", 24, 0), 3, "OutOfMemoryError: injected")
    run.write_stage_pam("unet3d_xs", [{"model": "unet3d_xs", "stage": "encoder1", "pam_train_mb": 1.0,
                                       "pam_inference_mb": 0.5}])
    row, per_case = _unit_rows(key)
    run.write_unit(key, row, per_case, np.eye(4, dtype=np.int64), {"t1ce": [0.4, 0.6], "flair": [0.6, 0.4]})
    expected = {EPOCHS_CSV: EPOCH_COLUMNS, FAILED_CSV: FAILED_COLUMNS, STAGE_PAM_CSV: STAGE_PAM_COLUMNS,
                PER_CASE_CSV: PER_CASE_COLUMNS, MODALITY_CSV: MODALITY_COLUMNS, RESULTS_CSV: RESULT_COLUMNS,
                SKIPPED_CSV: SKIPPED_COLUMNS}
    for name, columns in expected.items():
        df = pd.read_csv(run / name)
        assert list(df.columns)[:len(columns)] == columns, name
    assert json.loads((run / CONFUSION_JSON).read_text())["unet3d_xs_seed_24_fold_2"][0] == [1, 0, 0, 0]
    assert run.finished_units() == {UnitKey("unet3d_xs", 24, 2)}
    comparison = run.finish()
    assert (run / COMPARISON_CSV).is_file() and comparison.loc[0, "n_runs"] == 1
    assert math.isnan(comparison.loc[0, "test_dice_wt_std"]), "sample std of one run"
    assert list(pd.read_csv(run / STATISTICS_CSV).columns) == TEST_COLUMNS  # one model: no test rows
    assert list(pd.read_csv(run / RANKING_CSV).columns) == RANKING_COLUMNS
    for key in ("nsd_wt", "dice_ncr", "dice_ed"):
        assert key in PER_CASE_COLUMNS and f"test_{key}" in RESULT_COLUMNS
        assert f"test_{key}_mean" in comparison.columns


def test_finish_writes_statistics_ranking_and_comparison_extras(tmp_path):
    run = RunFolder.create(tmp_path)
    rng = np.random.default_rng(0)
    for m, model in enumerate(["unet3d_xs", "unet3d_s", "unet3d_m"]):
        for seed in (24, 42):
            per_case = [{"case_id": f"c{i}", **{k: float(np.clip(0.6 + 0.1 * m + rng.normal(0, 0.03), 0, 1))
                                                 for k in REGION_METRIC_KEYS}} for i in range(8)]
            row = {f"test_{k}": float(np.mean([r[k] for r in per_case])) for k in REGION_METRIC_KEYS}
            row |= {"test_dice_mean": row["test_dice_wt"], "params": 1e6 * (m + 1), "flops": 1e9 * (3 - m)}
            run.write_unit(UnitKey(model, seed, 0), row, per_case, np.eye(4), {})
    comparison = run.finish().set_index("model")
    saved = pd.read_csv(run / COMPARISON_CSV).set_index("model")
    for column in ("test_dice_mean_ci_low", "test_dice_mean_ci_high", "pareto_params", "pareto_flops"):
        assert column in saved.columns, column
    assert (saved["test_dice_mean_ci_low"] < saved["test_dice_mean_ci_high"]).all()
    assert saved["pareto_params"].tolist() == [True, True, True]  # more parameters, more Dice
    assert saved["pareto_flops"].tolist() == [False, False, True]  # unet3d_m: best Dice at fewest FLOPs
    assert "pareto_latency" not in saved.columns, "latency never measured"
    assert comparison.loc["unet3d_m", "n_runs"] == 2
    tests = pd.read_csv(run / STATISTICS_CSV)
    assert list(tests.columns) == TEST_COLUMNS and set(tests["reference_model"]) == {"unet3d_m"}
    assert set(tests["model"]) == {"unet3d_xs", "unet3d_s"} and (tests["n_cases"] == 8).all()
    assert tests.loc[tests.metric == "dice_mean", "p_value"].notna().all()
    assert {"dice_mean", "dice_wt", "hd95_et", "nsd_et"} <= set(tests["metric"])
    ranking = pd.read_csv(run / RANKING_CSV)
    assert list(ranking.columns) == RANKING_COLUMNS and len(ranking) == 3


def test_rewriting_a_unit_replaces_its_rows(tmp_path):
    run = RunFolder.create(tmp_path)
    key = UnitKey("unet3d_xs", 24, 0)
    row, per_case = _unit_rows(key)
    run.write_unit(key, row, per_case, np.eye(4), {})
    run.write_unit(key, row, per_case, np.eye(4), {})  # a re-run of the same unit
    assert len(pd.read_csv(run / PER_CASE_CSV)) == 2
    for epoch in range(3):
        run.append_epoch(key, {"epoch": epoch, "train_loss": 1.0})
    run.reset_epoch_rows(key, [{"epoch": 0, "train_loss": 0.9}])  # the last checkpoint knew epoch 0 only
    epochs = pd.read_csv(run / EPOCHS_CSV)
    assert list(epochs["epoch"]) == [0] and epochs.loc[0, "train_loss"] == 0.9


def test_comparison_table_is_mean_and_std_per_model_in_order():
    results = pd.DataFrame({"model": ["b", "a", "b"], "seed": [1, 1, 2], "fold": [0, 0, 0],
                            "test_dice_wt": [0.6, 0.9, 0.8], "notes": ["x", "y", "z"]})
    table = comparison_table(results)
    assert list(table.index) == ["b", "a"]
    assert table.loc["b", "test_dice_wt_mean"] == pytest.approx(0.7)
    assert table.loc["b", "test_dice_wt_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert list(table["n_runs"]) == [2, 1] and "seed_mean" not in table.columns and "notes_mean" not in table
