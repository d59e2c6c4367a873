"""The run folder: every file name and column list, and :class:`RunFolder`, the one object that writes it.

``{results_dir}/integrated_experiment_results_YYYYMMDD_HHMMSS/`` holds the files named below. The
required columns are a public contract (scripts outside the project read them; README "Outputs");
more columns follow them. Every file is written atomically (``utils.io``), and a unit's rows are written last
to ``integrated_experiment_results.csv``, whose row marks the unit finished. Only rank 0 writes.

``visualization/`` and ``evaluate_experiment.py`` take their file names from here.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiment.config import CONFIG_JSON, ExperimentConfig, load_run_config
from metrics import statistics as st
from utils.checkpoint import BEST_KEYS, CheckpointError, load_checkpoint, save_checkpoint
from utils.io import append_rows, read_csv, read_json, replace_rows, write_csv, write_json
from utils.labels import CLASSIC, LabelScheme

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- file names
RUN_PREFIX = "integrated_experiment_results_"
SPLITS_JSON = "splits.json"
RESULTS_CSV = "integrated_experiment_results.csv"
EPOCHS_CSV = "all_epochs_results.csv"
PER_CASE_CSV = "per_case_results.csv"
COMPARISON_CSV = "model_comparison.csv"
STATISTICS_CSV = "statistical_tests.csv"
RANKING_CSV = "ranking.csv"
STAGE_PAM_CSV = "stage_wise_pam_results.csv"
FAILED_CSV = "failed_runs.csv"
SKIPPED_CSV = "skipped_cases.csv"
MODALITY_CSV = "modality_contributions.csv"
CONFUSION_JSON = "confusion_matrices.json"
EVALUATION_CSV = "evaluation_results.csv"
EVALUATION_PER_CASE_CSV = "evaluation_per_case_results.csv"
PREDICTIONS_DIR = "predictions"  # {unit}/{case_id}.nii.gz and references/{case_id}.nii.gz (--export_predictions)
REFERENCES_DIR = "references"
OFFICIAL_METRICS_CSV = "official_brats_metrics.csv"
LOG_FILE = "run.log"
LAST_DIR = "last"
REPORT_HTML = "report.html"  # the one-page report (visualization/report.py; python -m visualization RUN --report)
TENSORBOARD_DIR = "tensorboard"  # {unit}/ event files of --tracker tensorboard (run/tracking.py)
MLFLOW_DB = "mlflow.db"  # --tracker mlflow without --mlflow_uri: MLflow's SQLite store ...
MLFLOW_ARTIFACTS_DIR = "mlartifacts"  # ... and its artifacts ({mlflow run id}/artifacts/)

# ----------------------------------------------------------------------------- columns
# The metric columns follow the data set's label scheme (utils/labels.py): Dice/HD95/NSD of every region,
# Dice of every class that is not a region. The constants are those of BraTS 2018-2023 (CLASSIC); a run
# folder of another data set has the columns of its scheme (RunFolder.scheme), dice_wt/tc/et included.
UNIT_COLUMNS = ["model", "seed", "fold"]
EFFICIENCY_KEYS = ["params", "flops", "pam_train_mb", "pam_train_mb_std", "pam_inference_mb",
                   "pam_inference_mb_std", "latency_ms", "latency_ms_std"]

# The cost of a unit, as nnU-Net Revisited (Isensee et al., MICCAI 2024) reports it; measured by the trainer and
# the test (training/trainer.py, evaluation/scoring.py), on the hardware that ``cost_hardware`` names (the GPU, or
# the CPU model: then the memory is the training process's peak resident set, ``train_peak_mem_kind`` cpu_rss).
# Per epoch (all_epochs_results.csv): the training pass alone (s), its optimizer steps, and the peak memory (GB,
# 10^9 bytes) since the unit's training started in this session, the max over ranks (CUDA max_memory_allocated /
# max_memory_reserved; on the CPU the peak RSS, reserved empty) and its kind.
EPOCH_COST_KEYS = ["train_time_s", "steps", "peak_mem_gb", "peak_mem_reserved_gb", "peak_mem_kind"]
# Per unit (integrated_experiment_results.csv; model_comparison.csv has the mean and std of the numbers), from its
# epoch rows, so a resumed unit sums its sessions: training wall time (hours: every epoch's training pass and
# validation), seconds per 1,000 optimizer steps (training passes only), the peak memory over all its epochs
# (GB), and the test's prediction time per case (s: sliding window, post-processing; not the metrics).
INFERENCE_TIME_KEY = "inference_s_per_case"
COST_KEYS = ["train_time_h", "train_s_per_1k_steps", "train_peak_mem_gb", "train_peak_mem_reserved_gb",
             INFERENCE_TIME_KEY]
COST_LABEL_KEYS = ["train_peak_mem_kind", "cost_hardware"]
# Columns read off the clock or the allocator: two runs that are otherwise identical differ in them.
MEASURED_COLUMNS = ("epoch_time_s", "train_time_s", "peak_mem_gb", "peak_mem_reserved_gb", "latency_ms",
                    "latency_ms_std", *COST_KEYS)


def unit_costs(curves: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The training columns of :data:`COST_KEYS` and ``train_peak_mem_kind`` from a unit's epoch rows (all its
    sessions: the rows its last checkpoint carried over plus this session's). NaN where no row measured it
    (rows of a run folder older than these columns); an interrupted epoch that was never finished is not counted."""
    rows = pd.DataFrame(list(curves))

    def column(name: str) -> pd.Series:
        return pd.to_numeric(rows[name], errors="coerce") if name in rows else pd.Series(dtype=float)

    def total(name: str) -> float:
        values = column(name)
        return float(values.sum()) if values.notna().any() else np.nan

    def peak(name: str) -> float:
        values = column(name)
        return float(values.max()) if values.notna().any() else np.nan

    steps, train_s = total("steps"), total("train_time_s")
    kinds = sorted({str(k) for k in rows.get("peak_mem_kind", pd.Series(dtype=object)).dropna()})
    return {
        "train_time_h": total("epoch_time_s") / 3600.0,
        "train_s_per_1k_steps": train_s / steps * 1000.0 if steps and steps > 0 else np.nan,
        "train_peak_mem_gb": peak("peak_mem_gb"), "train_peak_mem_reserved_gb": peak("peak_mem_reserved_gb"),
        "train_peak_mem_kind": "+".join(kinds),
    }


def test_metric_columns(scheme: LabelScheme = CLASSIC) -> list[str]:
    """The test columns of a unit: ``test_`` + every per-case metric of the scheme, then ``test_dice_mean``."""
    return [f"test_{k}" for k in scheme.metric_keys] + ["test_dice_mean"]


def result_columns(scheme: LabelScheme = CLASSIC) -> list[str]:
    """``integrated_experiment.py``'s required columns: the unit, Dice of every region and their mean, HD95 and
    NSD of every region, class Dice, efficiency, best epoch."""
    regions = [r.key for r in scheme.regions]
    return UNIT_COLUMNS + [
        *[f"test_dice_{r}" for r in regions], "test_dice_mean", *[f"test_hd95_{r}" for r in regions],
        *[f"test_nsd_{r}" for r in regions], *[f"test_dice_{c}" for c in scheme.class_dice],
        *EFFICIENCY_KEYS, "best_epoch", "best_val_dice", *COST_KEYS, *COST_LABEL_KEYS,
    ]


def val_dice_keys(scheme: LabelScheme = CLASSIC) -> list[str]:
    """Validation Dice of every region, and their selection mean (``val_dice_mean``: model selection)."""
    return [f"val_dice_{r.key}" for r in scheme.regions] + ["val_dice_mean"]


def epoch_columns(scheme: LabelScheme = CLASSIC) -> list[str]:
    return UNIT_COLUMNS + ["epoch", "train_loss", *val_dice_keys(scheme), "lr", "epoch_time_s", *EPOCH_COST_KEYS]


def per_case_columns(scheme: LabelScheme = CLASSIC) -> list[str]:
    return UNIT_COLUMNS + ["case_id", *scheme.metric_keys]


TEST_METRIC_COLUMNS = test_metric_columns()
RESULT_COLUMNS = result_columns()
VAL_DICE_KEYS = val_dice_keys()
EPOCH_COLUMNS = epoch_columns()
PER_CASE_COLUMNS = per_case_columns()
STAGE_PAM_COLUMNS = ["model", "stage", "pam_train_mb", "pam_inference_mb"]
FAILED_COLUMNS = UNIT_COLUMNS + ["epoch", "reason", "time"]
SKIPPED_COLUMNS = ["case_id", "path", "reason"]
MODALITY_COLUMNS = UNIT_COLUMNS + ["modality", "weight_mean", "weight_std"]


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """``model_comparison.csv`` from the per-unit results: one row per model (order of first
    appearance), ``{metric}_mean`` and ``{metric}_std`` (sample std, NaN with one run) of every
    numeric column except seed and fold, and ``n_runs``. Indexed by model."""
    metric_cols = [c for c in results.columns
                   if c not in UNIT_COLUMNS and pd.api.types.is_numeric_dtype(results[c])]
    numeric = results[metric_cols].astype(float).assign(model=results["model"].astype(str))
    grouped = numeric.groupby("model", sort=False)
    stats = grouped[metric_cols].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats["n_runs"] = grouped.size()
    for label in (c for c in COST_LABEL_KEYS if c in results.columns):  # what the cost columns were measured on
        stats[label] = results[label].groupby(results["model"].astype(str), sort=False).agg(
            lambda v: " + ".join(sorted({str(x) for x in v.dropna() if str(x)})))
    return stats.loc[list(dict.fromkeys(results["model"].astype(str)))]


def write_comparison_files(folder: str | Path, results: pd.DataFrame, per_case: pd.DataFrame | None
                           ) -> pd.DataFrame:
    """Write ``model_comparison.csv`` (:func:`comparison_table` + bootstrap CIs and Pareto flags),
    ``statistical_tests.csv`` and ``ranking.csv`` (metrics/statistics.py) into ``folder``; return
    the comparison table. Used at the end of a run and by ``python -m visualization`` on merged runs.

    The comparison table is always written; a statistic that fails is logged, never raised.
    """
    folder = Path(folder)
    table = comparison_table(results).rename_axis("model").reset_index()
    has_cases = per_case is not None and not per_case.empty
    try:
        table = st.add_comparison_statistics(table, per_case if has_cases else None)
    except Exception as exc:  # a statistic must never cost the comparison table
        log.warning("warning: confidence intervals / Pareto flags failed: %s: %s", type(exc).__name__, exc)
    write_csv(folder / COMPARISON_CSV, table)
    for name, compute, columns in ((STATISTICS_CSV, st.paired_tests, st.TEST_COLUMNS),
                                   (RANKING_CSV, st.brats_ranking, st.RANKING_COLUMNS)):
        try:
            out = compute(per_case) if has_cases else pd.DataFrame(columns=columns)
            write_csv(folder / name, out)
        except Exception as exc:
            log.warning("warning: %s failed: %s: %s", name, type(exc).__name__, exc)
    return table


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


@dataclass(frozen=True, order=True)
class UnitKey:
    """One unit of an experiment: (model, seed, fold); ``fold`` is 0 without 5-fold cross-validation.

    The one spelling of a unit's name (checkpoint files, prediction folders, Grad-CAM figures, confusion
    matrices): ``{model}_seed_{seed}``, ``{model}_seed_{seed}_fold_{fold}`` in 5-fold runs. :meth:`parse`
    reads a name back. Nothing else in the suite spells or parses one.
    """

    model: str
    seed: int
    fold: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "fold", int(self.fold))

    def name(self, use_5fold: bool) -> str:
        if not use_5fold and self.fold != 0:
            raise ValueError(f"{self.model} seed {self.seed} fold {self.fold}: a hold-out run has fold 0 only")
        return f"{self.model}_seed_{self.seed}" + (f"_fold_{self.fold}" if use_5fold else "")

    @classmethod
    def parse(cls, name: str) -> UnitKey | None:
        """The key of a unit name (:meth:`name`), ``None`` if ``name`` is not one."""
        match = _UNIT_NAME.match(name)
        return None if match is None else cls(match["model"], int(match["seed"]), int(match["fold"] or 0))

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> UnitKey:
        """The key of a table row or dict with ``model``, ``seed`` and ``fold``."""
        return cls(str(row["model"]), int(row["seed"]), int(row["fold"]))

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "seed": self.seed, "fold": self.fold}


_UNIT_NAME = re.compile(r"^(?P<model>.+)_seed_(?P<seed>-?\d+)(?:_fold_(?P<fold>\d+))?$")


@dataclass
class TestUnit:
    """One best checkpoint of a finished run and the test cases of its seed and fold."""

    key: UnitKey
    path: Path
    checkpoint: dict[str, Any]
    test_ids: list[str]


def choose_checkpoints(found: Mapping[UnitKey, Path], where: str, models: Sequence[str] | None = None,
                       seeds: Sequence[int] | None = None, folds: Sequence[int] | None = None) -> list[Path]:
    """Of the best checkpoints ``found`` (by unit; ``where`` names their run folder(s) in errors), those of
    ``models`` (default: the one model there; several models need ``models``), restricted to ``seeds`` and
    ``folds`` when given, in file-name order (whatever folders hold them: an ensemble sums in one order)."""
    available = sorted({key.model for key in found})
    if not available:
        raise FileNotFoundError(f"no *_best.pth checkpoints in {where}")
    if not models and len(available) > 1:
        raise ValueError(f"the run has best checkpoints of several models ({', '.join(available)}); "
                         "choose with --models")
    for model in models or ():
        if model not in available:
            raise ValueError(f"no best checkpoint of model {model!r} in {where} (it has: "
                             f"{', '.join(available)})")
    chosen = sorted((path for key, path in found.items() if key.model in (models or available)
                     and (not seeds or key.seed in seeds) and (not folds or key.fold in folds)),
                    key=lambda p: (p.name, str(p)))
    if not chosen:
        raise ValueError(f"no best checkpoint in {where} matches seeds {list(seeds or [])} "
                         f"folds {list(folds or [])}")
    return chosen


class RunFolder:
    """One run folder: its paths, what it holds, and every write to it (call the writers on rank 0)."""

    def __init__(self, path: str | Path, use_5fold: bool = False, scheme: LabelScheme = CLASSIC) -> None:
        self.path = Path(path)
        self.use_5fold = use_5fold
        self.scheme = scheme  # the data set's classes and regions: its metric columns

    @classmethod
    def create(cls, results_dir: str | Path, use_5fold: bool = False, scheme: LabelScheme = CLASSIC,
               suffix: str = "") -> RunFolder:
        """A new, empty ``integrated_experiment_results_{timestamp}{suffix}`` folder (``_1``, ``_2`` ... on a
        clash); a shard's ``suffix`` is ``_shard_I_of_N`` (experiment/sharding.py)."""
        base = Path(results_dir) / f"{RUN_PREFIX}{_dt.datetime.now():%Y%m%d_%H%M%S}{suffix}"
        path, i = base, 1
        while True:
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path, use_5fold, scheme)
            except FileExistsError:
                path, i = Path(f"{base}_{i}"), i + 1

    @staticmethod
    def is_run_folder(path: str | Path) -> bool:
        return (Path(path) / CONFIG_JSON).is_file() and (Path(path) / SPLITS_JSON).is_file()

    # ------------------------------------------------------------------ paths
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def unit(self, key: UnitKey) -> str:
        return key.name(self.use_5fold)

    def best_checkpoint(self, key: UnitKey) -> Path:
        return self.path / f"{self.unit(key)}_best.pth"

    def last_checkpoint(self, key: UnitKey) -> Path:
        return self.path / LAST_DIR / f"{self.unit(key)}_last.pth"

    def best_checkpoints(self) -> list[Path]:
        return sorted(self.path.glob("*_best.pth"))

    def slice_figure(self, seed: int, fold: int, case_id: str) -> Path:
        """``segmentation_slices_seed_{seed}[_fold_{fold}]_{case_id}.png``: every model's segmentation of the first
        test case of a seed (and fold, in 5-fold runs)."""
        return self.path / f"segmentation_slices_seed_{seed}{f'_fold_{fold}' if self.use_5fold else ''}_{case_id}.png"

    def gradcam_figure(self, key: UnitKey) -> Path:
        return self.path / f"gradcam_{self.unit(key)}.png"

    def tensorboard_dir(self, key: UnitKey) -> Path:
        """``tensorboard/{unit}/``: the unit's TensorBoard run (``--tracker tensorboard``)."""
        return self.path / TENSORBOARD_DIR / self.unit(key)

    def prediction_dir(self, key: UnitKey) -> Path:
        """``predictions/{unit}/`` of ``--export_predictions``."""
        return self.path / PREDICTIONS_DIR / self.unit(key)

    def reference_dir(self) -> Path:
        return self.path / PREDICTIONS_DIR / REFERENCES_DIR

    def exported_units(self) -> dict[UnitKey, Path]:
        """The unit folders under ``predictions/`` (``references/`` is not one), by key."""
        root = self.path / PREDICTIONS_DIR
        found = {UnitKey.parse(d.name): d for d in sorted(root.glob("*")) if d.is_dir()}
        return {k: d for k, d in found.items() if k is not None and self.unit(k) == d.name}

    # ------------------------------------------------------------------ reading a finished run
    @classmethod
    def open(cls, path: str | Path, **runtime: Any) -> tuple[RunFolder, ExperimentConfig]:
        """An existing run folder and its configuration (``load_run_config``; ``runtime`` overrides where the
        data are and how it runs). Raises ``FileNotFoundError`` when ``path`` is not a run folder."""
        if not cls.is_run_folder(path):
            raise FileNotFoundError(f"{path} is not a run folder ({CONFIG_JSON} and {SPLITS_JSON} are needed)")
        cfg = load_run_config(path, **runtime)
        return cls(path, cfg.use_5fold, cfg.dataset_def().scheme), cfg

    def checkpoint_units(self) -> dict[UnitKey, Path]:
        """Every best checkpoint of the run by unit key (names that are not a unit's are ignored)."""
        found = {}
        for path in self.best_checkpoints():
            name = path.name.removesuffix("_best.pth")
            key = UnitKey.parse(name)
            if key is not None and self.unit(key) == name:
                found[key] = path
        return found

    def test_units(self) -> Iterator[TestUnit]:
        """Every best checkpoint with the test cases of its seed and fold, loaded (weights-only) one at a time as
        iterated, in file-name order; a run without checkpoints raises at once."""
        splits, checkpoints = self.read_splits() or {}, self.best_checkpoints()
        if not checkpoints:
            raise FileNotFoundError(f"no *_best.pth checkpoints in {self.path}")
        return (self._test_unit(splits, path) for path in checkpoints)

    def _test_unit(self, splits: dict[str, Any], path: Path) -> TestUnit:
        ckpt = load_checkpoint(path, BEST_KEYS + ("seed", "fold"))
        key = UnitKey(ckpt["model_name"], ckpt["seed"], ckpt["fold"])
        split = next((f for f in splits.get(str(key.seed), {}).get("folds", []) if f["fold"] == key.fold), None)
        if split is None:
            raise CheckpointError(f"{path}: seed {key.seed} fold {key.fold} is not in {self.path / SPLITS_JSON}")
        return TestUnit(key, path, ckpt, list(split["test"]))

    def select_checkpoints(self, models: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                           folds: Sequence[int] | None = None) -> list[Path]:
        """The best checkpoints to ensemble: those of ``models`` (default: the run's one model; a run of several
        models needs ``models``), restricted to ``seeds`` and ``folds`` when given."""
        return choose_checkpoints(self.checkpoint_units(), str(self.path), models, seeds, folds)

    # ------------------------------------------------------------------ run-level files
    def write_config(self, record: Mapping[str, Any]) -> None:
        write_json(self.path / CONFIG_JSON, dict(record))

    def read_config(self) -> dict[str, Any]:
        return read_json(self.path / CONFIG_JSON)

    def write_splits(self, splits: Mapping[str, Any]) -> None:
        write_json(self.path / SPLITS_JSON, dict(splits))

    def read_splits(self) -> dict[str, Any] | None:
        path = self.path / SPLITS_JSON
        return read_json(path) if path.exists() else None

    def write_skipped(self, errors: list[dict[str, Any]]) -> None:
        """``skipped_cases.csv``; rewritten (also emptied) on resume once it exists."""
        if errors or (self.path / SKIPPED_CSV).exists():
            write_csv(self.path / SKIPPED_CSV, pd.DataFrame(errors, columns=SKIPPED_COLUMNS))

    def finished_units(self) -> set[UnitKey]:
        done = read_csv(self.path / RESULTS_CSV, RESULT_COLUMNS)
        return {UnitKey.of(row) for row in done.to_dict("records")}

    def failed_units(self) -> set[UnitKey]:
        """The units ``failed_runs.csv`` records (finished or not since)."""
        failed = read_csv(self.path / FAILED_CSV, FAILED_COLUMNS)
        return {UnitKey.of(row) for row in failed.to_dict("records")}

    # ------------------------------------------------------------------ a unit's rows
    def append_epoch(self, key: UnitKey, row: Mapping[str, Any]) -> None:
        append_rows(self.path / EPOCHS_CSV, [{**key.as_dict(), **row}], epoch_columns(self.scheme))

    def reset_epoch_rows(self, key: UnitKey, checkpoint_rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace a unit's epoch rows by those its last checkpoint recorded (none lost, none duplicated)."""
        replace_rows(self.path / EPOCHS_CSV, key.as_dict(), [{**key.as_dict(), **r} for r in checkpoint_rows],
                     epoch_columns(self.scheme))

    def record_failure(self, key: UnitKey, epoch: int, reason: str) -> None:
        append_rows(self.path / FAILED_CSV, [{**key.as_dict(), "epoch": epoch, "reason": reason, "time": _now()}],
                    FAILED_COLUMNS)

    def write_stage_pam(self, model: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            replace_rows(self.path / STAGE_PAM_CSV, {"model": model}, rows, STAGE_PAM_COLUMNS)
        elif not (self.path / STAGE_PAM_CSV).exists():
            write_csv(self.path / STAGE_PAM_CSV, pd.DataFrame(columns=STAGE_PAM_COLUMNS))

    def write_unit(self, key: UnitKey, row: Mapping[str, Any], per_case: list[dict[str, Any]],
                   confusion: np.ndarray, modality_weights: Mapping[str, list[float]]) -> None:
        """A finished unit: per-case rows, modality weights, confusion matrix, then its results row.

        Rows of a unit re-run on ``--resume`` (it crashed after writing some) replace the old ones.
        """
        k = key.as_dict()
        replace_rows(self.path / PER_CASE_CSV, k, [{**k, **r} for r in per_case], per_case_columns(self.scheme))
        if modality_weights:
            replace_rows(self.path / MODALITY_CSV, k, [
                {**k, "modality": m, "weight_mean": float(np.mean(w)), "weight_std": float(np.std(w))}
                for m, w in modality_weights.items()], MODALITY_COLUMNS)
        cm_path = self.path / CONFUSION_JSON
        cms = read_json(cm_path) if cm_path.exists() else {}
        cms[self.unit(key)] = np.asarray(confusion).tolist()
        write_json(cm_path, cms)
        append_rows(self.path / RESULTS_CSV, [{**k, **row}], result_columns(self.scheme))  # last: marks it finished

    def record_postprocess(self, key: UnitKey, rule: Mapping[str, Any]) -> None:
        """``--postprocess``: the unit's rule, into its best checkpoint (``postprocess``: predict.py and the export
        apply it) and into config.json (``postprocess``: unit name -> rule)."""
        path = self.best_checkpoint(key)
        checkpoint = load_checkpoint(path)
        checkpoint["postprocess"] = dict(rule)
        save_checkpoint(path, checkpoint)
        record = self.read_config()
        record.setdefault("postprocess", {})[self.unit(key)] = dict(rule)
        self.write_config(record)

    def remove_last(self, key: UnitKey) -> None:
        self.last_checkpoint(key).unlink(missing_ok=True)

    # ------------------------------------------------------------------ run end and re-evaluation
    def finish(self) -> pd.DataFrame:
        """Drop an empty resume-state folder; write ``model_comparison.csv``, ``statistical_tests.csv``
        and ``ranking.csv`` (:func:`write_comparison_files`); return the comparison table."""
        last = self.path / LAST_DIR
        if last.is_dir() and not any(last.iterdir()):
            last.rmdir()
        results = read_csv(self.path / RESULTS_CSV, result_columns(self.scheme))
        if results.empty:
            return results
        per_case = read_csv(self.path / PER_CASE_CSV, per_case_columns(self.scheme))
        return write_comparison_files(self.path, results, per_case)

    def write_evaluation(self, rows: list[dict[str, Any]], per_case: list[dict[str, Any]]) -> pd.DataFrame:
        """``evaluation_results.csv`` (unit and test columns first) and ``evaluation_per_case_results.csv``."""
        table = pd.DataFrame(rows)
        first = UNIT_COLUMNS + test_metric_columns(self.scheme)
        table = table[first + [c for c in table.columns if c not in first]]
        write_csv(self.path / EVALUATION_CSV, table)
        write_csv(self.path / EVALUATION_PER_CASE_CSV, pd.DataFrame(per_case, columns=per_case_columns(self.scheme)))
        return table
