"""Charts drawn from the CSV files of a run folder (their names and columns: ``experiment/run_folder.py``).

Every function takes a DataFrame and an output path, writes one file atomically (temporary file,
then rename) and returns its path. Nothing here trains or changes a CSV. The figures are drawn with
``visualization/figures.py`` (Agg canvas, seaborn styles); seaborn also provides the learning-curve and
box-plot aggregation, plotly the offline interactive HTML. Which columns and regions a chart reads, and the
per-model summaries of the results-based charts, are ``visualization/columns.py``.
"""

from __future__ import annotations

import html
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.ticker import EngFormatter, FuncFormatter, MaxNLocator

from experiment.run_folder import (
    COMPARISON_CSV,
    EPOCHS_CSV,
    MODALITY_CSV,
    PER_CASE_CSV,
    RESULTS_CSV,
    STAGE_PAM_CSV,
)
from metrics.statistics import pareto_front
from utils.io import atomic_output, read_csv
from visualization.columns import (
    LATENCY_COLUMNS,
    PAM_COLUMNS,
    chart_regions,
    ci_errors,
    has_values,
    modality_weight_summary,
    models_in_order,
    region_columns,
    require_columns,
    stat_table,
    summary_for,
)
from visualization.figures import PathLike, drawing, model_palette

logger = logging.getLogger(__name__)

NOT_MEASURED = "not measured (no GPU)"


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------


def _grouped_bars(
    ax: Axes,
    means: pd.DataFrame,
    errors: pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame] | None,
    colors: dict[str, object] | None = None,
    ylabel: str = "",
    title: str = "",
) -> None:
    """Bars with one group per row of ``means`` (x axis) and one bar per column (series).

    ``errors`` has the same shape (symmetric), or is a pair (below, above) of such frames
    (asymmetric, e.g. a confidence interval); NaN errors (a single run) draw no error bar.
    """
    n_series = max(means.shape[1], 1)
    width = 0.8 / n_series
    x = np.arange(len(means.index))
    pair = isinstance(errors, tuple)
    for i, series in enumerate(means.columns):
        err = None
        if pair:
            below, above = (e[series].to_numpy(dtype=float) for e in errors)
            if np.isfinite(below).any() or np.isfinite(above).any():
                err = np.nan_to_num(np.clip(np.vstack([below, above]), 0.0, None), nan=0.0)
        elif errors is not None and series in errors.columns:
            err = errors[series].to_numpy(dtype=float)
            err = None if not np.isfinite(err).any() else np.nan_to_num(err, nan=0.0)
        ax.bar(
            x + (i - (n_series - 1) / 2) * width,
            means[series].to_numpy(dtype=float),
            width,
            yerr=err,
            capsize=2,
            label=str(series),
            color=None if colors is None else colors.get(series),
        )
    labels = [str(v) for v in means.index]
    rotate = len(labels) > 4 or max((len(s) for s in labels), default=0) > 12
    ax.set_xticks(x, labels=labels, rotation=40 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="x", visible=False)
    values = means.to_numpy(dtype=float)
    if errors is not None:
        above = errors[1] if pair else errors
        values = values + np.nan_to_num(above.reindex_like(means).to_numpy(dtype=float), nan=0.0)
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    if top > 0:
        ax.set_ylim(0.0, top * (1.2 if n_series > 1 else 1.08))  # head room for the legend
    if n_series > 1:
        ax.legend(fontsize="small", loc="upper center", ncol=min(n_series, 4))


def _not_measured(ax: Axes, title: str, text: str = NOT_MEASURED) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize="large", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------


def plot_learning_curves(epochs_df: pd.DataFrame, path: PathLike) -> Path:
    """Train loss and validation mean Dice per epoch, one line per model (``learning_curves.png``).

    Several seeds/folds of a model are averaged per epoch with a band of +-1 std.
    """
    require_columns(epochs_df, ["model", "epoch", "train_loss", "val_dice_mean"], "epochs table")
    data = epochs_df.assign(model=epochs_df["model"].astype(str))
    models = models_in_order(data)
    palette = model_palette(models)
    panels = {"train_loss": "Training loss", "val_dice_mean": "Validation mean Dice"}
    with drawing(path, 1, 2, figsize=(13.0, 4.8)) as (fig, axes):
        for ax, (column, title) in zip(axes[0], panels.items()):
            if not has_values(data, [column]):
                _not_measured(ax, title, "no values")
                continue
            sns.lineplot(
                data=data,
                x="epoch",
                y=column,
                hue="model",
                hue_order=models,
                palette=palette,
                errorbar="sd",
                marker="o" if data["epoch"].nunique() <= 20 else None,
                ax=ax,
                legend=ax is axes[0, 0],
            )
            ax.set_title(title)
            ax.set_ylabel(title)
            ax.set_xlabel("Epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes[0, 0].get_legend() is not None:
            axes[0, 0].get_legend().remove()
            fig.legend(
                *axes[0, 0].get_legend_handles_labels(),
                loc="outside right upper",
                fontsize="small",
                title="model",
            )
        fig.suptitle("Learning curves (mean over seeds/folds, band: ±1 std)")
    return Path(path)


def plot_model_comparison(results_df: pd.DataFrame, path: PathLike) -> Path:
    """Test Dice, HD95, PAM and latency per model with std over seeds/folds (``model_comparison_chart.png``).

    The PAM and latency panels say "not measured" when their columns are empty (runs on CPU).
    """
    dice_columns = region_columns(results_df, "test_dice_", mean="test_dice_mean")
    hd95_columns = region_columns(results_df, "test_hd95_")
    summary = summary_for(
        results_df,
        required=[*dice_columns, *hd95_columns],
        optional=[*PAM_COLUMNS, *LATENCY_COLUMNS],
        what="results table",
    )
    width = min(max(12.0, 0.9 * len(summary) + 6.0), 40.0)
    region_colors = dict(zip(dice_columns.values(), sns.color_palette("Set2", len(dice_columns))))
    # (columns, y label, title, text when no value was measured)
    panels: list[tuple[dict[str, str], str, str, str]] = [
        (dice_columns, "Dice", "Test Dice (mean ± std over seeds/folds)", "no values"),
        (hd95_columns, "HD95 (mm)", "Test HD95 (mean ± std)", "no values"),
        (PAM_COLUMNS, "Peak activation memory (MB)", "PAM (GPU)", NOT_MEASURED),
        (LATENCY_COLUMNS, "Latency (ms, batch 1)", "Inference latency", "not measured"),
    ]
    dice_ci = ci_errors(summary, dice_columns)
    if dice_ci is not None:
        panels[0] = (dice_columns, "Dice", "Test Dice (mean, 95% bootstrap CI over cases)", "no values")
    with drawing(path, 2, 2, figsize=(width, 10.0)) as (fig, axes):
        for ax, (columns, ylabel, title, missing) in zip(axes.ravel(), panels):
            means = stat_table(summary, columns, "mean")
            if not np.isfinite(means.to_numpy()).any():
                _not_measured(ax, title, missing)
                continue
            colors = region_colors if columns is not PAM_COLUMNS else None
            use_ci = columns is dice_columns and dice_ci is not None
            errors = dice_ci if use_ci else stat_table(summary, columns, "std")
            _grouped_bars(ax, means, errors, colors, ylabel, title)
        n_runs = summary["n_runs"].to_numpy(dtype=float)
        low, high = (int(np.nanmin(n_runs)), int(np.nanmax(n_runs))) if np.isfinite(n_runs).any() else (0, 0)
        runs = "?" if high == 0 else str(low) if low == high else f"{low}-{high}"
        fig.suptitle(f"Model comparison ({len(summary)} models, runs per model: {runs})")
    return Path(path)


def _marker_areas(flops: np.ndarray, smallest: float = 40.0, largest: float = 900.0) -> np.ndarray:
    """Marker areas proportional to FLOPs (clipped below at ``smallest``); uniform when unknown."""
    finite = np.isfinite(flops) & (flops > 0)
    if not finite.any():
        return np.full(flops.shape, 150.0)
    areas = np.where(finite, largest * flops / flops[finite].max(), smallest)
    return np.clip(areas, smallest, largest)


def _minor_log_label(value: float, _pos: int | None = None) -> str:
    """Engineering-notation label for the minor log ticks at 2, 3 and 5 x 10^k only (no crowding)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return EngFormatter()(value) if round(mantissa) in (2, 3, 5) else ""


@dataclass(frozen=True)
class _EfficiencyPoints:
    """One point per model of the parameter-efficiency chart, in the summary's model order."""

    models: list[str]
    params: np.ndarray
    dice: np.ndarray
    errors: np.ndarray  # (2, models): below and above the mean
    flops: np.ndarray
    areas: np.ndarray
    on_front: np.ndarray  # Pareto front over parameters
    spread: str  # what the error bars are


def _efficiency_points(results_df: pd.DataFrame) -> _EfficiencyPoints:
    """Mean test Dice, parameters, FLOPs, error bars (bootstrap CI where the table has it, else ± std) and the
    Pareto front of every model; ValueError when a model has no positive parameter count (log axis)."""
    summary = summary_for(results_df, ["params", "test_dice_mean"], ["flops"], "results table")
    params = summary["params_mean"].to_numpy(dtype=float)
    bad = [m for m, p in zip(summary.index, params) if not (np.isfinite(p) and p > 0)]
    if bad:
        raise ValueError(f"params must be positive for a log axis; models {bad} have {params[~(params > 0)]}")
    flops = summary["flops_mean"].to_numpy(dtype=float)
    dice = summary["test_dice_mean_mean"].to_numpy(dtype=float)
    ci = ci_errors(summary, {"test_dice_mean": "Mean"})
    if ci is not None:
        errors = np.clip(np.vstack([ci[0]["Mean"].to_numpy(dtype=float), ci[1]["Mean"].to_numpy(dtype=float)]), 0, None)
        spread = "mean, 95% bootstrap CI over cases"
    else:
        std = summary["test_dice_mean_std"].to_numpy(dtype=float)
        errors, spread = np.vstack([std, std]), "mean ± std over seeds/folds"
    on_front = np.array([bool(f) for f in pareto_front(dice, params)])
    return _EfficiencyPoints(list(summary.index), params, dice, errors, flops, _marker_areas(flops), on_front, spread)


def _draw_pareto_front(ax: Axes, points: _EfficiencyPoints) -> object | None:
    """The Pareto front as a dashed staircase (by parameters); its line, or None when no model is on it."""
    if not points.on_front.any():
        return None
    front = np.flatnonzero(points.on_front)
    front = front[np.lexsort((points.dice[front], points.params[front]))]
    (front_line,) = ax.step(points.params[front], points.dice[front], where="post", color="0.35", linestyle="--",
                            linewidth=1.2, zorder=1, label="Pareto front (parameters)")
    return front_line


def _draw_efficiency_models(ax: Axes, points: _EfficiencyPoints) -> None:
    """Each model: its error bar, a marker of area ~ FLOPs (thick edge on the front) and its name beside it."""
    palette = model_palette(points.models)
    params, dice, areas, on_front = points.params, points.dice, points.areas, points.on_front
    for i, model in enumerate(points.models):
        color = palette[model]
        if np.isfinite(points.errors[:, i]).all():
            ax.errorbar(params[i], dice[i], yerr=points.errors[:, i:i + 1], color=color, capsize=3, zorder=2)
        ax.scatter(params[i], dice[i], s=areas[i], color=color, alpha=0.75, edgecolor="k", zorder=3,
                   linewidth=2.0 if on_front[i] else 1.0)
        offset = 0.5 * math.sqrt(areas[i]) + 2.0  # marker radius in points, plus a gap
        ax.annotate(
            f"{model} (Pareto)" if on_front[i] else model,
            (params[i], dice[i]),
            xytext=(offset, offset),
            textcoords="offset points",
            fontsize="small",
            fontweight="bold" if on_front[i] else "normal",
        )


def _flops_legend(ax: Axes, points: _EfficiencyPoints, front_line: object | None) -> None:
    """The marker-area legend (the smallest and largest FLOPs) with the front; a note when no FLOPs are known."""
    flops, areas = points.flops, points.areas
    finite = np.isfinite(flops) & (flops > 0)
    if finite.any():
        known = np.flatnonzero(finite)
        shown = sorted({int(known[np.argmin(flops[known])]), int(known[np.argmax(flops[known])])})
        handles = [ax.scatter([], [], s=areas[i], color="0.6", edgecolor="k") for i in shown]
        labels = [f"{flops[i] / 1e9:.3g} GFLOPs" for i in shown]
        if front_line is not None:
            handles.append(front_line)
            labels.append("Pareto front (parameters)")
        ax.legend(
            handles,
            labels,
            title="marker area ~ FLOPs",
            loc="best",
            labelspacing=1.8,
            borderpad=1.2,
            handletextpad=1.8,
        )
    else:
        ax.set_title("FLOPs not measured (uniform markers)", fontsize="small")
        if front_line is not None:
            ax.legend(loc="best", fontsize="small")


def plot_parameter_efficiency(results_df: pd.DataFrame, path: PathLike) -> Path:
    """Mean test Dice vs parameters (log x), marker area ~ FLOPs, one label per model (``parameter_efficiency.png``).

    The Pareto front over parameters (no other model has a higher mean Dice with as many or fewer
    parameters; ``metrics.statistics.pareto_front``) is drawn as a staircase and its models are
    labelled in bold. Error bars: the bootstrap 95% CI over cases where the table has it
    (``model_comparison.csv``), else ± std over seeds/folds.
    """
    points = _efficiency_points(results_df)
    with drawing(path, figsize=(10.0, 6.5)) as (fig, axes):
        ax = axes[0, 0]
        front_line = _draw_pareto_front(ax, points)
        _draw_efficiency_models(ax, points)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
        ax.margins(x=0.2, y=0.1)
        ax.set_xlabel("Parameters (log scale)")
        ax.set_ylabel("Test mean Dice (WT/TC/ET)")
        _flops_legend(ax, points, front_line)
        fig.suptitle(f"Parameter efficiency ({points.spread})")
    return Path(path)


def _fmt(value: float, spec: str, unit: str = "", missing: str = "not measured") -> str:
    if value is None or not math.isfinite(float(value)):
        return missing
    return f"{value:{spec}}{unit}"


def _hover_text(model: str, row: pd.Series, regions: Sequence[str]) -> str:
    """Multi-line plotly hover text with every headline number of one model (Dice and HD95 of ``regions``)."""
    names = "/".join(r.upper() for r in regions)

    def mean_std(metric: str, spec: str, unit: str = "", scale: float = 1.0) -> str:
        mean, std = row[f"{metric}_mean"] / scale, row[f"{metric}_std"] / scale
        text = _fmt(mean, spec, unit)
        return text if not math.isfinite(std) else f"{text} ± {std:{spec}}"

    lines = [
        f"<b>{html.escape(model)}</b> (runs: {_fmt(row['n_runs'], '.0f', missing='?')})",
        f"Dice mean {mean_std('test_dice_mean', '.3f')}",
        f"Dice {names} " + " / ".join(_fmt(row[f"test_dice_{r}_mean"], ".3f") for r in regions),
        f"HD95 {names} " + " / ".join(_fmt(row[f"test_hd95_{r}_mean"], ".1f") for r in regions),
        f"Params {mean_std('params', '.3f', ' M', 1e6)}",
        f"FLOPs {mean_std('flops', '.2f', ' G', 1e9)}",
        f"Latency {mean_std('latency_ms', '.1f', ' ms')}",
        f"PAM train {mean_std('pam_train_mb', '.0f', ' MB')}",
        f"PAM inference {mean_std('pam_inference_mb', '.0f', ' MB')}",
    ]
    return "<br>".join(lines)


def write_interactive_3d_analysis(results_df: pd.DataFrame, path: PathLike) -> Path:
    """Offline plotly 3D scatter: parameters x FLOPs (or latency) x mean test Dice (``interactive_3d_analysis.html``).

    The y axis is FLOPs when any model has them, else latency. plotly.js is inlined, so the file
    opens without a network connection.
    """
    regions = chart_regions(results_df)
    optional = [
        *[f"test_dice_{r}" for r in regions],
        *[f"test_hd95_{r}" for r in regions],
        *PAM_COLUMNS,
        *LATENCY_COLUMNS,
        "flops",
    ]
    summary = summary_for(results_df, ["params", "test_dice_mean"], optional, "results table")
    if has_values(summary, ["flops_mean"]):
        y_column, y_title, y_scale, y_log = "flops_mean", "GFLOPs (log)", 1e9, True
    elif has_values(summary, ["latency_ms_mean"]):
        y_column, y_title, y_scale, y_log = "latency_ms_mean", "Latency (ms)", 1.0, False
    else:
        raise ValueError(
            "results table has neither FLOPs nor latency values; the 3D analysis needs one of them"
        )
    palette = model_palette(list(summary.index))
    fig = go.Figure()
    for model, row in summary.iterrows():
        r, g, b = (int(255 * c) for c in palette[model])
        dice_std = row["test_dice_mean_std"]
        fig.add_trace(
            go.Scatter3d(
                x=[row["params_mean"] / 1e6],
                y=[row[y_column] / y_scale],
                z=[row["test_dice_mean_mean"]],
                mode="markers+text",
                name=str(model),
                text=[str(model)],
                hovertext=[_hover_text(str(model), row, regions)],
                hoverinfo="text",
                marker={"size": 8, "color": f"rgb({r},{g},{b})", "line": {"width": 1, "color": "black"}},
                error_z={"type": "data", "array": [dice_std], "visible": bool(math.isfinite(dice_std))},
            )
        )
    fig.update_layout(
        title="Accuracy vs efficiency (mean over seeds/folds; hover for details)",
        scene={
            "xaxis": {"title": {"text": "Parameters (M, log)"}, "type": "log"},
            "yaxis": {"title": {"text": y_title}, "type": "log" if y_log else "linear"},
            "zaxis": {"title": {"text": "Test mean Dice"}},
        },
        legend={"title": {"text": "model"}},
        margin={"l": 0, "r": 0, "t": 50, "b": 0},
    )
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return path


def plot_modality_contributions(df: pd.DataFrame, path: PathLike) -> Path:
    """Mean attention weight per modality and model (``modality_contributions.png``).

    Bars and error bars come from :func:`modality_weight_summary`; the dashed line marks equal
    contribution (1 / number of modalities).
    """
    means, spread = modality_weight_summary(df)
    order, models = list(means.index), list(means.columns)
    with drawing(path, figsize=(max(7.0, 1.6 * len(order) + 0.8 * len(models)), 4.8)) as (fig, axes):
        ax = axes[0, 0]
        _grouped_bars(ax, means, spread, model_palette(models), "Attention weight", "")
        ax.set_xticks(ax.get_xticks(), labels=[m.upper() for m in order], rotation=0, ha="center")
        ax.axhline(1.0 / len(order), color="0.3", linestyle="--", linewidth=1, label="equal share")
        ax.legend(fontsize="small")
        ax.set_ylim(0.0, min(1.0, float(np.nanmax((means + spread.fillna(0)).to_numpy())) * 1.2 + 0.02))
        fig.suptitle("Modality contribution (attention weights over the test cases)")
    return Path(path)


def plot_stage_wise_pam(df: pd.DataFrame, path: PathLike) -> Path:
    """Peak activation memory per stage, one panel per model (``stage_wise_pam.png``).

    Several rows for the same (model, stage) are averaged. Raises ValueError when no PAM value
    was measured (runs on CPU leave the columns empty).
    """
    require_columns(df, ["model", "stage", *PAM_COLUMNS], "stage-wise PAM table")
    if not has_values(df, list(PAM_COLUMNS)):
        raise ValueError("stage-wise PAM table holds no measured value (PAM needs a GPU run)")
    data = df.assign(model=df["model"].astype(str), stage=df["stage"].astype(str))
    data[list(PAM_COLUMNS)] = data[list(PAM_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    models = models_in_order(data)
    n_stages = int(data.groupby("model")["stage"].nunique().max())
    with drawing(path, len(models), 1, figsize=(max(8.0, 0.7 * n_stages + 3.0), 3.2 * len(models))) as (
        fig,
        axes,
    ):
        for ax, model in zip(axes[:, 0], models):
            stages = data[data["model"] == model].groupby("stage", sort=False)[list(PAM_COLUMNS)].mean()
            stages.columns = list(PAM_COLUMNS.values())
            _grouped_bars(ax, stages, None, None, "PAM (MB)", model)
        fig.suptitle("Stage-wise peak activation memory")
    return Path(path)


def plot_per_case_dice(df: pd.DataFrame, path: PathLike) -> Path:
    """Distribution of the per-case test metrics per model and region, all seeds/folds pooled
    (``per_case_dice.png``): a box (quartiles, whiskers at 1.5 IQR) with every case drawn over it as
    a point, for the Dice of WT/TC/ET and, where the table has them, the NSD of WT/TC/ET (a second panel)."""
    dice_columns, nsd_columns = region_columns(df, "dice_"), region_columns(df, "nsd_")
    require_columns(df, ["model", *dice_columns], "per-case results table")
    data = df.assign(model=df["model"].astype(str))
    models = models_in_order(data)
    panels = [(dice_columns, "Per-case test Dice")]
    if all(c in data.columns for c in nsd_columns) and has_values(data, list(nsd_columns)):
        panels.append((nsd_columns, "Per-case test NSD"))
    width = min(max(9.0, 1.0 * len(models) + 5.0), 40.0)
    with drawing(path, len(panels), 1, figsize=(width, 5.0 * len(panels))) as (fig, axes):
        for ax, (columns, ylabel) in zip(axes[:, 0], panels):
            long = data.melt(
                id_vars="model", value_vars=list(columns), var_name="region", value_name="value"
            )
            long["value"] = pd.to_numeric(long["value"], errors="coerce")
            long = long.dropna(subset=["value"])
            long["region"] = long["region"].map(columns)
            common = dict(data=long, x="model", y="value", hue="region", order=models,
                          hue_order=list(columns.values()), ax=ax)
            with warnings.catch_warnings():
                # seaborn 0.13 passes the deprecated ``vert`` argument to matplotlib >= 3.11
                warnings.filterwarnings("ignore", message=".*vert: bool", category=DeprecationWarning)
                sns.boxplot(**common, palette="Set2", fliersize=0, boxprops={"alpha": 0.6})
                sns.stripplot(**common, palette=dict.fromkeys(columns.values(), "0.2"), dodge=True, size=2.5,
                              alpha=0.6, jitter=0.15, legend=False)
            if len(models) > 4:
                ax.tick_params(axis="x", labelrotation=40)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("")
            ax.set_ylabel(ylabel)
        fig.suptitle("Per-case test metrics (seeds/folds pooled; one point per case)")
    return Path(path)


# --------------------------------------------------------------------------------------------
# Whole run folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlotJob:
    """One chart of a run folder: which CSV it reads, what it writes, and when it has data."""

    sources: tuple[str, ...]  # candidate CSV names, the first present one is used
    output: str
    plot: Callable[[pd.DataFrame, PathLike], Path]
    has_data: Callable[[pd.DataFrame], bool] = field(default=lambda df: not df.empty)


# model_comparison.csv first: it holds the bootstrap CIs the charts draw; the per-run table otherwise.
_RESULTS_SOURCES = (COMPARISON_CSV, RESULTS_CSV)


def _efficiency_data(df: pd.DataFrame) -> bool:
    return has_values(df, ["flops", "flops_mean", "latency_ms", "latency_ms_mean"])


PLOT_JOBS: tuple[PlotJob, ...] = (
    PlotJob((EPOCHS_CSV,), "learning_curves.png", plot_learning_curves),
    PlotJob(_RESULTS_SOURCES, "model_comparison_chart.png", plot_model_comparison),
    PlotJob(_RESULTS_SOURCES, "parameter_efficiency.png", plot_parameter_efficiency),
    PlotJob(
        _RESULTS_SOURCES,
        "interactive_3d_analysis.html",
        write_interactive_3d_analysis,
        lambda df: not df.empty and _efficiency_data(df),
    ),
    PlotJob((PER_CASE_CSV,), "per_case_dice.png", plot_per_case_dice),
    PlotJob((MODALITY_CSV,), "modality_contributions.png", plot_modality_contributions),
    PlotJob(
        (STAGE_PAM_CSV,),
        "stage_wise_pam.png",
        plot_stage_wise_pam,
        lambda df: not df.empty and has_values(df, list(PAM_COLUMNS)),
    ),
)


def make_all_plots(run_dir: PathLike, strict: bool = False) -> list[Path]:
    """Draw every chart the CSVs of ``run_dir`` allow, into ``run_dir``; return the written paths.

    Missing CSVs, empty tables and unmeasured quantities (PAM without a GPU, no attention model)
    are skipped with an INFO log message. A table that cannot be drawn (e.g. a required column
    is missing: the chart function raises ValueError) is skipped with a WARNING naming the chart
    and the reason, so the finished results of a long run never end in a crash; ``strict=True``
    re-raises instead. Nothing is trained and no CSV is changed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run_dir {run_dir} is not a directory; pass a run folder holding the result CSVs")
    tables: dict[str, pd.DataFrame] = {}
    written: list[Path] = []
    for job in PLOT_JOBS:
        df = None
        for name in job.sources:
            if name not in tables:
                tables[name] = read_csv(run_dir / name)
            if not tables[name].empty:
                df = tables[name]
                break
        if df is None:
            logger.info("skip %s: none of %s in %s", job.output, list(job.sources), run_dir)
            continue
        if not job.has_data(df):
            logger.info("skip %s: no data to draw in %s", job.output, list(job.sources))
            continue
        try:
            written.append(job.plot(df, run_dir / job.output))
        except ValueError as err:
            if strict:
                raise
            logger.warning("skip %s: %s", job.output, err)
    return written
