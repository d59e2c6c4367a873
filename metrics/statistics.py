"""Comparisons a reviewer can check: paired tests, bootstrap confidence intervals, Pareto fronts and
BraTS-style ranking. Pure functions, DataFrames in, DataFrames out; nothing here reads or writes files
(``experiment/run_folder.py`` calls them at the end of a run, ``python -m visualization`` on merged runs).

Inputs are the run folder's tables: the per-case table (``per_case_results.csv``: model, seed, fold,
case_id and the per-case metrics) and the per-model comparison table (``model_comparison.csv``).

- **Case values** (:func:`case_values`): a case's value for a model is its mean over the model's rows
  of that case, i.e. over seeds (with 5 folds every case is tested once per seed). ``dice_mean`` of a
  case is the mean of its WT/TC/ET Dice. Cases are matched between models by ``case_id``.
- **Paired tests** (:func:`paired_tests`): every model against the reference model (the best by mean
  Dice over its cases), per metric, two-sided Wilcoxon signed-rank test on the paired case values
  (``scipy.stats.wilcoxon``, zeros dropped as Wilcoxon did; exact null distribution for n <= 50
  without ties or zero differences, exact permutation distribution for n <= 13 with ties or zeros,
  the normal approximation with continuity correction otherwise: scipy's ``method="auto"``, named in
  the ``test`` column), Holm-corrected across the models of each metric.
- **Bootstrap CI** (:func:`bootstrap_ci`): percentile 95% interval of the mean over cases, resampling
  cases with replacement (10,000 resamples, fixed seed; the same stream for every model, so adding a
  model never moves another model's interval).
- **Pareto flags** (:func:`pareto_flags`): a model is on the front of a cost when no other model has a
  higher mean Dice at a lower or equal cost.
- **Ranking** (:func:`brats_ranking`): rank-then-aggregate as in the BraTS challenge: per case and
  metric the models are ranked (Dice: higher is better; HD95: lower is better; ties get the average
  rank), a model's score is its mean rank over cases and metrics, and the final rank orders the scores.
  Its stability comes from bootstrap resamples of the cases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from metrics import mean_region_dice
from utils.labels import REGIONS

DICE_REGION_KEYS: tuple[str, ...] = tuple(f"dice_{r}" for r in REGIONS)  # the WT/TC/ET of the mean Dice


# The metrics follow the data set: its regions are those with an HD95 column (class Dice columns have none), in the
# table's order; BraTS 2018-2023: WT, TC, ET. The one reader of a table's regions (the charts and report.html too).
def table_regions(columns: Iterable[object]) -> list[str]:
    """The regions of a run folder's table, in the table's column order: every region with an HD95 column,
    ``hd95_{region}`` (per-case table), ``test_hd95_{region}`` (results) or ``test_hd95_{region}_mean``
    (``model_comparison.csv``; its ``_std``, ``_ci_low`` ... columns name no region: the suite's region keys hold no
    ``_``)."""
    regions: list[str] = []
    for column in columns:
        name = str(column).removeprefix("test_")
        if not name.startswith("hd95_"):
            continue
        region = name[5:].removesuffix("_mean")
        if "_" not in region and region not in regions:
            regions.append(region)
    return regions


def comparison_metrics(columns: Sequence[str]) -> tuple[str, ...]:
    """Metrics of statistical_tests.csv, in order: the mean Dice, then Dice, HD95, NSD of every region."""
    regions = table_regions(columns)
    return (("dice_mean",) + tuple(f"dice_{r}" for r in regions) + tuple(f"hd95_{r}" for r in regions)
            + tuple(f"nsd_{r}" for r in regions))


def ranking_metrics(columns: Sequence[str]) -> dict[str, bool]:
    """BraTS ranking metrics (Dice and HD95 of every region) and whether higher is better."""
    regions = table_regions(columns)
    return {**{f"dice_{r}": True for r in regions}, **{f"hd95_{r}": False for r in regions}}


def ci_metrics(columns: Sequence[str]) -> dict[str, str]:
    """Bootstrap CIs added to model_comparison.csv: per-case column -> comparison column prefix."""
    return {"dice_mean": "test_dice_mean", **{f"dice_{r}": f"test_dice_{r}" for r in table_regions(columns)}}


_CLASSIC_COLUMNS = [f"hd95_{r}" for r in REGIONS]
TEST_METRICS: tuple[str, ...] = comparison_metrics(_CLASSIC_COLUMNS)          # those of BraTS 2018-2023 (WT, TC, ET)
RANKING_METRICS: dict[str, bool] = ranking_metrics(_CLASSIC_COLUMNS)
CI_METRICS: dict[str, str] = ci_metrics(_CLASSIC_COLUMNS)
# Pareto fronts: flag column -> cost column of model_comparison.csv. Latency and PAM are GPU figures:
# their column is only added where some model has a value.
PARETO_COSTS: dict[str, str] = {"pareto_params": "params_mean", "pareto_flops": "flops_mean",
                                "pareto_latency": "latency_ms_mean", "pareto_pam": "pam_inference_mb_mean"}
OPTIONAL_PARETO = ("pareto_latency", "pareto_pam")
PARETO_SCORE = "test_dice_mean_mean"

TEST_COLUMNS = ["metric", "model", "reference_model", "n_cases", "median_diff", "statistic", "p_value",
                "p_holm", "test"]
RANKING_COLUMNS = ["model", "rank", "mean_case_rank", "n_cases", "n_metrics", "rank_stability",
                   "rank_ci_low", "rank_ci_high"]
MIN_PAIRS = 6        # below, the exact two-sided Wilcoxon test cannot reach p < 0.05 (n = 5: p >= 0.0625)
N_BOOTSTRAP = 10_000
N_BOOTSTRAP_RANKING = 1_000
BOOTSTRAP_SEED = 0
_CHUNK = 1_000       # bootstrap resamples drawn at once (memory: chunk x n_cases floats)


# ----------------------------------------------------------------------------- case values
def case_values(per_case: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (model, case_id): the mean of each metric over the model's rows of that case
    (its seeds). Adds ``dice_mean`` (mean of the WT/TC/ET Dice of a row) when the region Dice are
    present. Models keep their order of first appearance; cases are sorted."""
    missing = [c for c in ("model", "case_id") if c not in per_case.columns]
    if missing:
        raise ValueError(f"per-case table lacks column(s) {missing}; it has {list(per_case.columns)}")
    data = per_case.assign(model=per_case["model"].astype(str), case_id=per_case["case_id"].astype(str))
    if "dice_mean" not in data.columns and all(k in data.columns for k in DICE_REGION_KEYS):
        data["dice_mean"] = mean_region_dice(data[list(DICE_REGION_KEYS)].astype(float))
    if metrics is None:
        metrics = [c for c in data.columns if c not in ("model", "seed", "fold", "case_id")
                   and pd.api.types.is_numeric_dtype(data[c])]
    metrics = [m for m in metrics if m in data.columns]
    values = data[["model", "case_id", *metrics]].copy()
    values[metrics] = values[metrics].apply(pd.to_numeric, errors="coerce")
    out = values.groupby(["model", "case_id"], sort=False)[metrics].mean().reset_index()
    order = {m: i for i, m in enumerate(pd.unique(data["model"]))}
    return out.sort_values(["model", "case_id"], key=lambda s: s.map(order) if s.name == "model" else s,
                           kind="stable").reset_index(drop=True)


def _wide(values: pd.DataFrame, metric: str) -> pd.DataFrame:
    """cases x models table of one metric (models in order of first appearance)."""
    models = list(pd.unique(values["model"]))
    return values.pivot(index="case_id", columns="model", values=metric)[models]


def best_model(values: pd.DataFrame, metric: str = "dice_mean") -> str:
    """The model with the highest mean of ``metric`` over its cases (the first one on a tie)."""
    means = values.groupby("model", sort=False)[metric].mean()
    if means.dropna().empty:
        raise ValueError(f"no model has a value of {metric}")
    return str(means.idxmax())


# ----------------------------------------------------------------------------- paired tests
def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1). NaN stays NaN and does
    not count in the number of hypotheses."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def _wilcoxon_method(diff: np.ndarray) -> tuple[str | stats.PermutationMethod, str]:
    """The method ``scipy.stats.wilcoxon(method="auto")`` picks for ``diff``, and its name."""
    nonzero = diff[diff != 0]
    ties = len(np.unique(np.abs(nonzero))) < len(nonzero)
    if len(diff) > 50:
        return "asymptotic", "wilcoxon signed-rank, normal approximation"
    if not ties and len(nonzero) == len(diff):
        return "exact", "wilcoxon signed-rank, exact"
    if len(diff) <= 13:
        return stats.PermutationMethod(), "wilcoxon signed-rank, exact permutation (ties or zeros)"
    return "asymptotic", "wilcoxon signed-rank, normal approximation (ties or zeros)"


def wilcoxon_paired(x: Sequence[float], y: Sequence[float], min_pairs: int = MIN_PAIRS) -> dict[str, object]:
    """Two-sided Wilcoxon signed-rank test of the paired samples ``x`` and ``y`` (NaN pairs dropped).

    Returns ``n_cases`` (pairs), ``median_diff`` (median of x - y), ``statistic``, ``p_value`` and
    ``test`` (the method, or why there is no p-value: no pairs, all differences zero, fewer than
    ``min_pairs`` non-zero differences). Never raises on data.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    diff = x[keep] - y[keep]
    out: dict[str, object] = {"n_cases": int(diff.size), "median_diff": float(np.median(diff)) if diff.size else np.nan,
                              "statistic": np.nan, "p_value": np.nan}
    n_nonzero = int(np.count_nonzero(diff))
    if diff.size == 0:
        out["test"] = "not tested: no paired cases"
    elif n_nonzero == 0:
        out["test"] = "not tested: all differences zero"
    elif n_nonzero < min_pairs:
        out["test"] = f"not tested: {n_nonzero} non-zero differences (< {min_pairs})"
    else:
        method, name = _wilcoxon_method(diff)
        res = stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided", method=method)
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue), test=name)
    return out


def paired_tests(per_case: pd.DataFrame, metrics: Sequence[str] | None = None, reference: str | None = None,
                 min_pairs: int = MIN_PAIRS) -> pd.DataFrame:
    """``statistical_tests.csv``: every model against the reference model, per metric.

    Rows in the order of ``metrics`` (default :func:`comparison_metrics` of the table's regions; those absent from
    the table skipped) and of the models; the
    reference model (default: the best by mean ``dice_mean`` over its cases) has no row.
    ``median_diff`` is the median of model - reference over the paired cases (for HD95 a positive
    difference means the model is worse). ``p_holm``: Holm's correction across the models of a metric.
    """
    values = case_values(per_case)
    metrics = [m for m in (comparison_metrics(per_case.columns) if metrics is None else metrics) if m in values.columns]
    if values.empty or not metrics:
        return pd.DataFrame(columns=TEST_COLUMNS)
    reference = reference or best_model(values)
    rows = []
    for metric in metrics:
        wide = _wide(values, metric)
        block = []
        for model in wide.columns:
            if model == reference:
                continue
            block.append({"metric": metric, "model": model, "reference_model": reference,
                          **wilcoxon_paired(wide[model], wide[reference], min_pairs)})
        for row, p in zip(block, holm([r["p_value"] for r in block])):
            row["p_holm"] = p
        rows += block
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


# ----------------------------------------------------------------------------- bootstrap
def _resample_weights(n: int, n_resamples: int, seed: int):
    """Yield (chunk, n) arrays of case counts, one row per bootstrap resample of ``n`` cases."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float)


def bootstrap_mean(values: Sequence[float], n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples (with replacement) of ``values`` (NaN dropped)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.full(n_resamples, np.nan)
    return np.concatenate([w @ v / v.size for w in _resample_weights(v.size, n_resamples, seed)])


def bootstrap_ci(per_case: pd.DataFrame, metrics: Mapping[str, str] | None = None, level: float = 0.95,
                 n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Percentile bootstrap CI of the mean over cases, per model: columns ``{name}_ci_low`` and
    ``{name}_ci_high`` for each per-case metric -> name of ``metrics`` (default :func:`ci_metrics` of the
    table's regions, e.g. ``test_dice_mean_ci_low``), indexed by model. Each model's cases are resampled with
    the same seeded stream, so the intervals are reproducible and independent of the other models."""
    metrics = dict(ci_metrics(per_case.columns) if metrics is None else metrics)
    values = case_values(per_case)
    metrics = {k: v for k, v in metrics.items() if k in values.columns}
    columns = [f"{name}_{b}" for name in metrics.values() for b in ("ci_low", "ci_high")]
    models = list(pd.unique(values["model"]))
    table = pd.DataFrame(index=pd.Index(models, name="model"), columns=columns, dtype=float)
    alpha = (1.0 - level) / 2.0
    for model, group in values.groupby("model", sort=False):
        for metric, name in metrics.items():
            means = bootstrap_mean(group[metric], n_resamples, seed)
            if np.isfinite(means).any():
                table.loc[model, [f"{name}_ci_low", f"{name}_ci_high"]] = np.quantile(means, [alpha, 1.0 - alpha])
    return table


# ----------------------------------------------------------------------------- Pareto
def pareto_front(score: Sequence[float], cost: Sequence[float]) -> np.ndarray:
    """Boolean mask (object array: True/False, None where score or cost is unknown): a model is on
    the front when no other model with known values has a higher score at a lower or equal cost."""
    s, c = np.asarray(score, dtype=float), np.asarray(cost, dtype=float)
    known = np.isfinite(s) & np.isfinite(c)
    out = np.full(s.shape, None, dtype=object)
    for i in np.flatnonzero(known):
        out[i] = not bool(np.any(known & (s > s[i]) & (c <= c[i])))
    return out


def pareto_flags(comparison: pd.DataFrame, score: str = PARETO_SCORE,
                 costs: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Pareto flag columns for a ``model_comparison.csv`` table (same index): ``pareto_params`` and
    ``pareto_flops`` always (empty where the cost is unknown), ``pareto_latency`` and ``pareto_pam``
    (inference PAM) only where some model has that cost measured."""
    costs = dict(PARETO_COSTS if costs is None else costs)
    flags = pd.DataFrame(index=comparison.index)
    if score not in comparison.columns:
        return flags
    values = pd.to_numeric(comparison[score], errors="coerce")
    for flag, column in costs.items():
        cost = pd.to_numeric(comparison[column], errors="coerce") if column in comparison.columns else None
        if cost is None or not np.isfinite(cost.to_numpy(dtype=float)).any():
            if flag in OPTIONAL_PARETO:
                continue
            cost = pd.Series(np.nan, index=comparison.index)
        flags[flag] = pd.array(list(pareto_front(values, cost)), dtype="boolean")
    return flags


# ----------------------------------------------------------------------------- ranking
def _case_rank_matrix(values: pd.DataFrame, metrics: Mapping[str, bool]) -> tuple[np.ndarray, list[str], int]:
    """(cases x models) mean rank over ``metrics`` on the cases every model has, the models, and the
    number of metrics used. Ranks per case and metric: 1 = best, ties averaged."""
    models = list(pd.unique(values["model"]))
    used = [m for m in metrics if m in values.columns]
    per_metric = []
    common: pd.Index | None = None
    for metric in used:
        wide = _wide(values, metric).dropna()
        common = wide.index if common is None else common.intersection(wide.index)
        per_metric.append(wide)
    if not used or common is None or len(common) == 0:
        return np.zeros((0, len(models))), models, len(used)
    ranks = []
    for metric, wide in zip(used, per_metric):
        data = wide.loc[common].to_numpy(dtype=float)
        ranks.append(stats.rankdata(-data if metrics[metric] else data, method="average", axis=1))
    return np.mean(ranks, axis=0), models, len(used)


def brats_ranking(per_case: pd.DataFrame, metrics: Mapping[str, bool] | None = None,
                  n_resamples: int = N_BOOTSTRAP_RANKING, seed: int = BOOTSTRAP_SEED,
                  level: float = 0.95) -> pd.DataFrame:
    """``ranking.csv``: BraTS-style rank-then-aggregate ranking with its bootstrap stability.

    ``metrics`` maps a per-case metric to "higher is better" (default :func:`ranking_metrics`: Dice
    and HD95 of every region of the table; BraTS 2018-2023: WT, TC, ET). Only the cases that every model has a
    value for count (``n_cases``).
    Columns: ``rank`` (1 = best, ties averaged), ``mean_case_rank`` (the score: mean rank over cases
    and metrics), ``rank_stability`` (share of bootstrap resamples of the cases in which the model
    keeps its rank), ``rank_ci_low``/``rank_ci_high`` (percentile interval of its bootstrap rank).
    Sorted by rank.
    """
    values = case_values(per_case)
    metrics = ranking_metrics(per_case.columns) if metrics is None else metrics
    matrix, models, n_metrics = _case_rank_matrix(values, metrics)
    n_cases = matrix.shape[0]
    if n_cases == 0:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    score = matrix.mean(axis=0)
    rank = stats.rankdata(score, method="average")
    boot = np.concatenate([stats.rankdata(w @ matrix / n_cases, method="average", axis=1)
                           for w in _resample_weights(n_cases, n_resamples, seed)])
    alpha = (1.0 - level) / 2.0
    table = pd.DataFrame({
        "model": models, "rank": rank, "mean_case_rank": score, "n_cases": n_cases, "n_metrics": n_metrics,
        "rank_stability": (boot == rank).mean(axis=0),
        "rank_ci_low": np.quantile(boot, alpha, axis=0), "rank_ci_high": np.quantile(boot, 1.0 - alpha, axis=0),
    })
    return table.sort_values(["rank", "model"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- the comparison table
def add_comparison_statistics(comparison: pd.DataFrame, per_case: pd.DataFrame | None) -> pd.DataFrame:
    """``model_comparison.csv`` (a ``model`` column, one row per model) with the bootstrap CIs of the
    Dice means (:func:`bootstrap_ci`; empty without per-case rows) and the Pareto flags appended."""
    table = comparison.copy()
    table.index = comparison["model"].astype(str).to_numpy()
    metrics = ci_metrics(per_case.columns if per_case is not None else _CLASSIC_COLUMNS)
    ci_columns = [f"{name}_{b}" for name in metrics.values() for b in ("ci_low", "ci_high")]
    if per_case is not None and not per_case.empty:
        ci = bootstrap_ci(per_case)
        table = table.join(ci.reindex(columns=[c for c in ci_columns if c in ci.columns]))
    for column in ci_columns:
        if column not in table.columns:
            table[column] = np.nan
    table = table.join(pareto_flags(table))
    return table.reset_index(drop=True)
