"""Live tracking of a run's units in TensorBoard or MLflow (``--tracker``), as run callbacks on rank 0.

    --tracker tensorboard  (default)  RUN_DIR/tensorboard/{unit}/: one TensorBoard run per unit
                                      (``tensorboard --logdir RUN_DIR/tensorboard`` compares them)
    --tracker mlflow                  one MLflow run per unit, in one experiment named after the run folder, at
                                      ``--mlflow_uri`` (default: sqlite:///RUN_DIR/mlflow.db, artifacts in
                                      RUN_DIR/mlartifacts/)
    --tracker none

Both trackers log the same values under the same names, on one x axis: the unit's optimizer steps.

    train/loss_running        mean training loss of the current epoch so far, every CHECK_EVERY steps and at
                              the epoch's end (read where the training loop already synchronises: no extra sync)
    train/loss, train/lr      the epoch's mean training loss and learning rate  } at the end of each epoch, at
    val/dice_{wt,tc,et,mean}  validation Dice (validated epochs only)           } step = optimizer steps done
    time/epoch_s              the epoch's seconds                               }
    progress/{epoch,optimizer_steps,samples_seen}                               }
    test/*, efficiency/*, best/{val_dice,epoch}   the unit's results row (integrated_experiment_results.csv) at
                              its last step: test metrics, parameters, FLOPs, PAM, latency

and the run's configuration (config.json: options, training budget, device, versions, git commit) as
hyper-parameters. A unit continued by ``--resume`` logs into its own run again: TensorBoard discards the points
the interrupted process logged after the last checkpointed epoch (a ``purge_step`` at the resume step; that
epoch's values are logged again from the checkpoint's rows), MLflow reopens the run that carries the unit's
tag (MLflow cannot delete points: the interrupted epoch's ``train/loss_running`` points stay beside the new ones).

A tracker never costs a run: the first error (an unreachable server, a full disk, a missing package) is one
warning in run.log and switches that tracker off for the rest of the run. MLflow's HTTP retries and timeouts
are bounded first (:data:`MLFLOW_HTTP_DEFAULTS`, unless the environment sets them), so an unreachable server
costs seconds, not MLflow's default minutes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiment.config import CONFIG_JSON, ExperimentConfig
from experiment.data import training_budget
from experiment.run_folder import (
    COMPARISON_CSV,
    EFFICIENCY_KEYS,
    EPOCH_COLUMNS,
    EPOCHS_CSV,
    FAILED_CSV,
    MLFLOW_ARTIFACTS_DIR,
    MLFLOW_DB,
    PER_CASE_COLUMNS,
    PER_CASE_CSV,
    RANKING_CSV,
    RESULT_COLUMNS,
    RESULTS_CSV,
    SKIPPED_CSV,
    SPLITS_JSON,
    STATISTICS_CSV,
    VAL_DICE_KEYS,
    UnitKey,
)
from run.callbacks import RunCallbacks, RunState
from utils.errors import first_line
from utils.io import read_csv, write_csv

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- what is logged, by name
PROGRESS_METRIC = "train/loss_running"
EPOCH_METRICS: dict[str, str] = {"train_loss": "train/loss", "lr": "train/lr", "epoch_time_s": "time/epoch_s",
                                 **{k: f"val/{k.removeprefix('val_')}" for k in VAL_DICE_KEYS}}
COUNTER_METRICS = ("progress/epoch", "progress/optimizer_steps", "progress/samples_seen")
BEST_METRICS = {"best_val_dice": "best/val_dice", "best_epoch": "best/epoch"}
TEST_METRICS_TAG = "test/dice_mean"  # the headline metric (TensorBoard's HParams dashboard lists the test/* ones)
UNIT_TAGS = ("unit", "model", "seed", "fold")  # MLflow run tags: the unit's key
RUN_ARTIFACTS = (COMPARISON_CSV, STATISTICS_CSV, RANKING_CSV, RESULTS_CSV, FAILED_CSV, SKIPPED_CSV, CONFIG_JSON,
                 SPLITS_JSON)  # logged to every unit's MLflow run at the end of the run (artifact folder run/)
UNIT_TABLES = ((RESULTS_CSV, RESULT_COLUMNS), (PER_CASE_CSV, PER_CASE_COLUMNS), (EPOCHS_CSV, EPOCH_COLUMNS))
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # MLflow's own: 120 s, 7 retries, factor 2


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The tracked values of an ``all_epochs_results.csv`` row (NaN ones, e.g. an unvalidated epoch, left out);
    the validation Dice of every region of the data set (``val_dice_{region}``: WT/TC/ET, RC, CC ...)."""
    metrics = EPOCH_METRICS | {c: f"val/{c.removeprefix('val_')}" for c in row if str(c).startswith("val_dice_")}
    values = {name: _finite(row.get(column)) for column, name in metrics.items()}
    return {name: v for name, v in values.items() if v is not None}


def unit_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The tracked values of a unit's ``integrated_experiment_results.csv`` row: every test metric
    (``test/dice_wt`` ...), the efficiency columns (``efficiency/params`` ...) and the best epoch; measured
    values only."""
    names = {c: f"test/{c.removeprefix('test_')}" for c in row if str(c).startswith("test_")}
    names |= {k: f"efficiency/{k}" for k in EFFICIENCY_KEYS} | BEST_METRICS
    values = {name: _finite(row.get(column)) for column, name in names.items()}
    return {name: v for name, v in values.items() if v is not None}


def hyperparameters(cfg: ExperimentConfig, record: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """The run's configuration as flat hyper-parameters: every option of ``cfg`` (lists as JSON, None as
    ``"none"``), then ``config.json``'s budget, device and versions (``versions.torch`` ...) and git commit."""
    flat: dict[str, Any] = dict(cfg.to_dict())
    for key in ("world_size", "steps_per_epoch", "total_steps", "global_batch_size", "samples_seen", "device",
                "amp", "git_commit", "n_cases"):
        if key in record:
            flat[key if key not in flat else f"run.{key}"] = record[key]
    for name, version in (record.get("versions") or {}).items():
        flat[f"versions.{name}"] = version

    def plain(value: Any) -> str | int | float | bool:
        if value is None:
            return "none"
        if isinstance(value, bool | int | float | str):
            return value
        return json.dumps(value)

    return {k: plain(v) for k, v in flat.items()}


@dataclass
class UnitLog:
    """What a tracker keeps about the unit being trained: its name, where its steps start and how many an
    epoch has (the loader's count as ``experiment.data.training_budget`` states it; the count observed in an
    epoch wins where a custom trainer's loader differs)."""

    key: UnitKey
    name: str
    steps_per_epoch: int
    samples_per_epoch: int
    global_batch_size: int
    epochs: int
    start_epoch: int
    last_progress: tuple[int, int] | None = None
    observed: dict[int, int] = field(default_factory=dict)

    def step(self, epoch: int, step_in_epoch: int) -> int:
        return epoch * self.steps_per_epoch + step_in_epoch

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def unit_split(state: RunState, key: UnitKey) -> dict[str, Any]:
    return next(f for f in state.splits[str(key.seed)]["folds"] if int(f["fold"]) == key.fold)


def unit_rows(state: RunState, key: UnitKey, name: str, columns: list[str]) -> Any:
    table = read_csv(state.run / name, columns)
    if table.empty:
        return table
    mask = ((table["model"].astype(str) == key.model) & (table["seed"].astype(int) == key.seed)
            & (table["fold"].astype(int) == key.fold))
    return table[mask]


class Tracker(RunCallbacks):
    """The events of a run turned into logged values (module docstring); subclasses say where they go:
    :meth:`start`, :meth:`open_unit`, :meth:`log`, :meth:`flush`, :meth:`close_unit`, :meth:`end`,
    :meth:`shutdown`. The first exception of any of them switches the tracker off (one warning)."""

    kind = "tracker"

    def __init__(self) -> None:
        self.active = True
        self.unit: UnitLog | None = None

    # ------------------------------------------------------------------ what a subclass provides
    def start(self, state: RunState) -> None: ...

    def open_unit(self, state: RunState, unit: UnitLog) -> None: ...

    def log(self, values: Mapping[str, float], step: int) -> None: ...

    def flush(self) -> None: ...

    def close_unit(self, state: RunState, unit: UnitLog, status: str, detail: str = "") -> None: ...

    def end(self, state: RunState) -> None: ...

    def shutdown(self) -> None: ...

    def abandon(self) -> None:
        """Drop what is open after a failure, without talking to a server that may be the failure."""

    # ------------------------------------------------------------------ guard
    def _safely(self, what: str, fn: Any, *args: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args)
        except Exception as exc:  # a tracker must never cost the run
            self.active = False
            hint = " (pip install -r requirements.txt)" if isinstance(exc, ImportError) else ""
            log.warning("warning: %s tracking failed while %s (%s)%s; it is off for the rest of this run (the run "
                        "folder holds every value)", self.kind, what, first_line(exc, with_type=True), hint)
            try:
                self.abandon()
            except Exception:  # already failing: the warning above says enough
                pass

    # ------------------------------------------------------------------ run events
    def on_run_start(self, state: RunState) -> None:
        self._safely("starting", self.start, state)

    def on_unit_start(self, state: RunState, key: UnitKey) -> None:
        self.unit = None
        self._safely(f"opening unit {state.run.unit(key)}", self._open, state, key)

    def _open(self, state: RunState, key: UnitKey) -> None:
        """The unit's steps (its split's training budget) and where it starts: after the epoch rows it has
        (a unit continued by --resume has its checkpoint's rows), then :meth:`open_unit`."""
        cfg = state.cfg
        budget = training_budget(cfg, len(unit_split(state, key)["train"]), state.ctx.world_size)
        done = unit_rows(state, key, EPOCHS_CSV, EPOCH_COLUMNS)
        start = int(done["epoch"].max()) + 1 if not done.empty else 0
        unit = UnitLog(key, state.run.unit(key), budget["steps_per_epoch"],
                       budget["samples_seen"] // max(cfg.epochs, 1), budget["global_batch_size"], cfg.epochs, start)
        self.open_unit(state, unit)
        self.unit = unit

    def on_train_progress(self, state: RunState, key: UnitKey, epoch: int, step: int, loss: float) -> None:
        unit = self.unit
        if unit is None or unit.key != key or unit.last_progress == (epoch, step):
            return  # the end-of-epoch check repeats the last 16-step one when the epoch has a multiple of 16
        unit.last_progress = (epoch, step)
        unit.observed[epoch] = step
        if _finite(loss) is not None:
            self._safely("logging the training loss", self.log, {PROGRESS_METRIC: loss}, unit.step(epoch, step))

    def on_epoch_end(self, state: RunState, key: UnitKey, row: dict[str, Any]) -> None:
        unit = self.unit
        if unit is None or unit.key != key:
            return
        epoch = int(row["epoch"])
        seen = unit.observed.get(epoch)
        if seen and seen != unit.steps_per_epoch and epoch == unit.start_epoch:  # a trainer's own loader
            unit.steps_per_epoch, unit.samples_per_epoch = seen, seen * unit.global_batch_size
        self._safely(f"logging epoch {epoch}", self._log_epoch, unit, row)

    def _log_epoch(self, unit: UnitLog, row: Mapping[str, Any]) -> None:
        epoch = int(row["epoch"])
        steps = unit.step(epoch + 1, 0)
        values = {**epoch_metrics(row), "progress/epoch": epoch + 1, "progress/optimizer_steps": steps,
                  "progress/samples_seen": (epoch + 1) * unit.samples_per_epoch}
        self.log(values, steps)
        self.flush()

    def on_unit_end(self, state: RunState, key: UnitKey, result: Any, evaluation: Any) -> None:
        unit = self.unit
        if unit is None or unit.key != key:
            return
        rows = unit_rows(state, key, RESULTS_CSV, RESULT_COLUMNS)
        if not rows.empty:
            self._safely(f"logging the results of {unit.name}", self.log, unit_metrics(rows.iloc[-1].to_dict()),
                         unit.total_steps)
        self._safely(f"closing {unit.name}", self.close_unit, state, unit, "FINISHED")
        self.unit = None

    def on_unit_failed(self, state: RunState, key: UnitKey, epoch: int, reason: str) -> None:
        if self.unit is not None and self.unit.key == key:
            self._safely(f"closing {self.unit.name}", self.close_unit, state, self.unit, "FAILED", reason)
        self.unit = None

    def on_unit_interrupted(self, state: RunState, key: UnitKey) -> None:
        if self.unit is not None and self.unit.key == key:
            self._safely(f"closing {self.unit.name}", self.close_unit, state, self.unit, "KILLED",
                         "interrupted; continue with --resume")
        self.unit = None
        self._safely("closing", self.shutdown)

    def on_run_end(self, state: RunState) -> None:
        self._safely("ending the run", self.end, state)
        self._safely("closing", self.shutdown)


# ----------------------------------------------------------------------------- TensorBoard
def _session_end(status: str, step: int) -> Any:
    """An HParams session-end summary with ``status`` (torch's ``hparams()`` only writes STATUS_SUCCESS)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    value = {"FINISHED": "STATUS_SUCCESS", "FAILED": "STATUS_FAILURE"}[status]
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(value), end_time_secs=time.time()),
                                version=PLUGIN_DATA_VERSION)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                      content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])


class TensorBoardTracker(Tracker):
    """One TensorBoard run per unit: event files in ``RUN_DIR/tensorboard/{unit}/`` (torch's SummaryWriter)."""

    kind = "TensorBoard"
    FLUSH_SECS = 30

    def __init__(self) -> None:
        super().__init__()
        self.writer: Any = None

    def start(self, state: RunState) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (tensorboard installed: fail here, once)

    def open_unit(self, state: RunState, unit: UnitLog) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        folder = state.run.tensorboard_dir(unit.key)
        before = folder.is_dir() and any(folder.glob("events.out.tfevents.*"))
        resume_step = unit.step(unit.start_epoch, 0)
        # a unit logged before (interrupted, or failed and tried again): discard what it logged after the last
        # checkpointed epoch, whose values are logged again below from its row. Every process writes a session
        # START (purge_step) because TensorBoard's Python loader takes the first START it sees for the initial one.
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=resume_step if before else 0,
                                    flush_secs=self.FLUSH_SECS)
        if not before or resume_step == 0:
            params = hyperparameters(state.cfg, state.run.read_config())
            exp, ssi, _ = hparams(params, {f"test/{m}": 0.0 for m in ("dice_mean", "dice_wt", "dice_tc", "dice_et")})
            self.writer.file_writer.add_summary(exp)
            self.writer.file_writer.add_summary(ssi)
        if before and unit.start_epoch > 0:
            rows = unit_rows(state, unit.key, EPOCHS_CSV, EPOCH_COLUMNS)
            last = rows[rows["epoch"].astype(int) == unit.start_epoch - 1]
            if not last.empty:
                row = last.iloc[-1].to_dict()
                self._log_epoch(unit, row)
                if _finite(row.get("train_loss")) is not None:
                    self.log({PROGRESS_METRIC: float(row["train_loss"])}, resume_step)
        self.writer.flush()

    def log(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)

    def flush(self) -> None:
        self.writer.flush()

    def close_unit(self, state: RunState, unit: UnitLog, status: str, detail: str = "") -> None:
        if detail:
            self.writer.add_text("status", f"{status}: {detail}", unit.total_steps)
        if status != "KILLED":  # an interrupted unit goes on with --resume: its HParams session is not over
            self.writer.file_writer.add_summary(_session_end(status, unit.total_steps), unit.total_steps)
        self.shutdown()

    def shutdown(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()

    def abandon(self) -> None:
        self.shutdown()


# ----------------------------------------------------------------------------- MLflow
def default_mlflow_uri(run_dir: str | Path) -> str:
    """MLflow's SQLite store in the run folder: ``sqlite:///RUN_DIR/mlflow.db``."""
    return f"sqlite:///{(Path(run_dir) / MLFLOW_DB).resolve()}"


def is_remote(uri: str) -> bool:
    """A tracking server (or Databricks), which keeps the artifacts where it decides."""
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


class MlflowTracker(Tracker):
    """One MLflow run per unit (tags: the unit's key) in the experiment named after the run folder."""

    kind = "MLflow"

    def __init__(self, uri: str | None = None) -> None:
        super().__init__()
        self.uri = uri
        self.client: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.pending: list[Any] = []  # asynchronous log_batch operations not yet waited for

    def start(self, state: RunState) -> None:
        for name, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (creating tables ...) are noise here

        self.uri = self.uri or default_mlflow_uri(state.run.path)
        self.client = MlflowClient(tracking_uri=self.uri)
        folder = str(state.run.path.resolve())
        name = state.run.path.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None and experiment.tags.get("run_folder", folder) != folder:
            name = f"{name} ({folder})"  # another run folder of the same name already logged to this store
            experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None if is_remote(self.uri) else (state.run / MLFLOW_ARTIFACTS_DIR).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(name, artifact_location=location,
                                                               tags={"run_folder": folder})
        else:
            self.experiment_id = experiment.experiment_id
        log.info("MLflow: experiment %r (id %s) at %s", name, self.experiment_id, self.uri)

    def _find_run(self, unit_name: str) -> Any:
        quoted = unit_name.replace("'", "\\'")
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.unit = '{quoted}'", max_results=1)
        return runs[0] if runs else None

    def open_unit(self, state: RunState, unit: UnitLog) -> None:
        from mlflow.entities import Param

        run = self._find_run(unit.name)
        if run is None:
            tags = dict(zip(UNIT_TAGS, (unit.name, unit.key.model, str(unit.key.seed), str(unit.key.fold))))
            run = self.client.create_run(self.experiment_id, run_name=unit.name,
                                         tags={**tags, "run_folder": str(state.run.path.resolve())})
        else:  # the unit's own run, from before an interruption or a failure
            self.client.update_run(run.info.run_id, status="RUNNING")
            self.client.set_tag(run.info.run_id, "resumed_at_epoch", str(unit.start_epoch))
        self.run_id = run.info.run_id
        logged = set(run.data.params)
        params = [Param(k, str(v)) for k, v in hyperparameters(state.cfg, state.run.read_config()).items()
                  if k not in logged]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Queued (MLflow's asynchronous logging): training never waits for the store or the server; every epoch
        end (:meth:`flush`) waits for what was queued, so a failure is seen there."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        operation = self.client.log_batch(self.run_id, synchronous=False,
                                          metrics=[Metric(k, float(v), now, int(step)) for k, v in values.items()])
        if operation is not None:
            self.pending.append(operation)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for operation in pending:  # each one: waiting for the last only does not wait for the others
            operation.wait()

    def close_unit(self, state: RunState, unit: UnitLog, status: str, detail: str = "") -> None:
        self.flush()
        run_id, self.run_id = self.run_id, None
        if status == "FINISHED":
            checkpoint = state.run.best_checkpoint(unit.key)
            if checkpoint.is_file():
                self.client.log_artifact(run_id, str(checkpoint), "checkpoint")
            with tempfile.TemporaryDirectory() as tmp:
                for name, columns in UNIT_TABLES:  # the unit's own rows of the run's per-unit tables
                    rows = unit_rows(state, unit.key, name, columns)
                    if not rows.empty:
                        write_csv(Path(tmp) / name, rows)
                self.client.log_artifacts(run_id, tmp, "csv")
        if detail:
            self.client.set_tag(run_id, "status_detail", detail[:5000])
        self.client.set_terminated(run_id, status=status)

    def end(self, state: RunState) -> None:
        """The run's tables (comparison, statistics, ranking, results, failures, skipped cases, config, splits)
        into every unit's run of the experiment, also those finished before a ``--resume``."""
        with tempfile.TemporaryDirectory() as tmp:
            present = False
            for name in RUN_ARTIFACTS:
                source = state.run / name
                if source.is_file():
                    (Path(tmp) / name).write_bytes(source.read_bytes())
                    present = True
            if not present:
                return
            for run in self.client.search_runs([self.experiment_id], max_results=10_000):
                self.client.log_artifacts(run.info.run_id, tmp, "run")

    def shutdown(self) -> None:
        self.flush()
        if self.run_id is not None and self.client is not None:
            run_id, self.run_id = self.run_id, None
            self.client.set_terminated(run_id, status="KILLED")

    def abandon(self) -> None:
        self.pending, self.run_id = [], None  # its status stays RUNNING; a --resume reopens it


def make_trackers(cfg: ExperimentConfig) -> list[Tracker]:
    """The trackers of ``cfg.tracker`` (none, tensorboard, mlflow); cheap to build: they import their library
    when the run starts, on rank 0 only."""
    if cfg.tracker == "tensorboard":
        return [TensorBoardTracker()]
    if cfg.tracker == "mlflow":
        return [MlflowTracker(cfg.mlflow_uri)]
    return []
