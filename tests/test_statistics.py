"""Known-answer tests of metrics/statistics.py: Wilcoxon (against scipy) with Holm's correction,
bootstrap CIs, Pareto flags and the BraTS-style ranking, on hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from metrics import statistics as st


def per_case_rows(values: dict[str, list[float]], seeds=(24,), metric: str = "dice_wt", **fixed) -> pd.DataFrame:
    """model -> per-case values of ``metric`` (cases c0, c1, ...), the other region metrics constant."""
    base = {"dice_wt": 0.8, "dice_tc": 0.7, "dice_et": 0.6, "hd95_wt": 5.0, "hd95_tc": 6.0, "hd95_et": 7.0} | fixed
    rows = []
    for model, vals in values.items():
        for seed in seeds:
            for c, v in enumerate(vals):
                if np.isfinite(v):
                    rows.append({"model": model, "seed": seed, "fold": 0, "case_id": f"c{c}", **base, metric: v})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Holm
def test_holm_known_answer():
    # sorted: 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> monotone 0.06; NaN is not a hypothesis
    assert st.holm([0.01, 0.04, 0.03, np.nan]) == pytest.approx([0.03, 0.06, 0.06, np.nan], nan_ok=True)
    assert st.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert st.holm([0.02]) == pytest.approx([0.02])
    assert np.isnan(st.holm([np.nan, np.nan])).all() and st.holm([]).size == 0


# ----------------------------------------------------------------------------- Wilcoxon
@pytest.mark.parametrize("kind", ["exact", "ties", "large"])
def test_wilcoxon_matches_scipy(kind):
    rng = np.random.default_rng(3)
    n = 60 if kind == "large" else 12
    x = rng.normal(0.8, 0.05, n)
    y = x - rng.normal(0.02, 0.03, n)
    if kind == "ties":
        x, y = np.round(x, 2), np.round(y, 2)
        y[0] = x[0]  # a zero difference
    out = st.wilcoxon_paired(x, y)
    reference = stats.wilcoxon(x, y)  # scipy's defaults: zero_method="wilcox", two-sided, method="auto"
    assert out["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert out["statistic"] == pytest.approx(reference.statistic)
    assert out["n_cases"] == n and out["median_diff"] == pytest.approx(np.median(x - y))
    expected = {"exact": "exact", "ties": "exact permutation", "large": "normal approximation"}[kind]
    assert expected in out["test"]


def test_wilcoxon_small_n_zero_differences_and_nan_never_raise():
    same = st.wilcoxon_paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert np.isnan(same["p_value"]) and "all differences zero" in same["test"] and same["median_diff"] == 0
    few = st.wilcoxon_paired([0.5, 0.6, 0.7], [0.4, 0.6, 0.9])
    assert np.isnan(few["p_value"]) and "2 non-zero differences" in few["test"] and few["n_cases"] == 3
    empty = st.wilcoxon_paired([np.nan, 0.2], [0.1, np.nan])
    assert empty["n_cases"] == 0 and "no paired cases" in empty["test"] and np.isnan(empty["median_diff"])


def test_paired_tests_reference_matching_seeds_and_holm():
    # b is best; a loses on every case; c loses on 7 of 8; d has only cases c0..c2 (too few)
    base = np.linspace(0.70, 0.84, 8)
    table = per_case_rows({
        "a": list(base - np.linspace(0.01, 0.08, 8)),
        "b": list(base),
        "c": list(base - np.r_[np.linspace(0.01, 0.07, 7), -0.01]),
        "d": [0.1, 0.2, 0.3] + [np.nan] * 5,
    })
    # a second seed of b, shifted: a case's value is its mean over the seeds
    second = table[table.model == "b"].assign(seed=42, dice_wt=lambda df: df.dice_wt + 0.02)
    table = pd.concat([table, second], ignore_index=True)
    tests = st.paired_tests(table)
    assert list(tests.columns) == st.TEST_COLUMNS
    assert set(tests["reference_model"]) == {"b"} and "b" not in set(tests["model"])
    # metrics present in the table, in order (no NSD columns here)
    assert list(dict.fromkeys(tests["metric"])) == ["dice_mean", "dice_wt", "dice_tc", "dice_et", "hd95_wt",
                                                     "hd95_tc", "hd95_et"]
    wt = tests[tests.metric == "dice_wt"].set_index("model")
    b_mean = base + 0.01
    ref_a = stats.wilcoxon(base - np.linspace(0.01, 0.08, 8), b_mean)
    assert wt.loc["a", "p_value"] == pytest.approx(ref_a.pvalue)
    assert wt.loc["a", "median_diff"] == pytest.approx(np.median(-np.linspace(0.01, 0.08, 8) - 0.01))
    assert wt.loc["d", "n_cases"] == 3 and np.isnan(wt.loc["d", "p_value"]) and np.isnan(wt.loc["d", "p_holm"])
    assert list(wt.loc[["a", "c", "d"], "p_holm"]) == pytest.approx(
        list(st.holm(wt.loc[["a", "c", "d"], "p_value"])), nan_ok=True)
    # constant metrics: every difference is zero -> NaN with the reason
    hd = tests[tests.metric == "hd95_tc"]
    assert hd["p_value"].isna().all() and hd["test"].str.contains("all differences zero").all()


def test_paired_tests_on_empty_or_single_model_tables():
    assert list(st.paired_tests(per_case_rows({"a": [0.5, 0.6]})).columns) == st.TEST_COLUMNS
    assert st.paired_tests(per_case_rows({"a": [0.5, 0.6]})).empty


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_the_mean_and_is_reproducible():
    rng = np.random.default_rng(0)
    table = per_case_rows({"a": list(rng.uniform(0.5, 0.9, 30)), "b": list(rng.uniform(0.6, 1.0, 30))})
    ci = st.bootstrap_ci(table, n_resamples=2000)
    means = st.case_values(table).groupby("model")["dice_mean"].mean()
    for model in ("a", "b"):
        low, high = ci.loc[model, ["test_dice_mean_ci_low", "test_dice_mean_ci_high"]]
        assert low < means[model] < high
        assert high - low < 0.2
    pd.testing.assert_frame_equal(ci, st.bootstrap_ci(table, n_resamples=2000))
    assert not ci.equals(st.bootstrap_ci(table, n_resamples=2000, seed=1))
    alone = st.bootstrap_ci(table[table.model == "b"], n_resamples=2000)
    pd.testing.assert_frame_equal(alone.loc[["b"]], ci.loc[["b"]])  # other models never move a model's CI
    # percentile interval of the resampled means, known answer on a tiny sample
    means_b = st.bootstrap_mean([0.0, 1.0], n_resamples=4000, seed=0)
    assert set(np.unique(means_b)) <= {0.0, 0.5, 1.0} and np.mean(means_b == 0.5) == pytest.approx(0.5, abs=0.05)


# ----------------------------------------------------------------------------- Pareto
def test_pareto_flags_hand_made_table():
    comparison = pd.DataFrame({
        "model": ["small", "mid", "mid_twin", "big_worse", "unknown"],
        "test_dice_mean_mean": [0.80, 0.85, 0.85, 0.84, 0.90],
        "params_mean": [1e6, 2e6, 2e6, 3e6, np.nan],
        "flops_mean": [5e9, 1e9, 2e9, 3e9, 1e9],
        "latency_ms_mean": [np.nan] * 5,
    }).set_index("model")
    flags = st.pareto_flags(comparison)
    assert list(flags.columns) == ["pareto_params", "pareto_flops"]  # latency never measured, no PAM column
    # params: big_worse is beaten by mid (higher Dice, fewer params); equal models both stay; unknown -> NA
    assert flags["pareto_params"].tolist()[:4] == [True, True, True, False]
    assert flags["pareto_params"].isna().tolist() == [False, False, False, False, True]
    # flops: 'unknown' (0.90 at 1 GFLOP) beats everything with >= 1 GFLOP
    assert flags["pareto_flops"].tolist() == [False, False, False, False, True]
    with_latency = st.pareto_flags(comparison.assign(latency_ms_mean=[3.0, 2.0, np.nan, 1.0, np.nan]))
    assert with_latency["pareto_latency"].tolist()[:2] == [False, True]
    assert with_latency["pareto_latency"].tolist()[3] is True and pd.isna(with_latency["pareto_latency"].iloc[2])


def test_add_comparison_statistics_columns():
    table = per_case_rows({"a": [0.5, 0.6, 0.7], "b": [0.6, 0.7, 0.9]})
    comparison = pd.DataFrame({"model": ["a", "b"], "test_dice_mean_mean": [0.6, 0.7], "params_mean": [1.0, 2.0],
                               "flops_mean": [1.0, 1.0]})
    out = st.add_comparison_statistics(comparison, table)
    assert list(out["model"]) == ["a", "b"]
    for column in ("test_dice_mean_ci_low", "test_dice_mean_ci_high", "test_dice_wt_ci_low", "pareto_params",
                   "pareto_flops"):
        assert column in out.columns, column
    assert out["pareto_params"].tolist() == [True, True] and out["pareto_flops"].tolist() == [False, True]
    assert st.add_comparison_statistics(comparison, None)["test_dice_mean_ci_low"].isna().all()


# ----------------------------------------------------------------------------- ranking
def test_brats_ranking_hand_made_with_ties():
    metrics = {"dice_wt": True, "hd95_wt": False}
    table = pd.DataFrame([
        # case c0: Dice A .9 > B = C .8 -> 1, 2.5, 2.5; HD95 B 3 < A = C 5 -> 2.5, 1, 2.5
        {"model": "A", "case_id": "c0", "dice_wt": 0.9, "hd95_wt": 5.0},
        {"model": "B", "case_id": "c0", "dice_wt": 0.8, "hd95_wt": 3.0},
        {"model": "C", "case_id": "c0", "dice_wt": 0.8, "hd95_wt": 5.0},
        # case c1: Dice B .9 > A = C .7 -> 2.5, 1, 2.5; HD95 all 2 -> 2, 2, 2
        {"model": "A", "case_id": "c1", "dice_wt": 0.7, "hd95_wt": 2.0},
        {"model": "B", "case_id": "c1", "dice_wt": 0.9, "hd95_wt": 2.0},
        {"model": "C", "case_id": "c1", "dice_wt": 0.7, "hd95_wt": 2.0},
        # a case of A alone is not ranked (every model needs a value)
        {"model": "A", "case_id": "c2", "dice_wt": 0.1, "hd95_wt": 90.0},
    ])
    ranking = st.brats_ranking(table, metrics, n_resamples=500).set_index("model")
    assert list(ranking.index) == ["B", "A", "C"]
    assert ranking["mean_case_rank"].to_dict() == pytest.approx({"A": 2.0, "B": 1.625, "C": 2.375})
    assert ranking["rank"].to_dict() == {"B": 1.0, "A": 2.0, "C": 3.0}
    assert (ranking["n_cases"] == 2).all() and (ranking["n_metrics"] == 2).all()
    assert ((ranking["rank_stability"] >= 0) & (ranking["rank_stability"] <= 1)).all()
    assert (ranking["rank_ci_low"] <= ranking["rank"]).all() and (ranking["rank"] <= ranking["rank_ci_high"]).all()
    # resampling c0 twice ties A and B (1.75 each): the ranks move, stability < 1
    assert ranking.loc["B", "rank_stability"] < 1.0
    # identical models share the averaged rank
    twin = pd.concat([table, table[table.model == "B"].assign(model="B2")], ignore_index=True)
    assert st.brats_ranking(twin, metrics, n_resamples=50).set_index("model").loc[["B", "B2"], "rank"].tolist() == [
        1.5, 1.5]


def test_brats_ranking_stable_winner_and_default_metrics():
    rng = np.random.default_rng(1)
    rows = []
    for c in range(20):
        for m, (model, shift) in enumerate({"good": 0.2, "bad": 0.0}.items()):
            d = rng.uniform(0.5, 0.7, 3) + shift
            rows.append({"model": model, "seed": 24, "fold": 0, "case_id": f"c{c}", "dice_wt": d[0], "dice_tc": d[1],
                         "dice_et": d[2], "hd95_wt": 10 - 5 * shift, "hd95_tc": 10.0 - m, "hd95_et": 4.0})
    ranking = st.brats_ranking(pd.DataFrame(rows), n_resamples=200).set_index("model")
    assert ranking.loc["good", "rank"] == 1 and ranking.loc["good", "rank_stability"] == 1.0
    assert ranking.loc["good", "n_metrics"] == 6 and ranking.loc["good", "n_cases"] == 20
    assert list(st.brats_ranking(pd.DataFrame(columns=["model", "case_id"])).columns) == st.RANKING_COLUMNS
