"""--tracker tensorboard / mlflow on tiny runs: what the event files and the MLflow store hold (read back with
TensorBoard's event reader and MLflow's client), a unit continued by --resume logging into its own run, and a
tracker that fails (an unreachable server) costing nothing but a warning."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

import data_loader as dl
from experiment.config import ExperimentConfig, load_run_config, resume_config
from experiment.run_folder import TEST_METRIC_COLUMNS
from run.callbacks import RunCallbacks
from run.loop import run_experiment
from run.tracking import (
    COUNTER_METRICS,
    EPOCH_METRICS,
    PROGRESS_METRIC,
    TensorBoardTracker,
    default_mlflow_uri,
    hyperparameters,
    make_trackers,
)
from training import trainer as training

pytestmark = pytest.mark.slow

SHAPE = (40, 40, 32)
N_CASES = 6
STEPS = 17  # optimizer steps per epoch: the running loss is logged at steps 16 and 17 of each epoch
MODELS = ["unet3d_xs", "unet3d_stride_xs"]
EPOCH_TAGS = {*EPOCH_METRICS.values(), *COUNTER_METRICS}
UNIT_TAGS = {f"test/{c.removeprefix('test_')}" for c in TEST_METRIC_COLUMNS} | {
    "efficiency/params", "best/val_dice", "best/epoch"}


def tracked_run(cfg: ExperimentConfig, callbacks=()):
    """The loop with the trackers of ``cfg.tracker`` passed by the caller, as the command line does (no charts)."""
    resolved = resume_config(cfg) if cfg.resume is not None else cfg
    return run_experiment(cfg, [*callbacks, *make_trackers(resolved)])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    dl.generate_synthetic_dataset(root, n_cases=N_CASES, seed=0, shape=SHAPE, difficulty="easy")
    return root


def config(data_root: Path, results: Path, **changes) -> ExperimentConfig:
    base = dict(data_path=str(data_root), dataset_version="synthetic", synthetic_cases=N_CASES,
                synthetic_shape=list(SHAPE), synthetic_difficulty="easy", cache_dir=str(data_root / "cache"),
                epochs=2, models=MODELS, dim="3d", patch_size=[32, 32, 32], num_workers=0, device="cpu",
                batch_size=2, iters_per_epoch=STEPS, results_dir=str(results), measure_efficiency=False,
                deterministic=True)
    base.update(changes)
    return ExperimentConfig(**base)


def scalars(unit_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run, as TensorBoard reads it (purged points dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(unit_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def plugin_scalars(unit_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The same, as ``tensorboard --load_fast=false`` reads them (the plugin loader: scalars as tensors)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    acc = EventAccumulator(str(unit_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"] if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


def mlflow_runs(run_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=default_mlflow_uri(run_dir))
    experiment = client.get_experiment_by_name(run_dir.name)
    assert experiment is not None, "one experiment named after the run folder"
    return client, client.search_runs([experiment.experiment_id])


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def unit_rows(run_dir: Path, name: str, model: str) -> pd.DataFrame:
    table = pd.read_csv(run_dir / name)
    return table[table["model"] == model]


@pytest.fixture(scope="module")
def tensorboard_run(data_root, tmp_path_factory) -> Path:
    summary = tracked_run(config(data_root, tmp_path_factory.mktemp("tb")))  # the default tracker
    assert summary.exit_code == 0 and "WARNING" not in (summary.run_dir / "run.log").read_text()
    return summary.run_dir


@pytest.fixture(scope="module")
def mlflow_run(data_root, tmp_path_factory) -> Path:
    summary = tracked_run(config(data_root, tmp_path_factory.mktemp("mlflow"), tracker="mlflow"))
    assert summary.exit_code == 0 and "WARNING" not in (summary.run_dir / "run.log").read_text()
    return summary.run_dir


def test_tensorboard_holds_one_run_per_unit_with_every_tag_at_its_steps(tensorboard_run):
    run = tensorboard_run
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == sorted(f"{m}_seed_24" for m in MODELS)
    results = pd.read_csv(run / "integrated_experiment_results.csv").set_index("model")
    for model in MODELS:
        got = scalars(run / "tensorboard" / f"{model}_seed_24")
        assert EPOCH_TAGS | UNIT_TAGS | {PROGRESS_METRIC} <= set(got), set(got) ^ (EPOCH_TAGS | UNIT_TAGS)
        # the running loss every 16 steps and at each epoch's end; epoch values at the epoch's last step
        assert [s for s, _ in got[PROGRESS_METRIC]] == [16, 17, 33, 34]
        for tag in EPOCH_TAGS:
            assert [s for s, _ in got[tag]] == [STEPS, 2 * STEPS], tag
        assert [v for _, v in got["progress/optimizer_steps"]] == [STEPS, 2 * STEPS]
        assert [v for _, v in got["progress/samples_seen"]] == [2 * STEPS, 4 * STEPS]  # batch 2, one process
        assert [v for _, v in got["progress/epoch"]] == [1, 2]
        epochs = unit_rows(run, "all_epochs_results.csv", model).sort_values("epoch")
        for column, tag in EPOCH_METRICS.items():
            assert [v for _, v in got[tag]] == pytest.approx(list(epochs[column]), rel=1e-6), tag
        # the running loss at an epoch's end is that epoch's mean loss
        assert got[PROGRESS_METRIC][1][1] == pytest.approx(epochs["train_loss"].iloc[0], rel=1e-6)
        for tag in UNIT_TAGS:
            (step, value), = got[tag]
            column = {"best/val_dice": "best_val_dice", "best/epoch": "best_epoch",
                      "efficiency/params": "params"}.get(tag, "test_" + tag.removeprefix("test/"))
            assert step == 2 * STEPS and value == pytest.approx(results.loc[model, column], rel=1e-6), tag


def test_tensorboard_hparams_hold_the_run_configuration(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tensorboard_run / "tensorboard" / "unet3d_xs_seed_24"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    params = start.session_start_info.hparams
    assert params["lr"].number_value == pytest.approx(1e-3) and params["dim"].string_value == "3d"
    assert params["models"].string_value == '["unet3d_xs", "unet3d_stride_xs"]'
    assert params["steps_per_epoch"].number_value == STEPS and params["git_commit"].string_value
    assert params["versions.torch"].string_value
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == 1  # STATUS_SUCCESS


def test_mlflow_store_holds_one_run_per_unit_with_the_metrics_and_the_checkpoint(mlflow_run, tensorboard_run):
    run = mlflow_run
    assert (run / "mlflow.db").is_file() and not (run / "tensorboard").exists()
    client, runs = mlflow_runs(run)
    assert sorted(r.data.tags["unit"] for r in runs) == sorted(f"{m}_seed_24" for m in MODELS)
    for r in runs:
        model = r.data.tags["model"]
        assert (r.data.tags["seed"], r.data.tags["fold"], r.info.status) == ("24", "0", "FINISHED")
        assert r.data.params["lr"] == "0.001" and r.data.params["steps_per_epoch"] == str(STEPS)
        assert r.data.params["run.device"] == "cpu" and r.data.params["git_commit"]
        # the same values at the same steps as the TensorBoard run of the same deterministic configuration
        # (TensorBoard keeps float32); seconds differ from run to run
        tb = scalars(tensorboard_run / "tensorboard" / f"{model}_seed_24")
        assert set(r.data.metrics) == set(tb)
        for tag in set(tb) - {"time/epoch_s"}:
            got = history(client, r.info.run_id, tag)
            assert [s for s, _ in got] == [s for s, _ in tb[tag]], tag
            assert [v for _, v in got] == pytest.approx([v for _, v in tb[tag]], rel=1e-6, abs=1e-9), tag
        assert [s for s, _ in history(client, r.info.run_id, "time/epoch_s")] == [STEPS, 2 * STEPS]
        # artifacts: the unit's best checkpoint (the very file), its rows, and the run's tables
        local = Path(client.download_artifacts(r.info.run_id, f"checkpoint/{model}_seed_24_best.pth"))
        assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(
            (run / f"{model}_seed_24_best.pth").read_bytes()).digest()
        csvs = {a.path for a in client.list_artifacts(r.info.run_id, "csv")}
        assert csvs == {"csv/integrated_experiment_results.csv", "csv/per_case_results.csv",
                        "csv/all_epochs_results.csv"}
        epochs = pd.read_csv(client.download_artifacts(r.info.run_id, "csv/all_epochs_results.csv"))
        assert set(epochs["model"]) == {model} and len(epochs) == 2
        tables = {a.path for a in client.list_artifacts(r.info.run_id, "run")}
        assert {"run/model_comparison.csv", "run/statistical_tests.csv", "run/ranking.csv",
                "run/integrated_experiment_results.csv", "run/config.json", "run/splits.json"} <= tables
    assert (run / "mlartifacts").is_dir(), "the SQLite store's artifacts live in the run folder"


class StopAt(RunCallbacks):
    """Requests a stop (as SIGINT does) when the running loss of (epoch, step) is reported."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def on_train_progress(self, state, key, epoch, step, loss):
        if (epoch, step) == self.at:
            training.STOP.requested = True


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_resumed_unit_logs_into_its_own_run(data_root, tmp_path, monkeypatch, tracker):
    monkeypatch.setattr(training.STOP, "requested", False)
    cfg = config(data_root, tmp_path, models=["unet3d_xs"], epochs=3, tracker=tracker)
    # the stop is seen at the next check, the end of epoch 1: after its running loss at steps 33 and 34 was logged,
    # before its row and checkpoint
    first = tracked_run(cfg, [StopAt(1, 16)])
    assert first.exit_code == 130
    monkeypatch.setattr(training.STOP, "requested", False)
    resumed = tracked_run(ExperimentConfig(resume=str(first.run_dir), device="cpu", num_workers=0))
    assert resumed.exit_code == 0 and resumed.run_dir == first.run_dir
    run = first.run_dir
    epochs = unit_rows(run, "all_epochs_results.csv", "unet3d_xs").sort_values("epoch")
    assert list(epochs["epoch"]) == [0, 1, 2]
    assert "WARNING" not in (run / "run.log").read_text().replace("WARNING run.loop: interrupted", "")
    if tracker == "tensorboard":
        unit = run / "tensorboard" / "unet3d_xs_seed_24"
        assert len(list(unit.glob("events.out.tfevents.*"))) == 2, "the resumed process appends to the unit's run"
        assert [p.name for p in (run / "tensorboard").iterdir()] == ["unet3d_xs_seed_24"]
        got = scalars(unit)
        assert plugin_scalars(unit) == got, "both TensorBoard loaders drop the same points"
        # the interrupted epoch's points are gone: each step once, from the process that finished the unit
        assert [s for s, _ in got[PROGRESS_METRIC]] == [16, 17, 33, 34, 50, 51]
        loss = {s: v for s, v in got[PROGRESS_METRIC]}
        assert [loss[17], loss[34], loss[51]] == pytest.approx(list(epochs["train_loss"]), rel=1e-6)
        for tag in EPOCH_TAGS:
            assert [s for s, _ in got[tag]] == [STEPS, 2 * STEPS, 3 * STEPS], tag
        assert [v for _, v in got["train/loss"]] == pytest.approx(list(epochs["train_loss"]), rel=1e-6)
        assert [s for s, _ in got["test/dice_mean"]] == [3 * STEPS]
    else:
        client, runs = mlflow_runs(run)
        assert len(runs) == 1, "the resumed unit reopened its run instead of starting a second one"
        r = runs[0]
        assert r.info.status == "FINISHED" and r.data.tags["resumed_at_epoch"] == "1"
        got = history(client, r.info.run_id, "train/loss")
        assert [s for s, _ in got] == [STEPS, 2 * STEPS, 3 * STEPS]
        assert [v for _, v in got] == pytest.approx(list(epochs["train_loss"]), rel=1e-9)
        steps = [s for s, _ in history(client, r.info.run_id, PROGRESS_METRIC)]
        # MLflow cannot delete points: the interrupted epoch's running loss stays beside the new one
        assert steps == [16, 17, 33, 33, 34, 34, 50, 51]
        assert [s for s, _ in history(client, r.info.run_id, "test/dice_mean")] == [3 * STEPS]
        assert {a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")} == {
            "checkpoint/unet3d_xs_seed_24_best.pth"}


@pytest.fixture
def mlflow_server(tmp_path):
    """A local MLflow tracking server (``mlflow server``, the full ``mlflow`` package of requirements-dev.txt) on a
    free loopback port, with its own SQLite store and proxied artifacts; stopped after the test."""
    import importlib.util

    if importlib.util.find_spec("mlflow.server") is None or importlib.util.find_spec("flask") is None:
        why = "the MLflow server needs the full mlflow package (pip install -r requirements-dev.txt)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server_artifacts")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow server did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.5)
        yield url, tmp_path / "server_artifacts"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_a_tracking_server_uri_works_the_same(data_root, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    url, artifacts = mlflow_server
    cfg = config(data_root, tmp_path / "results", models=["unet3d_xs"], epochs=1, iters_per_epoch=STEPS,
                 tracker="mlflow", mlflow_uri=url)
    summary = tracked_run(cfg)
    assert summary.exit_code == 0 and "WARNING" not in (summary.run_dir / "run.log").read_text()
    assert not {"mlflow.db", "mlartifacts"} & {p.name for p in summary.run_dir.iterdir()}, "the server keeps it all"
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(summary.run_dir.name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["unit"] == "unet3d_xs_seed_24" and run.info.status == "FINISHED"
    epochs = unit_rows(summary.run_dir, "all_epochs_results.csv", "unet3d_xs")
    assert history(client, run.info.run_id, "train/loss") == [(STEPS, pytest.approx(epochs["train_loss"].iloc[0]))]
    assert [s for s, _ in history(client, run.info.run_id, PROGRESS_METRIC)] == [16, 17]
    results = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv")
    assert run.data.metrics["test/dice_mean"] == pytest.approx(results["test_dice_mean"].iloc[0])
    stored = list(artifacts.rglob("checkpoint/unet3d_xs_seed_24_best.pth"))
    assert len(stored) == 1 and stored[0].read_bytes() == (summary.run_dir / "unet3d_xs_seed_24_best.pth").read_bytes()
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"checkpoint", "csv", "run"}


def test_an_unreachable_mlflow_server_leaves_the_run_complete_with_a_warning(data_root, tmp_path, monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)  # the tracker's own bounds, not a test's
    cfg = config(data_root, tmp_path, models=["unet3d_xs"], epochs=1, iters_per_epoch=2, tracker="mlflow",
                 mlflow_uri="http://127.0.0.1:9")  # the discard port: nothing listens there
    t0 = time.perf_counter()
    summary = tracked_run(cfg)
    seconds = time.perf_counter() - t0
    assert summary.exit_code == 0
    results = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv")
    assert list(results["model"]) == ["unet3d_xs"] and math.isfinite(results["test_dice_mean"].iloc[0])
    warnings = [line for line in (summary.run_dir / "run.log").read_text().splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "MLflow tracking failed while starting" in warnings[0], warnings
    assert "127.0.0.1:9" in warnings[0] and "off for the rest of this run" in warnings[0]
    assert not (summary.run_dir / "mlflow.db").exists() and not (summary.run_dir / "tensorboard").exists()
    assert seconds < 60, f"an unreachable server cost {seconds:.0f} s"


def test_a_tracker_failing_mid_run_warns_once_and_the_run_completes(data_root, tmp_path):
    calls = []

    def broken(self, values, step):
        calls.append(step)
        raise OSError("No space left on device (injected)")

    cfg = config(data_root, tmp_path, models=MODELS, epochs=1, iters_per_epoch=2)
    original = TensorBoardTracker.log
    TensorBoardTracker.log = broken
    try:
        summary = tracked_run(cfg)
    finally:
        TensorBoardTracker.log = original
    assert summary.exit_code == 0 and len(pd.read_csv(summary.run_dir / "integrated_experiment_results.csv")) == 2
    assert len(calls) == 1, "switched off after the first failure"
    warnings = [line for line in (summary.run_dir / "run.log").read_text().splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "TensorBoard tracking failed" in warnings[0] and "No space left" in warnings[0]


def test_tracker_none_writes_no_tracking_files(data_root, tmp_path):
    summary = tracked_run(config(data_root, tmp_path, models=["unet3d_xs"], epochs=1,
                                               iters_per_epoch=2, tracker="none"))
    assert summary.exit_code == 0
    assert not {"tensorboard", "mlflow.db", "mlartifacts"} & {p.name for p in summary.run_dir.iterdir()}


def test_resume_keeps_the_runs_tracker_unless_the_command_names_another(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = ExperimentConfig(tracker="mlflow", mlflow_uri="http://tracking:5000", dataset_version="synthetic")
    (run / "config.json").write_text(pd.Series({"config": saved.to_dict()}).to_json())
    kept = resume_config(ExperimentConfig(resume=str(run)))
    assert (kept.tracker, kept.mlflow_uri) == ("mlflow", "http://tracking:5000")
    moved = resume_config(ExperimentConfig(resume=str(run), mlflow_uri="http://elsewhere:5000"))
    assert moved.mlflow_uri == "http://elsewhere:5000"
    assert resume_config(ExperimentConfig(resume=str(run), tracker="none")).tracker == "none"
    assert load_run_config(run, tracker="tensorboard").tracker == "tensorboard"
    with pytest.raises(ValueError, match="--tracker must be one of"):
        ExperimentConfig(tracker="wandb")


def test_hyperparameters_are_flat_plain_values():
    cfg = ExperimentConfig(models=["a", "b"], max_samples=None)
    record = {"device": "cuda:0", "steps_per_epoch": 250, "versions": {"torch": "2.13"}, "git_commit": "abc"}
    params = hyperparameters(cfg, record)
    assert params["models"] == '["a", "b"]' and params["max_samples"] == "none" and params["device"] == "auto"
    assert params["run.device"] == "cuda:0" and params["steps_per_epoch"] == 250
    assert params["versions.torch"] == "2.13" and params["git_commit"] == "abc"
    assert all(isinstance(v, str | int | float | bool) for v in params.values())
