"""``report.html``: one self-contained page that says what a run (or a merged folder) ran and what came out.

    write_report(folder) -> folder/report.html      (end of a run, ``python -m visualization RUN --report``, merges)

Built only from the folder's files (``config.json`` or, in a merged folder, the configurations recorded in
``merged_runs.json``; ``splits.json``; the CSVs; the PNG charts already drawn), with the Jinja2 template
``visualization/templates/report.html.j2``: what was run (data set, cases, splits and strata, models, seeds,
folds, the training budget in steps, recipe, hardware, library versions, git commit), the results with their
bootstrap CIs, the paired tests, the ranking, the Pareto fronts, per-case distributions, learning curves, the
efficiency table, failed units, skipped cases, and a link to every other file of the folder.

Offline and printable: plotly's JavaScript is inlined once and the PNGs are embedded as base64, so the page
makes no request beyond its own file. Every number of a table is a ``<span class="num">`` carrying the CSV it
comes from (``data-src`` on its row, with the row's key columns in ``data-key``), its column (``data-col``), the
exact value (``data-value``) and the format of the text shown (``data-fmt``, ``data-scale``), so a test (or a
reader) can check each shown number against its CSV.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from experiment.config import CONFIG_JSON
from experiment.run_folder import (
    COMPARISON_CSV,
    EPOCHS_CSV,
    FAILED_COLUMNS,
    FAILED_CSV,
    MLFLOW_DB,
    PER_CASE_CSV,
    RANKING_CSV,
    REPORT_HTML,
    RESULTS_CSV,
    SKIPPED_COLUMNS,
    SKIPPED_CSV,
    SPLITS_JSON,
    STATISTICS_CSV,
    TENSORBOARD_DIR,
    comparison_table,
)
from metrics.statistics import PARETO_COSTS
from utils.io import atomic_write_text, read_csv, read_json
from visualization.columns import chart_regions
from visualization.figures import model_palette

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"
MERGED_JSON = "merged_runs.json"  # written by visualization/merge.py (which imports this module) ...
SOURCE_COLUMN = "source_run"  # ... with this column in the tables it concatenates
MISSING = "–"
# figures embedded as pictures: those the interactive plots of the page do not already show
EMBEDDED_PNGS = ("model_comparison_chart.png", "stage_wise_pam.png", "modality_contributions.png")
EMBEDDED_PATTERNS = ("segmentation_slices_*.png", "gradcam_*.png")
COST_LABELS = {"params_mean": ("Parameters", 1e6, "M"), "flops_mean": ("FLOPs", 1e9, "G"),
               "latency_ms_mean": ("Latency", 1.0, "ms"), "pam_inference_mb_mean": ("Inference PAM", 1.0, "MB")}


# ----------------------------------------------------------------------------- table cells
@dataclass(frozen=True)
class Num:
    """One number shown in a table, with where it comes from (see the module docstring)."""

    col: str
    value: Any
    fmt: str = ".3f"
    scale: float = 1.0

    @property
    def missing(self) -> bool:
        try:
            return not math.isfinite(float(self.value))
        except (TypeError, ValueError):
            return True

    @property
    def text(self) -> str:
        return MISSING if self.missing else format(float(self.value) / self.scale, self.fmt)

    @property
    def data_value(self) -> str:
        return "nan" if self.missing else repr(float(self.value))


@dataclass(frozen=True)
class Text:
    """A text value of a CSV cell shown in a table (a model name, a reason)."""

    col: str
    value: Any

    @property
    def text(self) -> str:
        return _plain(self.value)


@dataclass(frozen=True)
class Flag(Text):
    """A True/False/empty CSV cell (a Pareto flag) shown as yes / no / –."""

    @property
    def text(self) -> str:
        return {"True": "yes", "False": "no"}.get(_plain(self.value), MISSING)

    @property
    def data_value(self) -> str:
        return _plain(self.value)


Part = str | Num | Text


@dataclass
class Row:
    key: dict[str, Any]
    cells: list[list[Part]]


@dataclass
class Table:
    id: str
    title: str
    header: list[str]
    src: str = ""  # the CSV of the rows
    rows: list[Row] = field(default_factory=list)
    note: str = ""
    empty: str = "none"


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _key_json(key: Mapping[str, Any]) -> str:
    return json.dumps({k: _plain(v) for k, v in key.items()}, sort_keys=True)


# ----------------------------------------------------------------------------- reading the folder
@dataclass
class Folder:
    """What a report is made of, read once."""

    path: Path
    configs: list[tuple[str, dict[str, Any]]]  # (source label, config.json record); several in a merged folder
    merged: bool
    splits: dict[str, Any]
    comparison: pd.DataFrame
    results: pd.DataFrame
    per_case: pd.DataFrame
    epochs: pd.DataFrame
    tests: pd.DataFrame
    ranking: pd.DataFrame
    failed: pd.DataFrame
    skipped: pd.DataFrame

    @property
    def models(self) -> list[str]:
        for table in (self.comparison, self.results):
            if not table.empty:
                return [str(m) for m in pd.unique(table["model"])]
        return []


def read_folder(path: str | Path) -> Folder:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; pass a run folder or a merged folder")
    merged = (path / MERGED_JSON).is_file()
    configs: list[tuple[str, dict[str, Any]]] = []
    if merged:
        record = read_json(path / MERGED_JSON)
        configs = [(run, (record.get("configs") or {}).get(run) or {}) for run in record.get("runs", [])]
    elif (path / CONFIG_JSON).is_file():
        configs = [(path.name, read_json(path / CONFIG_JSON))]
    splits = read_json(path / SPLITS_JSON) if (path / SPLITS_JSON).is_file() else {}
    results = read_csv(path / RESULTS_CSV)
    comparison = read_csv(path / COMPARISON_CSV)
    if comparison.empty and not results.empty:  # an unfinished run: means and stds without the statistics
        comparison = comparison_table(results).rename_axis("model").reset_index()
    return Folder(path, configs, merged, splits if isinstance(splits, dict) else {}, comparison, results,
                  read_csv(path / PER_CASE_CSV), read_csv(path / EPOCHS_CSV), read_csv(path / STATISTICS_CSV),
                  read_csv(path / RANKING_CSV), read_csv(path / FAILED_CSV, FAILED_COLUMNS),
                  read_csv(path / SKIPPED_CSV, SKIPPED_COLUMNS))


def _get(row: Mapping[str, Any], column: str) -> Any:
    return row.get(column, np.nan)


def _num(row: Mapping[str, Any], column: str, fmt: str = ".3f", scale: float = 1.0) -> Part:
    """The number of ``column`` in ``row``; a plain "–" where the CSV has no such column (an older run)."""
    return Num(column, row[column], fmt, scale) if column in row else MISSING


# ----------------------------------------------------------------------------- what was run
def _fmt_list(values: Iterable[Any]) -> str:
    return ", ".join(_plain(v) for v in values)


def _config_rows(record: Mapping[str, Any], folder: Folder) -> list[tuple[str, str]]:
    """(label, value) pairs of one run's configuration; empty when nothing was recorded."""
    cfg = record.get("config") or {}
    if not cfg:
        return []
    versions = record.get("versions") or {}
    five = bool(cfg.get("use_5fold"))
    seeds = cfg.get("seeds") or []
    budget = cfg.get("iters_per_epoch")
    samples = (f"--iters_per_epoch {budget}" if budget else
               f"{cfg.get('patches_per_case') or ('1' if cfg.get('dim') == '3d' else '8')} patches per training case")
    data = _plain(cfg.get("dataset_version"))
    if (cfg.get("dataset") or {}).get("title") and cfg.get("dataset_version") != "synthetic":
        data += f" ({cfg['dataset']['title']})"
    if cfg.get("dataset_version") == "synthetic" and cfg.get("synthetic_task", "brats2021") != "brats2021":
        data += f" imitating {cfg['synthetic_task']}"
    if cfg.get("dataset_version") == "synthetic":
        data += (f" ({_plain(cfg.get('synthetic_cases'))} cases, {_plain(cfg.get('synthetic_difficulty'))}, "
                 f"shape {_fmt_list(cfg.get('synthetic_shape') or [96, 96, 64])})")
    rows = [
        ("data set", f"{data} at {_plain(cfg.get('data_path'))}"),
        ("cases", f"{_plain(record.get('n_cases'))} used" + (f" (--max_samples {cfg['max_samples']})"
                                                            if cfg.get("max_samples") else "")
         + (f"; {len(folder.skipped)} skipped" if not folder.skipped.empty else "")),
        ("splits", "5-fold cross-validation per seed (each case tested once per seed)" if five else
         "80/10/10 train/validation/test per seed, by patient, stratified"),
        ("models", _fmt_list(cfg.get("models") or []) or "every model of --dim"),
        ("dimension, patch", f"{_plain(cfg.get('dim'))}, patch {_fmt_list(cfg.get('patch_size') or [])}"),
        ("seeds", _fmt_list(seeds)),
        ("folds", "0-4" if five else "0 (hold-out)"),
        ("training budget", f"{_plain(cfg.get('epochs'))} epochs x {_plain(record.get('steps_per_epoch'))} "
                            f"optimizer steps = {_plain(record.get('total_steps'))} steps per unit, global batch "
                            f"{_plain(record.get('global_batch_size'))} ({samples}), "
                            f"{_plain(record.get('samples_seen'))} samples seen"
                            + (f"; costs measured on {record['hardware']}" if record.get("hardware") else "")),
        ("recipe", f"trainer {_plain(cfg.get('trainer'))}, loss {_plain(cfg.get('loss'))}"
                   + (" (region-based: Dice + BCE)" if cfg.get("region_based") else "")
                   + f", {_plain(cfg.get('optimizer') or 'adamw')} lr {_plain(cfg.get('lr'))} (weight decay "
                   f"{_plain(cfg.get('weight_decay'))}, polynomial decay), augmentation "
                   f"{_plain(cfg.get('augmentation') or 'flips')}"
                   + (", post-processing chosen on validation" if cfg.get("postprocess") else "") + ", "
                   f"grad clip {_plain(cfg.get('grad_clip'))}, validation every {_plain(cfg.get('val_every'))} "
                   f"epoch(s), sliding-window overlap {_plain(cfg.get('overlap'))}"
                   + (", deterministic" if cfg.get("deterministic") else "")
                   + (", pretrained weights" if cfg.get("use_pretrained") else "")),
        ("hardware", f"{_plain(record.get('device'))}, {_plain(record.get('world_size'))} process(es), "
                     f"AMP {_plain(record.get('amp'))}"
                     + (", torch.compile" if cfg.get("compile") else "")
                     + (", channels-last" if cfg.get("channels_last") else "")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("git commit", _plain(record.get("git_commit"))),
        ("command", " ".join(map(str, record.get("command") or []))),
        ("started", _plain(record.get("created"))),
    ]
    return rows


def _split_table(folder: Folder) -> Table:
    """Cases per seed and fold in train/validation/test, with the strata of each split."""
    table = Table("splits", "Splits and strata", ["seed", "fold", "train", "validation", "test"], src="")
    for seed, entry in sorted(folder.splits.items(), key=lambda kv: str(kv[0])):
        if not isinstance(entry, dict):
            continue
        strata = {cid: (info or {}).get("stratum", "") for cid, info in (entry.get("cases") or {}).items()}
        for fold in entry.get("folds", []):
            cells: list[list[Part]] = [[str(seed)], [_plain(fold.get("fold"))]]
            for part in ("train", "val", "test"):
                ids = fold.get(part, [])
                counts = pd.Series([strata.get(c, "") for c in ids], dtype=object).value_counts()
                detail = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()) if s)
                cells.append([f"{len(ids)}" + (f" ({detail})" if detail else "")])
            table.rows.append(Row({}, cells))
    table.note = ("cases per split, by stratum: the grade where the layout has one (HGG/LGG) and whether the case "
                  "has enhancing tumour (ET / no-ET); cases of one patient never cross splits")
    return table


# ----------------------------------------------------------------------------- result tables
def _ci_cell(row: Mapping[str, Any], column: str) -> list[Part]:
    """mean [CI low, CI high] where the comparison has the bootstrap CI, else mean ± std (several runs)."""
    parts: list[Part] = [_num(row, f"{column}_mean")]
    low, high = _get(row, f"{column}_ci_low"), _get(row, f"{column}_ci_high")
    if Num("", low).missing and Num("", high).missing:
        return [*parts, *_std(row, column, ".3f")]
    return [*parts, " [", Num(f"{column}_ci_low", low), ", ", Num(f"{column}_ci_high", high), "]"]


def _std(row: Mapping[str, Any], column: str, fmt: str, scale: float = 1.0) -> list[Part]:
    std = Num(f"{column}_std", _get(row, f"{column}_std"), fmt, scale)
    return [] if std.missing else [" ± ", std]


def _mean_std(row: Mapping[str, Any], column: str, fmt: str, scale: float = 1.0) -> list[Part]:
    mean = _num(row, f"{column}_mean", fmt, scale)
    return [mean] if not isinstance(mean, Num) or mean.missing else [mean, *_std(row, column, fmt, scale)]


def _results_table(folder: Folder) -> Table:
    has_ci = "test_dice_mean_ci_low" in folder.comparison.columns
    regions = chart_regions(folder.comparison)  # the data set's regions (the table's order; WT, TC, ET)
    names = " / ".join(r.upper() for r in regions)
    table = Table("results", "Test results per model", [
        "model", "runs", "mean Dice (WT/TC/ET)", *[f"Dice {r.upper()}" for r in regions],
        f"HD95 {names} (mm)", f"NSD {names}", "best validation Dice"], src=COMPARISON_CSV)
    table.note = ("mean over seeds/folds; [95% percentile-bootstrap CI over test cases, 10,000 resamples]" if has_ci
                  else "mean ± std over seeds/folds (no per-case table: no confidence intervals)")
    for row in folder.comparison.to_dict("records"):
        def slash(metric: str, fmt: str, row: Mapping[str, Any] = row) -> list[Part]:
            parts: list[Part] = []
            for i, region in enumerate(regions):
                parts += ([" / "] if i else []) + [_num(row, f"test_{metric}_{region}_mean", fmt)]
            return parts

        table.rows.append(Row({"model": row["model"]}, [
            [Text("model", row["model"])], [_num(row, "n_runs", ".0f")],
            _ci_cell(row, "test_dice_mean"), *[_ci_cell(row, f"test_dice_{r}") for r in regions],
            slash("hd95", ".1f"), slash("nsd", ".3f"), _mean_std(row, "best_val_dice", ".3f")]))
    return table


def _label(row: Mapping[str, Any], column: str, before: str = "") -> list[Part]:
    """A text column of the comparison (what the costs were measured on); nothing where the CSV has none."""
    return [before, Text(column, row[column])] if _plain(row.get(column)) else []


def _efficiency_table(folder: Folder) -> Table:
    table = Table("efficiency", "Efficiency per model", [
        "model", "parameters (M)", "GFLOPs (patch, batch 1)", "PAM train (MB)", "PAM inference (MB)",
        "latency (ms)", "optimizer steps per unit", "training (h)", "training (s per 1,000 steps)",
        "peak training memory (GB; reserved)", "inference (s per test case)", "costs measured on",
        "Pareto front (params / FLOPs / latency / PAM)", "notes"],
        src=COMPARISON_CSV)
    notes: dict[str, str] = {}
    if "efficiency_notes" in folder.results.columns:
        for model, text in zip(folder.results["model"].astype(str), folder.results["efficiency_notes"]):
            if _plain(text) and model not in notes:
                notes[model] = _plain(text)
    for row in folder.comparison.to_dict("records"):
        flags: list[Part] = []
        for i, flag in enumerate(PARETO_COSTS):
            flags += ([" / "] if i else []) + ([Flag(flag, row[flag])] if flag in row else [MISSING])
        table.rows.append(Row({"model": row["model"]}, [
            [Text("model", row["model"])], _mean_std(row, "params", ".3f", 1e6), _mean_std(row, "flops", ".2f", 1e9),
            _mean_std(row, "pam_train_mb", ".0f"), _mean_std(row, "pam_inference_mb", ".0f"),
            _mean_std(row, "latency_ms", ".1f"), [_num(row, "total_steps_mean", ".0f")],
            _mean_std(row, "train_time_h", ".3f"), _mean_std(row, "train_s_per_1k_steps", ".1f"),
            [*_mean_std(row, "train_peak_mem_gb", ".2f"), "; ", *_mean_std(row, "train_peak_mem_reserved_gb", ".2f"),
             *_label(row, "train_peak_mem_kind", " ")],
            _mean_std(row, "inference_s_per_case", ".2f"), _label(row, "cost_hardware"),
            flags, [notes.get(str(row["model"]), "")]]))
    table.note = ("FLOPs: 2 x thop's multiply-accumulates for one patch; PAM: peak CUDA memory above the resident "
                  "(GPU only); latency: one inference forward at batch 1; training time: the unit's epochs "
                  "(training passes and validation, every session of a resumed unit); peak training memory: CUDA "
                  "max_memory_allocated; max_memory_reserved (cuda), or on the CPU the training process's peak "
                  "resident set (cpu_rss; no reserved figure), max over ranks; inference: the test's prediction of "
                  "one whole case; mean ± std over seeds/folds")
    return table


def _tests_table(folder: Folder) -> Table:
    table = Table("statistics", "Paired tests against the best model", [
        "metric", "model", "reference", "cases", "median difference", "statistic", "p", "p (Holm)", "test"],
        src=STATISTICS_CSV, empty="no paired test (no per-case results)")
    for row in folder.tests.to_dict("records"):
        table.rows.append(Row({"metric": row["metric"], "model": row["model"]}, [
            [Text("metric", row["metric"])], [Text("model", row["model"])],
            [Text("reference_model", row["reference_model"])], [Num("n_cases", row["n_cases"], ".0f")],
            [Num("median_diff", row["median_diff"], ".4f")], [Num("statistic", row["statistic"], ".1f")],
            [Num("p_value", row["p_value"], ".3g")], [Num("p_holm", row["p_holm"], ".3g")],
            [Text("test", row["test"])]]))
    table.note = ("two-sided paired Wilcoxon signed-rank test on the cases (a case's value: its mean over seeds), "
                  "Holm-corrected across the models of each metric")
    return table


def _ranking_table(folder: Folder) -> Table:
    table = Table("ranking", "BraTS-style ranking", [
        "rank", "model", "mean case rank", "cases", "metrics", "rank stability", "rank 95% CI"], src=RANKING_CSV,
        empty="no ranking (no per-case results)")
    for row in folder.ranking.to_dict("records"):
        table.rows.append(Row({"model": row["model"]}, [
            [Num("rank", row["rank"], ".1f")], [Text("model", row["model"])],
            [Num("mean_case_rank", row["mean_case_rank"], ".3f")], [Num("n_cases", row["n_cases"], ".0f")],
            [Num("n_metrics", row["n_metrics"], ".0f")], [Num("rank_stability", row["rank_stability"], ".2f")],
            [Num("rank_ci_low", row["rank_ci_low"], ".1f"), " – ", Num("rank_ci_high", row["rank_ci_high"], ".1f")]]))
    table.note = ("per case and metric (Dice and HD95 of WT/TC/ET) the models are ranked; a model's score is its "
                  "mean rank; stability: share of 1,000 bootstrap resamples of the cases keeping its rank")
    return table


def _rows_table(table_id: str, title: str, df: pd.DataFrame, columns: Sequence[str], key: Sequence[str],
                src: str, empty: str) -> Table:
    """A CSV's rows as they are (failed units, skipped cases); a merged folder's rows name their source run."""
    if SOURCE_COLUMN in df.columns:
        columns, key = [*columns, SOURCE_COLUMN], [*key, SOURCE_COLUMN]
    table = Table(table_id, title, list(columns), src=src, empty=empty)
    for row in df.to_dict("records"):
        cells: list[list[Part]] = []
        for c in columns:
            value = row.get(c)
            numeric = isinstance(value, int | float) and not isinstance(value, bool) and c not in ("seed", "fold")
            cells.append([Num(c, value, ".0f") if numeric else Text(c, value)])
        table.rows.append(Row({k: row.get(k) for k in key}, cells))
    return table


# ----------------------------------------------------------------------------- interactive figures
def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


def _colors(models: Sequence[str]) -> dict[str, str]:
    return {m: _hex(c) for m, c in model_palette(list(models)).items()}


def _figure_html(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="plotly_white", font={"size": 12}, margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.15, "xanchor": "left", "x": 0})
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def pareto_figure(comparison: pd.DataFrame) -> go.Figure | None:
    """Mean test Dice against each measured cost, the Pareto front of each drawn as a staircase."""
    costs = [c for c in COST_LABELS if c in comparison.columns
             and np.isfinite(pd.to_numeric(comparison[c], errors="coerce")).any()]
    if comparison.empty or not costs or "test_dice_mean_mean" not in comparison.columns:
        return None
    models = [str(m) for m in comparison["model"]]
    colors = _colors(models)
    fig = make_subplots(rows=1, cols=len(costs), shared_yaxes=True,
                        subplot_titles=[f"{COST_LABELS[c][0]} ({COST_LABELS[c][2]}, log)" for c in costs])
    dice = pd.to_numeric(comparison["test_dice_mean_mean"], errors="coerce").to_numpy(float)
    low = pd.to_numeric(comparison.get("test_dice_mean_ci_low", pd.Series(np.nan, index=comparison.index)),
                        errors="coerce").to_numpy(float)
    high = pd.to_numeric(comparison.get("test_dice_mean_ci_high", pd.Series(np.nan, index=comparison.index)),
                         errors="coerce").to_numpy(float)
    flag_of = {v: k for k, v in PARETO_COSTS.items()}
    for col, cost in enumerate(costs, start=1):
        _, scale, unit = COST_LABELS[cost]
        x = pd.to_numeric(comparison[cost], errors="coerce").to_numpy(float) / scale
        flags = comparison.get(flag_of.get(cost, ""), pd.Series([None] * len(comparison)))
        front = np.array([str(f) == "True" for f in flags])
        for i, model in enumerate(models):
            if not (np.isfinite(x[i]) and x[i] > 0 and np.isfinite(dice[i])):
                continue
            error = None
            if np.isfinite(low[i]) and np.isfinite(high[i]):
                error = {"type": "data", "symmetric": False, "array": [max(high[i] - dice[i], 0.0)],
                         "arrayminus": [max(dice[i] - low[i], 0.0)], "color": colors[model], "thickness": 1}
            fig.add_trace(go.Scatter(
                x=[x[i]], y=[dice[i]], mode="markers", name=model, legendgroup=model, showlegend=col == 1,
                marker={"size": 13 if front[i] else 10, "color": colors[model] if front[i] else "white",
                        "line": {"color": colors[model], "width": 2}, "symbol": "circle"},
                error_y=error, hovertemplate=f"{html.escape(model)}<br>%{{x:.3g}} {unit}<br>mean Dice %{{y:.3f}}"
                + (" (Pareto front)" if front[i] else "") + "<extra></extra>"), row=1, col=col)
        on = [i for i in np.flatnonzero(front) if np.isfinite(x[i]) and x[i] > 0]
        if len(on) > 1:  # the staircase joining the front's models
            order = sorted(on, key=lambda i: (x[i], -dice[i]))
            fig.add_trace(go.Scatter(x=[x[i] for i in order], y=[dice[i] for i in order], mode="lines",
                                     line={"shape": "hv", "color": "#555", "dash": "dot"}, hoverinfo="skip",
                                     name="Pareto front", legendgroup="front", showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(type="log", row=1, col=col)
    fig.update_yaxes(title_text="test mean Dice (WT/TC/ET)", row=1, col=1)
    fig.update_layout(height=460, margin={"t": 70})
    return fig


def per_case_figure(per_case: pd.DataFrame, models: Sequence[str]) -> go.Figure | None:
    """Per-case test Dice (and NSD where present) per model and region: boxes with every case as a point."""
    regions = chart_regions(per_case)  # the data set's regions (the table's order; WT, TC, ET)
    panels = [(f"dice_{r}", "Dice") for r in regions]
    if per_case.empty or not all(c in per_case.columns for c, _ in panels):
        return None
    nsd = [(f"nsd_{r}", "NSD") for r in regions]
    rows = [("Dice", panels)] + ([("NSD", nsd)] if all(c in per_case.columns for c, _ in nsd) else [])
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[f"per-case test {name} (seeds/folds pooled)" for name, _ in rows])
    spare = iter(("#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3"))
    region_colors = {"wt": "#66c2a5", "tc": "#fc8d62", "et": "#8da0cb"}
    region_colors.update({r: next(spare, "#999999") for r in regions if r not in region_colors})
    data = per_case.assign(model=per_case["model"].astype(str))
    order = [m for m in models if m in set(data["model"])] or sorted(set(data["model"]))
    for r, (name, columns) in enumerate(rows, start=1):
        for column, _ in columns:
            region = column.split("_")[-1]
            values = pd.to_numeric(data[column], errors="coerce")
            keep = values.notna()
            many = int(keep.sum()) > 3000
            fig.add_trace(go.Box(
                x=data.loc[keep, "model"], y=values[keep], name=region.upper(), legendgroup=region,
                showlegend=r == 1, marker={"color": region_colors[region], "size": 4},
                boxpoints="outliers" if many else "all", jitter=0.3, pointpos=0,
                text=None if many else data.loc[keep, "case_id"].astype(str),
                hovertemplate="%{x}<br>%{text}<br>" + name + " %{y:.3f}<extra></extra>" if not many else None),
                row=r, col=1)
        fig.update_yaxes(title_text=name, range=[-0.02, 1.02], row=r, col=1)
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    fig.update_layout(boxmode="group", height=380 * len(rows) + 60)
    return fig


def learning_figure(epochs: pd.DataFrame, models: Sequence[str]) -> go.Figure | None:
    """Training loss and validation mean Dice per epoch, mean over seeds/folds, one line per model."""
    if epochs.empty or not {"model", "epoch", "train_loss", "val_dice_mean"} <= set(epochs.columns):
        return None
    data = epochs.assign(model=epochs["model"].astype(str))
    order = [m for m in models if m in set(data["model"])] or sorted(set(data["model"]))
    colors = _colors(order)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["training loss", "validation mean Dice"])
    for col, column in enumerate(("train_loss", "val_dice_mean"), start=1):
        for model in order:
            curve = (data[data["model"] == model].assign(v=lambda d, c=column: pd.to_numeric(d[c], errors="coerce"))
                     .dropna(subset=["v"]).groupby("epoch")["v"].mean())
            if curve.empty:
                continue
            fig.add_trace(go.Scatter(x=(curve.index + 1).tolist(), y=curve.tolist(), mode="lines+markers",
                                     name=model, legendgroup=model, showlegend=col == 1,
                                     line={"color": colors[model]}, marker={"size": 5}), row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    if data["epoch"].nunique() <= 20:
        fig.update_xaxes(dtick=1)
    fig.update_layout(height=440)
    return fig


# ----------------------------------------------------------------------------- files
def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


FILE_NOTES = {TENSORBOARD_DIR: "TensorBoard runs, one per unit: tensorboard --logdir " + TENSORBOARD_DIR,
              MLFLOW_DB: "MLflow store: mlflow ui --backend-store-uri sqlite:///" + MLFLOW_DB,
              "interactive_3d_analysis.html": "interactive 3D view: parameters x FLOPs (or latency) x mean Dice"}


def _files(folder: Path) -> list[dict[str, str]]:
    out = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name == REPORT_HTML or p.name.startswith("."):
            continue
        name = p.name + ("/" if p.is_dir() else "")
        out.append({"name": name, "href": quote(p.name) + ("/" if p.is_dir() else ""), "size": _human(_size(p)),
                    "note": FILE_NOTES.get(p.name, "")})
    return out


def _images(folder: Path) -> list[dict[str, str]]:
    paths = [folder / n for n in EMBEDDED_PNGS if (folder / n).is_file()]
    for pattern in EMBEDDED_PATTERNS:
        paths += sorted(folder.glob(pattern))
    return [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode("ascii")} for p in paths]


# ----------------------------------------------------------------------------- the page
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.tests["num"] = lambda part: isinstance(part, Num)
    env.tests["flag"] = lambda part: isinstance(part, Flag)
    env.tests["text"] = lambda part: isinstance(part, Text)
    env.filters["key_json"] = _key_json
    return env


def render_report(path: str | Path) -> str:
    """The HTML text of the report of the run or merged folder at ``path``."""
    from markupsafe import Markup

    folder = read_folder(path)
    models = folder.models
    figures: list[dict[str, Any]] = []
    makers: list[tuple[str, str, str, Callable[[], go.Figure | None]]] = [
        ("pareto", "Pareto fronts", "mean test Dice against each measured cost; filled markers are on the front "
         "(no other model has a higher mean Dice at a lower or equal cost), joined by the dotted staircase; bars: "
         "95% bootstrap CI over cases", lambda: pareto_figure(folder.comparison)),
        ("per-case", "Per-case distributions", "test Dice (and NSD) of every test case, seeds and folds pooled: "
         "box (quartiles, whiskers at 1.5 IQR) and one point per case", lambda: per_case_figure(folder.per_case,
                                                                                                models)),
        ("learning", "Learning curves", "training loss and validation mean Dice per epoch, mean over seeds/folds "
         "(all_epochs_results.csv)", lambda: learning_figure(folder.epochs, models)),
    ]
    for fig_id, title, note, make in makers:
        fig = make()
        figures.append({"id": fig_id, "title": title, "note": note,
                        "html": Markup(_figure_html(fig, f"plot-{fig_id}")) if fig is not None else None})
    runs = [{"label": label, "rows": _config_rows(record, folder)} for label, record in folder.configs]
    tables = {
        "results": _results_table(folder), "efficiency": _efficiency_table(folder),
        "statistics": _tests_table(folder), "ranking": _ranking_table(folder), "splits": _split_table(folder),
        "failed": _rows_table("failed", "Failed units", folder.failed,
                              [c for c in FAILED_COLUMNS if c in folder.failed.columns] or FAILED_COLUMNS,
                              ["model", "seed", "fold"], FAILED_CSV, "none: every unit finished"),
        "skipped": _rows_table("skipped", "Skipped cases", folder.skipped,
                               [c for c in SKIPPED_COLUMNS if c in folder.skipped.columns] or SKIPPED_COLUMNS,
                               ["case_id"], SKIPPED_CSV, "none"),
    }
    first = folder.configs[0][1] if folder.configs else {}
    seeds = sorted({int(s) for s in folder.results["seed"]}) if "seed" in folder.results.columns else []
    context = {
        "title": f"{'Merged comparison' if folder.merged else 'Run'} {folder.path.name}",
        "folder": folder.path.name, "merged": folder.merged,
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "dataset": _plain((first.get("config") or {}).get("dataset_version")) or "not recorded",
        "models": models, "seeds": seeds, "n_units": len(folder.results),
        "n_failed": len(folder.failed), "n_skipped": len(folder.skipped),
        "runs": runs, "tables": tables, "figures": figures, "images": _images(folder.path),
        "files": _files(folder.path), "plotly_js": Markup(get_plotlyjs()),
    }
    return _environment().get_template(TEMPLATE).render(**context)


def write_report(path: str | Path) -> Path:
    """Write ``report.html`` into the run or merged folder at ``path`` (atomically); return its path."""
    text = render_report(path)
    out = Path(path) / REPORT_HTML
    atomic_write_text(out, text)
    return out
