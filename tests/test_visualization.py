"""Tests of the visualization package on small synthetic run folders and volumes."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch

import visualization.figures as figures_module
from visualization import (
    MergeError,
    compute_gradcam,
    make_all_plots,
    merge_runs,
    modality_weight_summary,
    plot_gradcam,
    plot_learning_curves,
    plot_modality_contributions,
    plot_model_comparison,
    plot_parameter_efficiency,
    plot_per_case_dice,
    plot_segmentation_slices,
    plot_stage_wise_pam,
    summarize_runs,
    tumour_slices,
    write_interactive_3d_analysis,
    write_unit_gradcam,
)
from visualization.__main__ import main as visualization_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = ("unet3d_xs", "dualbranch_01_unet_xs")


# ------------------------------------------------------------------ synthetic run tables


def results_table(models=MODELS, seeds=(24, 42), pam: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for m, model in enumerate(models):
        for seed in seeds:
            dice = np.clip(0.6 + 0.1 * m + rng.normal(0, 0.02, 3), 0, 1)
            pam_values = [800.0 + 100 * m, 10.0, 300.0 + 50 * m, 5.0] if pam else [np.nan] * 4
            rows.append(
                dict(
                    model=model, seed=seed, fold=0,
                    test_dice_wt=dice[0], test_dice_tc=dice[1], test_dice_et=dice[2],
                    test_dice_mean=dice.mean(),
                    test_hd95_wt=10.0 + m, test_hd95_tc=12.0 + seed / 100, test_hd95_et=373.13,
                    params=1.5e6 * (m + 1), flops=2.0e10 * (m + 1),
                    pam_train_mb=pam_values[0], pam_train_mb_std=pam_values[1],
                    pam_inference_mb=pam_values[2], pam_inference_mb_std=pam_values[3],
                    latency_ms=20.0 + m if pam else np.nan, latency_ms_std=1.0 if pam else np.nan,
                    best_epoch=3, best_val_dice=0.7,
                )
            )  # fmt: skip
    return pd.DataFrame(rows)


def epochs_table(models=MODELS, seeds=(24, 42), n_epochs: int = 4) -> pd.DataFrame:
    rows = []
    for m, model in enumerate(models):
        for s, seed in enumerate(seeds):
            for epoch in range(1, n_epochs + 1):
                dice = 0.2 * epoch / n_epochs + 0.1 * m + 0.01 * s
                rows.append(
                    dict(
                        model=model, seed=seed, fold=0, epoch=epoch, train_loss=1.0 / epoch + 0.01 * s,
                        val_dice_wt=dice, val_dice_tc=dice, val_dice_et=dice, val_dice_mean=dice,
                        lr=1e-3, epoch_time_s=2.0,
                    )
                )  # fmt: skip
    return pd.DataFrame(rows)


def modality_table(models=("quadbranch_4modal_attention_unet_s",), seeds=(24, 42)) -> pd.DataFrame:
    weights = {"flair": 0.4, "t1": 0.1, "t1ce": 0.3, "t2": 0.2}  # deliberately not in canonical order
    return pd.DataFrame(
        [
            dict(model=model, seed=seed, fold=0, modality=mod, weight_mean=w + 0.01 * s, weight_std=0.05)
            for model in models
            for s, seed in enumerate(seeds)
            for mod, w in weights.items()
        ]
    )


def stage_table(pam: bool = True) -> pd.DataFrame:
    stages = ["encoder1", "encoder2", "bottleneck", "decoder1", "head"]
    return pd.DataFrame(
        [
            dict(model=model, stage=stage, pam_train_mb=(100.0 * (i + 1) if pam else np.nan),
                 pam_inference_mb=(40.0 * (i + 1) if pam else np.nan))
            for model in MODELS
            for i, stage in enumerate(stages)
        ]
    )  # fmt: skip


def per_case_table(models=MODELS, seeds=(24,), nsd: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    table = pd.DataFrame(
        [
            dict(model=model, seed=seed, fold=0, case_id=f"BraTS2021_{c:05d}",
                 dice_wt=rng.uniform(0.5, 1), dice_tc=rng.uniform(0.3, 1), dice_et=rng.uniform(0, 1),
                 hd95_wt=5.0, hd95_tc=7.0, hd95_et=9.0)
            for model in models
            for seed in seeds
            for c in range(6)
        ]
    )  # fmt: skip
    if nsd:
        table = table.assign(nsd_wt=rng.uniform(0.4, 1, len(table)), nsd_tc=rng.uniform(0.3, 1, len(table)),
                             nsd_et=rng.uniform(0.2, 1, len(table)))
    return table


def assert_png(path: Path, min_kb: float = 10.0) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_kb * 1024, f"{path} is only {len(data)} bytes"
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"


@pytest.fixture
def drawn(monkeypatch) -> dict[str, Figure]:
    """The figures the chart functions save, by output file name (each is still written as usual)."""
    figures: dict[str, Figure] = {}
    original = figures_module.save_figure

    def recording(fig: Figure, path, *args, **kwargs) -> Path:
        figures[Path(path).name] = fig
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(figures_module, "save_figure", recording)
    return figures


def x_centre(artist) -> float:
    """Mean x of a stripplot point cloud (PathCollection) or of a box (PathPatch), in data units."""
    xy = artist.get_offsets() if isinstance(artist, PathCollection) else artist.get_path().vertices
    return float(np.asarray(xy, dtype=float)[:, 0].mean())


# ------------------------------------------------------------------ summary


def test_summarize_runs_known_values():
    df = results_table()
    summary = summarize_runs(df)
    assert list(summary.index) == list(MODELS)
    assert (summary["n_runs"] == 2).all()
    first = df[df["model"] == MODELS[0]]
    assert summary.loc[MODELS[0], "test_dice_wt_mean"] == pytest.approx(first["test_dice_wt"].mean())
    assert summary.loc[MODELS[0], "test_hd95_tc_std"] == pytest.approx(first["test_hd95_tc"].std(ddof=1))
    assert "seed_mean" not in summary.columns and "fold_mean" not in summary.columns
    single = summarize_runs(results_table(models=MODELS[:1], seeds=(24,), pam=False))
    assert np.isnan(single["test_dice_mean_std"]).all() and np.isnan(single["pam_train_mb_mean"]).all()
    # A model_comparison.csv-style frame passes through unchanged.
    again = summarize_runs(summary.reset_index())
    pd.testing.assert_frame_equal(again[summary.columns], summary, check_names=False)


# ------------------------------------------------------------------ charts


# Two models x two seeds, with PAM (test_make_all_plots_full_run) and with PAM and latency all NaN
# (test_make_all_plots_cpu_run_skips_what_is_missing), are drawn through make_all_plots.
def test_results_charts_single_model_single_seed(tmp_path):
    df = results_table(MODELS[:1], (24,))
    assert_png(plot_model_comparison(df, tmp_path / "model_comparison_chart.png"))
    assert_png(plot_parameter_efficiency(df, tmp_path / "parameter_efficiency.png"))


def test_learning_curves_single_run(tmp_path):
    df = epochs_table(MODELS[:1], (24,)).assign(val_dice_mean=np.nan)  # no validation values at all
    assert_png(plot_learning_curves(df, tmp_path / "learning_curves.png"))


def test_interactive_html_is_offline_and_names_models(tmp_path):
    path = write_interactive_3d_analysis(results_table(), tmp_path / "interactive_3d_analysis.html")
    text = path.read_text(encoding="utf-8")
    assert len(text) > 1_000_000, "plotly.js bundle not inlined"
    assert "plotly.js v" in text or "Plotly.newPlot" in text
    assert not re.search(r"<script[^>]*\bsrc\s*=", text), "external script reference"
    for model in MODELS:
        assert model in text
    # PAM not measured: hover says so; FLOPs missing too -> latency axis; neither -> clear error.
    no_gpu = results_table(pam=False)
    text = write_interactive_3d_analysis(no_gpu, tmp_path / "a.html").read_text(encoding="utf-8")
    assert "PAM train not measured" in text
    with pytest.raises(ValueError, match="neither FLOPs nor latency"):
        write_interactive_3d_analysis(no_gpu.assign(flops=np.nan), tmp_path / "b.html")


def test_modality_weight_summary_known_answer():
    df = modality_table(seeds=(24, 42))  # flair: weight_mean 0.40 and 0.41, weight_std 0.05 each
    means, spread = modality_weight_summary(df)
    assert list(means.index) == ["t1", "t1ce", "t2", "flair"]  # canonical order, not file order
    assert list(means.columns) == ["quadbranch_4modal_attention_unet_s"]
    assert means.iloc[:, 0].to_numpy() == pytest.approx([0.105, 0.305, 0.205, 0.405])
    assert spread.loc["flair"].iloc[0] == pytest.approx(np.sqrt(0.05**2 + 0.005**2))
    _, single = modality_weight_summary(modality_table(seeds=(24,)))
    assert single.to_numpy() == pytest.approx(0.05)


def test_modality_contributions_two_models_one_seed(tmp_path):
    df = modality_table(models=("quadbranch_4modal_attention_unet_s", "other_attention_s"), seeds=(24,))
    assert_png(plot_modality_contributions(df, tmp_path / "modality_contributions.png"))


def test_stage_wise_pam_without_gpu_and_bad_per_case(tmp_path):
    with pytest.raises(ValueError, match="no measured value"):
        plot_stage_wise_pam(stage_table(pam=False), tmp_path / "x.png")
    with pytest.raises(ValueError, match="lacks column"):
        plot_per_case_dice(per_case_table().drop(columns="dice_et"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_per_case_chart_with_nsd_panel(tmp_path, drawn):
    assert_png(plot_per_case_dice(per_case_table(), tmp_path / "dice.png"))
    assert [ax.get_ylabel() for ax in drawn["dice.png"].axes] == ["Per-case test Dice"]
    table = per_case_table(nsd=True)
    assert_png(plot_per_case_dice(table, tmp_path / "both.png"))
    panels = drawn["both.png"].axes
    assert [ax.get_ylabel() for ax in panels] == ["Per-case test Dice", "Per-case test NSD"]
    for ax, metric in zip(panels, ("dice", "nsd")):
        columns = [f"{metric}_{r}" for r in ("wt", "tc", "et")]
        # left to right: model 0 WT, TC, ET (dodged), model 1 WT, TC, ET
        clouds = sorted((c for c in ax.collections if isinstance(c, PathCollection)), key=x_centre)
        boxes = sorted((p for p in ax.patches if isinstance(p, PathPatch)), key=x_centre)
        assert len(clouds) == len(boxes) == len(MODELS) * len(columns)
        for cloud, box, (m, column) in zip(clouds, boxes, itertools.product(range(len(MODELS)), columns)):
            expected = table.loc[table["model"] == MODELS[m], column].to_numpy()
            assert round(x_centre(cloud)) == round(x_centre(box)) == m
            assert np.sort(np.asarray(cloud.get_offsets())[:, 1]) == pytest.approx(np.sort(expected))
            box_y = box.get_path().vertices[:, 1]
            assert [box_y.min(), box_y.max()] == pytest.approx(np.percentile(expected, [25, 75]))


def pareto_front_drawn(fig: Figure) -> tuple[list[float], list[float], list[str]]:
    """x and y data of the chart's Pareto staircase, and the model labels it marks "(Pareto)"."""
    (ax,) = fig.axes
    (line,) = [line for line in ax.get_lines() if line.get_label() == "Pareto front (parameters)"]
    assert line.get_drawstyle() == "steps-post"
    marked = [t.get_text().removesuffix(" (Pareto)") for t in ax.texts if t.get_text().endswith(" (Pareto)")]
    return list(line.get_xdata()), list(line.get_ydata()), marked


def test_efficiency_and_comparison_charts_with_ci_and_pareto(tmp_path, drawn):
    summary = summarize_runs(results_table(models=("a", "b", "c"))).reset_index(names="model")
    dice = summary["test_dice_mean_mean"]
    params = summary["params_mean"]
    for region in ("wt", "tc", "et", "mean"):
        summary[f"test_dice_{region}_ci_low"] = summary[f"test_dice_{region}_mean"] - 0.03
        summary[f"test_dice_{region}_ci_high"] = summary[f"test_dice_{region}_mean"] + 0.02
    assert dice.is_monotonic_increasing and params.is_monotonic_increasing  # every model on the front
    assert_png(plot_parameter_efficiency(summary, tmp_path / "parameter_efficiency.png"))
    x, y, marked = pareto_front_drawn(drawn["parameter_efficiency.png"])
    assert (x, y, marked) == (pytest.approx(params.tolist()), pytest.approx(dice.tolist()), ["a", "b", "c"])

    assert_png(plot_model_comparison(summary, tmp_path / "model_comparison_chart.png"))
    dice_panel = drawn["model_comparison_chart.png"].axes[0]
    assert dice_panel.get_ylabel() == "Dice" and "95% bootstrap CI" in dice_panel.get_title()
    assert [t.get_text() for t in dice_panel.get_xticklabels()] == ["a", "b", "c"]
    bars = [c for c in dice_panel.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == ["WT", "TC", "ET", "Mean"]
    for region, bar in zip(("wt", "tc", "et", "mean"), bars):
        mean = summary[f"test_dice_{region}_mean"].to_numpy()
        assert [rect.get_height() for rect in bar.patches] == pytest.approx(mean)
        (segments,) = bar.errorbar.lines[2]  # one vertical segment (x, low) -> (x, high) per bar
        ends = np.array([[seg[0, 1], seg[1, 1]] for seg in segments.get_segments()])
        assert ends == pytest.approx(np.column_stack([mean - 0.03, mean + 0.02]))

    worse = summary.assign(test_dice_mean_mean=dice[::-1].to_numpy())  # only the smallest on the front
    assert_png(plot_parameter_efficiency(worse, tmp_path / "front_of_one.png"))
    x, y, marked = pareto_front_drawn(drawn["front_of_one.png"])
    assert (x, y, marked) == (pytest.approx([params[0]]), pytest.approx([dice.iloc[-1]]), ["a"])


def test_bad_tables_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['test_hd95_wt'\]"):
        plot_model_comparison(results_table().drop(columns="test_hd95_wt"), tmp_path / "x.png")
    with pytest.raises(ValueError, match="no rows"):
        plot_learning_curves(epochs_table().iloc[:0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="params must be positive"):
        plot_parameter_efficiency(results_table().assign(params=0), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ run folder


ALL_OUTPUTS = {
    "learning_curves.png",
    "model_comparison_chart.png",
    "parameter_efficiency.png",
    "interactive_3d_analysis.html",
    "per_case_dice.png",
    "modality_contributions.png",
    "stage_wise_pam.png",
}


def write_run_folder(run_dir: Path, pam: bool = True, modality: bool = True) -> dict[str, bytes]:
    run_dir.mkdir()
    results = results_table(pam=pam)
    tables = {
        "integrated_experiment_results.csv": results,
        "all_epochs_results.csv": epochs_table(),
        "model_comparison.csv": summarize_runs(results).reset_index(names="model"),
        "stage_wise_pam_results.csv": stage_table(pam=pam),
        "per_case_results.csv": per_case_table(),
    }
    if modality:
        tables["modality_contributions.csv"] = modality_table()
    for name, df in tables.items():
        df.to_csv(run_dir / name, index=False)
    return {name: (run_dir / name).read_bytes() for name in tables}


def test_make_all_plots_full_run(tmp_path):
    run = tmp_path / "run"
    before = write_run_folder(run)
    written = make_all_plots(run, strict=True)
    assert {p.name for p in written} == ALL_OUTPUTS
    assert all(p.parent == run and p.stat().st_size > 10_000 for p in written)
    assert {name: (run / name).read_bytes() for name in before} == before, "a CSV was changed"


def test_make_all_plots_cpu_run_skips_what_is_missing(tmp_path):
    run = tmp_path / "run"
    write_run_folder(run, pam=False, modality=False)
    (run / "per_case_results.csv").unlink()
    (run / "all_epochs_results.csv").write_text("")  # truncated file: skipped, no crash
    written = {p.name for p in make_all_plots(run)}
    assert written == ALL_OUTPUTS - {
        "modality_contributions.png",
        "stage_wise_pam.png",
        "per_case_dice.png",
        "learning_curves.png",
    }
    assert not (run / "modality_contributions.png").exists()


def test_make_all_plots_falls_back_to_model_comparison(tmp_path):
    run = tmp_path / "run"
    write_run_folder(run)
    for name in (
        "integrated_experiment_results.csv",
        "all_epochs_results.csv",
        "per_case_results.csv",
        "modality_contributions.csv",
        "stage_wise_pam_results.csv",
    ):
        (run / name).unlink()
    written = {p.name for p in make_all_plots(run)}
    assert written == {
        "model_comparison_chart.png",
        "parameter_efficiency.png",
        "interactive_3d_analysis.html",
    }
    with pytest.raises(ValueError, match="not a directory"):
        make_all_plots(tmp_path / "missing")


def test_make_all_plots_empty_folder(tmp_path):
    assert make_all_plots(tmp_path) == []


def test_make_all_plots_malformed_table_warns_or_raises(tmp_path, caplog):
    per_case_table().drop(columns="dice_et").to_csv(tmp_path / "per_case_results.csv", index=False)
    with caplog.at_level("WARNING", logger="visualization.charts"):
        assert make_all_plots(tmp_path) == []
    assert "per_case_dice.png" in caplog.text and "dice_et" in caplog.text
    with pytest.raises(ValueError, match="lacks column"):
        make_all_plots(tmp_path, strict=True)


# ------------------------------------------------------------------ merged runs


def write_split_run(run_dir: Path, models, seeds=(24, 42), test_cases=range(6)) -> Path:
    """A fake run folder: results, per-case and epoch rows of ``models``, and its splits.json."""
    run_dir.mkdir(parents=True)
    results_table(models=models, seeds=seeds).to_csv(run_dir / "integrated_experiment_results.csv", index=False)
    per_case_table(models=models, seeds=seeds, nsd=True).to_csv(run_dir / "per_case_results.csv", index=False)
    epochs_table(models=models, seeds=seeds).to_csv(run_dir / "all_epochs_results.csv", index=False)
    stage_table().query("model in @models").to_csv(run_dir / "stage_wise_pam_results.csv", index=False)
    test = [f"BraTS2021_{c:05d}" for c in test_cases]
    splits = {str(s): {"seed": s, "scheme": "holdout", "folds": [{"fold": 0, "train": ["x"], "val": ["y"],
                                                                  "test": test}]} for s in seeds}
    (run_dir / "splits.json").write_text(json.dumps(splits))
    (run_dir / "config.json").write_text("{}")
    return run_dir


def test_merge_runs_writes_comparison_statistics_ranking_and_charts(tmp_path, capsys):
    first = write_split_run(tmp_path / "run_a", MODELS[:1])
    second = write_split_run(tmp_path / "run_b", MODELS[1:])
    out = tmp_path / "merged"
    assert visualization_main([str(first), str(second), "--output", str(out)]) == 0
    assert "merged 2 run folders" in capsys.readouterr().out
    results = pd.read_csv(out / "integrated_experiment_results.csv")
    assert sorted(results["model"].unique()) == sorted(MODELS) and len(results) == 4
    assert set(results["source_run"]) == {str(first), str(second)}
    assert len(pd.read_csv(out / "per_case_results.csv")) == 2 * len(per_case_table(MODELS[:1], (24, 42)))
    comparison = pd.read_csv(out / "model_comparison.csv")
    assert list(comparison["model"]) == list(MODELS)
    assert {"test_dice_mean_ci_low", "test_dice_mean_ci_high", "pareto_params", "pareto_flops"} <= set(comparison)
    tests = pd.read_csv(out / "statistical_tests.csv")
    assert {"dice_mean", "nsd_wt"} <= set(tests["metric"]) and (tests["n_cases"] == 6).all()
    assert len(pd.read_csv(out / "ranking.csv")) == 2
    assert json.loads((out / "merged_runs.json").read_text())["runs"] == [str(first), str(second)]
    for chart in ("model_comparison_chart.png", "parameter_efficiency.png", "per_case_dice.png",
                  "learning_curves.png", "stage_wise_pam.png"):
        assert_png(out / chart)
    stage = pd.read_csv(out / "stage_wise_pam_results.csv")
    assert len(stage) == len(stage_table()), "each model's stage rows once"


def test_merge_runs_refuses_duplicates_and_different_splits(tmp_path, capsys):
    first = write_split_run(tmp_path / "run_a", MODELS)
    again = write_split_run(tmp_path / "run_b", MODELS[1:], seeds=(42, 7))
    with pytest.raises(MergeError, match=f"model {MODELS[1]} seed 42 fold 0 is in both"):
        merge_runs([first, again], tmp_path / "out")
    assert visualization_main([str(first), str(again), "--output", str(tmp_path / "out")]) == 2
    assert "is in both" in capsys.readouterr().err
    other_split = write_split_run(tmp_path / "run_c", ("unet3d_s",), seeds=(24,), test_cases=range(1, 7))
    with pytest.raises(MergeError, match="seed 24: the test split differs"):
        merge_runs([first, other_split], tmp_path / "out")
    with pytest.raises(MergeError, match="one of the run folders"):
        merge_runs([first], first)
    assert not (tmp_path / "out").exists(), "nothing is written before the checks pass"
    with pytest.raises(MergeError, match="is not a directory"):
        merge_runs([first, tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MergeError, match="no finished units"):
        merge_runs([first, tmp_path / "empty"], tmp_path / "out")


# ------------------------------------------------------------------ Grad-CAM


def test_gradcam_of_a_tiny_model_writes_a_png(tmp_path):
    import torch

    from utils.experiment_utils import get_model

    torch.manual_seed(0)
    model = get_model("unet3d_xs", "3d", (32, 32, 32))
    image, label = phantom_case((24, 40, 36))
    result = compute_gradcam(model, image[:2], label, dim="3d", patch=(32, 32, 32))
    assert result["layer"] == "decoder1" and result["region"] == "et"
    assert result["cam"].shape == (32, 32, 32) and 0.0 <= result["cam"].min() and result["cam"].max() <= 1.0
    assert (result["label"] > 0).sum() == (label > 0).sum(), "the crop holds the whole tumour"
    assert_png(plot_gradcam(result, tmp_path / "cam.png", title="unet3d_xs"), min_kb=5)
    assert not any(model.decoder1._forward_hooks.values()), "the caller's model keeps no hook"
    # the run's entry point: a checkpoint's weights, the case from the cache
    cache = SimpleNamespace(image=lambda case: np.concatenate([image, image]), label=lambda case: label)
    cfg = SimpleNamespace(dim="3d", spatial_patch=(32, 32, 32))
    path = write_unit_gradcam("unet3d_xs", model.state_dict(), cfg, cache, "case0", tmp_path / "gradcam_u.png")
    assert_png(path, min_kb=5)


def test_gradcam_peaks_where_the_target_regions_evidence_is():
    """Known answer on a hand-made network: input channel 0 marks a blob R, channel 1 a blob S elsewhere; the stage
    before the head copies them as features; the head makes ET (class 3) from feature 0 only and edema (class 2)
    from feature 1 only. ET's Grad-CAM is feature 0 (all of R, nothing at S); WT's (ET and edema) covers both."""
    import torch
    import torch.nn as nn

    class Evidence(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Conv3d(2, 2, 1, bias=False)
            self.head = nn.Conv3d(2, 4, 1)
            with torch.no_grad():
                self.features.weight.copy_(torch.eye(2).view(2, 2, 1, 1, 1))
                self.head.weight.zero_()
                self.head.bias.copy_(torch.tensor([0.0, -10.0, -2.0, -2.0]))
                self.head.weight[3, 0] = 5.0  # ET logit: 5 x feature 0 - 2
                self.head.weight[2, 1] = 5.0  # edema logit: 5 x feature 1 - 2

        def forward(self, x):
            return self.head(self.features(x))

    shape = (16, 16, 16)
    r, s = np.zeros(shape, bool), np.zeros(shape, bool)
    r[3:7, 4:9, 3:8] = True
    s[9:14, 8:13, 10:14] = True
    image = np.stack([r, s]).astype(np.float32)
    label = np.where(r, 3, np.where(s, 2, 0)).astype(np.uint8)
    model = Evidence()
    et = compute_gradcam(model, image, label, dim="3d", patch=shape)
    assert et["region"] == "et" and et["layer"] == "features"
    np.testing.assert_array_equal(et["pred"], label)
    np.testing.assert_allclose(et["cam"][r], 1.0, atol=1e-5)  # the peak: all of R
    assert et["cam"][~r].max() < 1e-5, "nothing outside R, S included"
    wt = compute_gradcam(model, image, label, dim="3d", patch=shape, region="wt")
    assert wt["cam"][r].min() > 0.3 and wt["cam"][s].min() > 0.3 and wt["cam"][~(r | s)].max() < 1e-5
    assert wt["cam"].max() == pytest.approx(1.0)


def test_gradcam_failure_in_a_run_only_warns(tmp_path, caplog):
    """A figure that fails (here Grad-CAM reading a broken cache) is a warning; so is any callback that
    raises: the loop's notify never lets one cost the run."""
    from experiment.run_folder import RunFolder, UnitKey
    from models import get_model
    from run.callbacks import RunCallbacks, notify
    from visualization import ChartCallbacks

    def broken(case_id):
        raise OSError("injected")

    state = SimpleNamespace(cfg=SimpleNamespace(dim="3d", spatial_patch=(32, 32, 32), gradcam=True, seeds=[42]),
                            cache=SimpleNamespace(image=broken, label=broken),
                            ctx=SimpleNamespace(device="cpu", is_main=True), run=RunFolder(tmp_path),
                            callbacks=[ChartCallbacks()])
    result = SimpleNamespace(best_state=get_model("unet3d_xs", "3d", (32, 32, 32)).state_dict())
    evaluation = SimpleNamespace(first_prediction=("case0", np.zeros((4, 4, 4), np.uint8)))
    with caplog.at_level("WARNING"):
        notify(state, "on_unit_end", UnitKey("unet3d_xs", 24, 0), result, evaluation)
    assert "Grad-CAM of unet3d_xs_seed_24 failed" in caplog.text and "injected" in caplog.text
    assert not list(tmp_path.glob("gradcam_*.png"))

    class Exploding(RunCallbacks):
        def on_run_end(self, state):
            raise RuntimeError("boom")

    state.callbacks = [Exploding()]
    with caplog.at_level("WARNING"):
        notify(state, "on_run_end")
    assert "Exploding.on_run_end failed: RuntimeError: boom" in caplog.text


# ------------------------------------------------------------------ segmentation slices


def phantom_case(shape=(20, 32, 32)):
    """Image with a bright sphere; label: ET rim / NCR core / ED shell on slices 6..13."""
    z, y, x = np.indices(shape)
    r = np.sqrt((z - 10) ** 2 + (y - 16) ** 2 + (x - 16) ** 2)
    label = np.zeros(shape, np.uint8)
    label[r < 4] = 2
    label[r < 3] = 3
    label[r < 1.5] = 1
    image = np.stack([np.exp(-r / 8) * c for c in (1.0, 2.0, 3.0, 4.0)]).astype(np.float32)
    return image, label


def test_tumour_slices_known_answer():
    _, label = phantom_case()
    fg = np.flatnonzero(label.any(axis=(1, 2)))
    assert (fg.min(), fg.max()) == (7, 13)
    assert tumour_slices(label) == [9, 10, 11]  # 25/50/75 % of slices 7..13
    assert tumour_slices(np.zeros((9, 4, 4), np.uint8)) == [4]
    single = np.zeros((9, 4, 4), np.uint8)
    single[2, 1, 1] = 3
    assert tumour_slices(single) == [2]


def test_plot_segmentation_slices_outputs(tmp_path):
    image, label = phantom_case()
    wrong = np.roll(label, 3, axis=2)
    preds = {"perfect": label.copy(), "shifted": wrong, "empty": np.zeros_like(label)}
    path = plot_segmentation_slices(
        image, label, preds, tmp_path / "case.png", modality_names=("t1", "t1ce", "t2", "flair"), title="case"
    )
    assert_png(path, min_kb=15)
    small = plot_segmentation_slices(image, label, {}, tmp_path / "gt_only.png", slices=[10])
    assert_png(small, min_kb=3)
    assert path.stat().st_size > small.stat().st_size  # 3 rows x 5 columns vs 1 x 2


def test_plot_segmentation_slices_errors(tmp_path):
    image, label = phantom_case()
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match="model 'bad'.*expected \\(20, 32, 32\\)"):
        plot_segmentation_slices(image, label, {"ok": label, "bad": label[:, :16]}, out)
    with pytest.raises(ValueError, match=r"image must be \(C, Z, Y, X\)"):
        plot_segmentation_slices(image[0], label, {}, out)
    with pytest.raises(ValueError, match="label has shape"):
        plot_segmentation_slices(image, label[:-1], {}, out)
    with pytest.raises(ValueError, match="outside \\[0, 20\\)"):
        plot_segmentation_slices(image, label, {}, out, slices=[3, 20])
    with pytest.raises(ValueError, match="map BraTS label 4 to 3"):
        plot_segmentation_slices(image, np.where(label == 3, 4, label), {}, out)
    with pytest.raises(ValueError, match="modality_names has 2 names"):
        plot_segmentation_slices(image, label, {}, out, modality_names=("t1ce", "flair"))
    assert not out.exists()


def test_callbacks_see_every_event_of_a_run_in_order(tmp_path):
    """The loop calls each RunCallbacks hook on rank 0, in the documented order, with the run's rows."""
    import data_loader as dl
    from experiment_runner import ExperimentConfig
    from run.callbacks import RunCallbacks
    from run.loop import run_experiment

    events = []

    class Recorder(RunCallbacks):
        def on_run_start(self, state):
            events.append(("run_start", state.run.path.is_dir()))

        def on_unit_start(self, state, key):
            events.append(("unit_start", key.name(False)))

        def on_train_progress(self, state, key, epoch, step, loss):
            events.append(("progress", epoch, step, round(loss, 6)))

        def on_epoch_end(self, state, key, row):
            events.append(("epoch", row["epoch"], round(row["train_loss"], 6)))

        def on_unit_end(self, state, key, result, evaluation):
            events.append(("unit_end", len(evaluation.per_case)))

        def on_run_end(self, state):
            events.append(("run_end",))

    dl.generate_synthetic_dataset(tmp_path, n_cases=5, seed=0, shape=(40, 40, 32), difficulty="easy")
    cfg = ExperimentConfig(data_path=str(tmp_path), dataset_version="synthetic", synthetic_cases=5,
                           synthetic_shape=[40, 40, 32], synthetic_difficulty="easy", epochs=2, models=["unet3d_xs"],
                           dim="3d", patch_size=[32, 32, 32], num_workers=0, device="cpu", batch_size=1,
                           iters_per_epoch=17, results_dir=str(tmp_path / "r"), measure_efficiency=False)
    assert run_experiment(cfg, [Recorder()]).exit_code == 0
    kinds = [e[0] for e in events]
    assert kinds == ["run_start", "unit_start", "progress", "progress", "epoch", "progress", "progress", "epoch",
                     "unit_end", "run_end"]
    assert events[0] == ("run_start", True) and events[1] == ("unit_start", "unet3d_xs_seed_24")
    # every 16 steps and at the end of each 17-step epoch; the last is the epoch's mean loss
    assert [e[1:3] for e in events if e[0] == "progress"] == [(0, 16), (0, 17), (1, 16), (1, 17)]
    assert events[3][3] == events[4][2] and events[6][3] == events[7][2]
    assert events[-2] == ("unit_end", 1)
