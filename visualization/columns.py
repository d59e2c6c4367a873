"""What the charts read from a run folder's tables (their names and columns: ``experiment/run_folder.py``): the
regions, the column -> label maps, checks, and the per-model summaries the results-based charts draw.

The results-based charts accept either the per-run table ``integrated_experiment_results.csv``
(one row per model, seed and fold) or the per-model summary ``model_comparison.csv``
(``m_mean``/``m_std`` columns and ``n_runs``); :func:`summarize_runs` turns the first into the second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from experiment.run_folder import comparison_table
from metrics.statistics import table_regions
from utils.labels import MODALITIES, REGION_NAMES

# Canonical modality order of the suite; used to order the x axis.
MODALITY_ORDER: tuple[str, ...] = MODALITIES

# Columns of the run folder's tables (experiment/run_folder.py) -> the labels drawn for them. The region
# columns follow the data set (its regions are the tables' hd95_* columns): see region_columns.
PAM_COLUMNS: dict[str, str] = {"pam_train_mb": "Train", "pam_inference_mb": "Inference"}
LATENCY_COLUMNS: dict[str, str] = {"latency_ms": "Latency"}
CI_SUFFIXES = ("_ci_low", "_ci_high")  # model_comparison.csv: bootstrap 95% CI of a mean over cases


# --------------------------------------------------------------------------------------------
# Regions and columns
# --------------------------------------------------------------------------------------------


def chart_regions(df: pd.DataFrame) -> list[str]:
    """The regions a chart draws for ``df``: those of the table (:func:`metrics.statistics.table_regions`, in the
    table's order; every table the suite writes has WT, TC, ET first), then any of WT, TC, ET the table lacks, so
    that a chart asks for their columns and names the missing ones (every data set has them: the mean Dice)."""
    regions = table_regions(df.columns)
    return regions + [r for r in REGION_NAMES if r not in regions]


def region_columns(df: pd.DataFrame, prefix: str, mean: str | None = None) -> dict[str, str]:
    """``{prefix}{region}`` -> the region's label (``WT`` ...) for every region of ``df``, and ``mean`` -> "Mean"."""
    columns = {f"{prefix}{r}": r.upper() for r in chart_regions(df)}
    return columns | ({mean: "Mean"} if mean else {})


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """ValueError naming ``what`` when ``df`` has no rows or lacks one of ``columns``."""
    if df.empty:
        raise ValueError(f"{what} has no rows; nothing to plot")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def models_in_order(df: pd.DataFrame) -> list[str]:
    """Model names in order of first appearance (the order the runner wrote them)."""
    return [str(m) for m in pd.unique(df["model"])]


def has_values(df: pd.DataFrame, columns: Sequence[str]) -> bool:
    """True when at least one of ``columns`` exists and holds a finite number."""
    present = [c for c in columns if c in df.columns]
    if not present:
        return False
    values = df[present].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return bool(np.isfinite(values).any())


# --------------------------------------------------------------------------------------------
# Per-model summary
# --------------------------------------------------------------------------------------------


def is_summary(df: pd.DataFrame) -> bool:
    """True for ``model_comparison.csv`` (``m_mean`` columns), False for the per-run results table."""
    return "test_dice_mean" not in df.columns and "test_dice_mean_mean" in df.columns


def summarize_runs(results_df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds/folds of every numeric column, one row per model.

    Returns a frame indexed by model (order of first appearance) with columns ``m_mean``,
    ``m_std`` (sample std, NaN with one run) for each numeric column ``m`` except seed and fold,
    plus ``n_runs``: the layout of ``model_comparison.csv``. A frame already in that layout
    (``test_dice_mean_mean`` present) is returned indexed by model, unchanged otherwise.
    """
    require_columns(results_df, ["model"], "results table")
    if is_summary(results_df):
        summary = results_df.set_index(results_df["model"].astype(str)).drop(columns="model")
        if "n_runs" not in summary.columns:
            summary["n_runs"] = np.nan
        return summary
    return comparison_table(results_df)


def summary_for(
    df: pd.DataFrame, required: Sequence[str], optional: Sequence[str], what: str
) -> pd.DataFrame:
    """Check ``required`` metrics (per-run or ``_mean`` form) and summarise; missing optional -> NaN."""
    require_columns(df, ["model"], what)
    summary_form = is_summary(df)
    missing = [m for m in required if (f"{m}_mean" if summary_form else m) not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")
    summary = summarize_runs(df)
    for metric in (*required, *optional):
        for stat in ("mean", "std"):
            if f"{metric}_{stat}" not in summary.columns:
                summary[f"{metric}_{stat}"] = np.nan
    return summary


def stat_table(summary: pd.DataFrame, columns: dict[str, str], stat: str) -> pd.DataFrame:
    """Models x series table of one statistic, series renamed by ``columns``."""
    table = summary[[f"{c}_{stat}" for c in columns]].astype(float)
    table.columns = list(columns.values())
    return table


def ci_errors(summary: pd.DataFrame, columns: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(mean - CI low, CI high - mean) per model and series, from the bootstrap CI columns of
    ``model_comparison.csv`` (``{column}_ci_low``/``_ci_high``); None when a column has none."""
    names = [f"{c}{suffix}" for c in columns for suffix in CI_SUFFIXES]
    if not all(n in summary.columns for n in names) or not has_values(summary, names):
        return None
    means = stat_table(summary, columns, "mean")
    low, high = (summary[[f"{c}{suffix}" for c in columns]].apply(pd.to_numeric, errors="coerce")
                 for suffix in CI_SUFFIXES)
    low.columns = high.columns = list(columns.values())
    return means - low, high - means


def modality_weight_summary(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean attention weight and its spread per modality (rows, canonical order) and model (columns).

    The mean is taken over seeds/folds of ``weight_mean``. The spread is the std of the weight over
    all test cases of all runs, sqrt(mean(weight_std^2) + var(weight_mean)) (law of total
    variance, equal number of cases per run); with one run it is that run's ``weight_std``.
    """
    require_columns(df, ["model", "modality", "weight_mean", "weight_std"], "modality contributions table")
    data = df.assign(
        model=df["model"].astype(str),
        modality=df["modality"].astype(str),
        weight_mean=pd.to_numeric(df["weight_mean"], errors="coerce"),
        weight_var=pd.to_numeric(df["weight_std"], errors="coerce") ** 2,
    )
    grouped = data.groupby(["modality", "model"], sort=False)
    means = grouped["weight_mean"].mean().unstack("model")
    spread = np.sqrt(grouped["weight_var"].mean() + grouped["weight_mean"].var(ddof=0)).unstack("model")
    present = list(means.index)
    order = [m for m in MODALITY_ORDER if m in present] + [m for m in present if m not in MODALITY_ORDER]
    models = models_in_order(data)
    return means.loc[order, models], spread.loc[order, models]
