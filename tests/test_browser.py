"""The pages the suite writes, opened in a real headless Chromium: report.html and interactive_3d_analysis.html of a
demo run folder and of a merged folder (``python -m visualization A B --output DIR``). After the scripts ran, every
plot container holds a drawn plot (its traces' colours are on the screen), the tables hold the run's models and
the numbers of its CSVs, no console error was logged and no request left file://.

Skipped, with the reason, only where no Chromium (or Playwright) exists; CI installs Debian's chromium and fails
instead of skipping (``CI`` set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

import data_loader as dl
from experiment_runner import ExperimentConfig
from run.loop import run_experiment
from tests.browser import check_page, chromium, missing_browser, table_mismatches
from training.trainer import UnitTrainer
from visualization import ChartCallbacks
from visualization.__main__ import main as visualization_main

pytestmark = pytest.mark.slow

SHAPE = (40, 40, 32)
N_CASES = 9
REPORT_TABLES = {"results", "efficiency", "statistics", "ranking", "failed", "skipped"}


class FailOneUnit(UnitTrainer):
    """The demo's failed unit: unet3d_stride_xs with seed 42 gets a NaN loss (--trainer tests.test_browser:...)."""

    def compute_loss(self, logits, label):
        loss = super().compute_loss(logits, label)
        return loss * float("nan") if (self.model_name, self.key.seed) == ("unet3d_stride_xs", 42) else loss


@pytest.fixture(scope="module")
def browser():
    why = missing_browser()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser checks: {why}")
        pytest.skip(why)
    with chromium() as context:
        yield context


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """Run A (two models, seeds 24 and 42, efficiency measured, one failed unit, one skipped case), run B (another
    model), and their merge."""
    root = tmp_path_factory.mktemp("browser")
    dl.generate_synthetic_dataset(root / "synthetic", n_cases=N_CASES, seed=0, shape=SHAPE, difficulty="easy")
    cases = root / "data" / "BRATS2021" / "BraTS2021_Training_Data"
    shutil.copytree(root / "synthetic" / "BRATS_SYNTHETIC" / "BraTS2021_Training_Data", cases,
                    ignore=shutil.ignore_patterns("*.json"))
    (cases / "BraTS2021_00008" / "BraTS2021_00008_t2.nii.gz").unlink()  # the skipped case
    common = dict(data_path=str(root / "data"), dataset_version="brats2021", skip_bad_cases=True, dim="3d",
                  patch_size=[32, 32, 32], num_workers=0, device="cpu", batch_size=2, iters_per_epoch=3, epochs=2,
                  results_dir=str(root / "results"), deterministic=True)
    a = run_experiment(ExperimentConfig(**common, models=["unet3d_xs", "unet3d_stride_xs"], seeds=[24, 42],
                                                   trainer="tests.test_browser:FailOneUnit"), [ChartCallbacks()])
    assert a.exit_code == 3 and len(a.failed) == 1
    b = run_experiment(ExperimentConfig(**common, models=["dualbranch_14_shufflenetv2_xs"], seeds=[24]),
                                  [ChartCallbacks()])
    assert b.exit_code == 0
    merged = root / "merged"
    assert visualization_main([str(a.run_dir), str(b.run_dir), "--output", str(merged)]) == 0
    return {"run": a.run_dir, "other": b.run_dir, "merged": merged}


def assert_clean(page) -> None:
    assert not page.console_errors, page.console_errors
    assert page.requests and page.requests[0] == page.url
    assert not page.external_requests, f"requests left file://: {page.external_requests}"


def assert_drawn(plot: dict) -> None:
    """A plot container holds a drawn plot: plotly drew every trace, each trace alone puts its colour on the screen
    (not a legend swatch, not another trace of the same colour), and each SVG trace drew shapes in its plot area."""
    assert plot["drawn"] and plot["n_full"] == plot["n_data"] > 0, plot["id"]
    for trace in plot["traces"]:
        if trace["visible"] is not True or (trace["mode"] == "lines" and trace["n"] < 2):
            continue
        assert trace["colors"], f"{plot['id']}: trace {trace['name']} has no colour to look for"
        assert trace["own_pixels"] >= 4, f"{plot['id']}: trace {trace['name']} ({trace['colors']}) is not on the screen"
        if not trace["type"].endswith(("3d", "gl")):
            assert trace["marks"] >= 1, f"{plot['id']}: trace {trace['name']} drew no shape in its plot area"
    if any(t["type"].endswith("3d") for t in plot["traces"]):
        assert plot["gl_canvases"] >= 1, plot["id"]
    else:
        assert plot["svg_marks"] >= len(plot["traces"]), plot["id"]


@pytest.mark.parametrize("folder", ["run", "merged"])
def test_report_in_a_real_browser(browser, demo, folder):
    path = demo[folder]
    page = check_page(browser, path / "report.html")
    assert_clean(page)
    assert {p["id"] for p in page.plots} == {"plot-pareto", "plot-per-case", "plot-learning"}
    for plot in page.plots:
        assert_drawn(plot)
    comparison = pd.read_csv(path / "model_comparison.csv")
    models = set(comparison["model"])
    expected = {"unet3d_xs", "unet3d_stride_xs"} | ({"dualbranch_14_shufflenetv2_xs"} if folder == "merged" else set())
    assert models == expected
    tables = {t["id"]: t for t in page.tables}
    assert set(tables) == REPORT_TABLES
    for name in ("results", "efficiency", "ranking"):
        assert {r["key"]["model"] for r in tables[name]["rows"]} == models, name
    assert [(r["key"]["model"], r["key"]["seed"], r["key"]["fold"]) for r in tables["failed"]["rows"]] == [
        ("unet3d_stride_xs", "42", "0")]
    # both runs skipped the case: a merged folder shows it once per source run
    assert [r["key"]["case_id"] for r in tables["skipped"]["rows"]] == ["BraTS2021_00008"] * (
        2 if folder == "merged" else 1)
    assert not table_mismatches(page.tables, path), table_mismatches(page.tables, path)
    # the headline number, formatted independently of the page's own format attributes
    shown = {r["key"]["model"]: next(v["text"] for v in r["values"] if v["col"] == "test_dice_mean_mean")
             for r in tables["results"]["rows"]}
    assert shown == {m: f"{d:.3f}" for m, d in zip(comparison["model"], comparison["test_dice_mean_mean"])}
    # the Pareto plot draws each model at its parameters and mean Dice
    pareto = next(p for p in page.plots if p["id"] == "plot-pareto")
    points = {(t["name"], round(t["x"][0], 6), round(t["y"][0], 9)) for t in pareto["traces"]
              if t["name"] in models and t["x"]}
    costs = comparison.set_index("model")
    assert {(m, round(costs.loc[m, "params_mean"] / 1e6, 6), round(costs.loc[m, "test_dice_mean_mean"], 9))
            for m in models} <= points


@pytest.mark.parametrize("folder", ["run", "merged"])
def test_interactive_3d_analysis_in_a_real_browser(browser, demo, folder):
    path = demo[folder]
    page = check_page(browser, path / "interactive_3d_analysis.html")
    assert_clean(page)
    (plot,) = page.plots
    assert_drawn(plot)
    comparison = pd.read_csv(path / "model_comparison.csv").set_index("model")
    drawn = {t["name"]: (t["x"][0], t["y"][0], t["z"][0]) for t in plot["traces"]}
    assert set(drawn) == set(comparison.index)
    for model, (params, gflops, dice) in drawn.items():
        assert params == pytest.approx(comparison.loc[model, "params_mean"] / 1e6)
        assert gflops == pytest.approx(comparison.loc[model, "flops_mean"] / 1e9)
        assert dice == pytest.approx(comparison.loc[model, "test_dice_mean_mean"])


def test_the_browser_checks_catch_a_broken_page(browser, demo, tmp_path):
    """The checks above can fail: a console error, a request leaving file://, a plot drawn invisibly, a number
    that is not its CSV's."""
    page = tmp_path / "broken.html"
    broken = (demo["run"] / "report.html").read_text().replace("</body>", """
<img alt="remote" src="http://127.0.0.1:9/logo.png">
<div id="invisible" class="plotly-graph-div" style="height:300px"></div>
<script>console.error("injected error");
Plotly.newPlot("invisible", [{x: [1, 2], y: [1, 2], type: "scatter", mode: "markers",
                              marker: {color: "#123456", opacity: 0}}]);</script>
<div id="swatch-only" class="plotly-graph-div" style="height:300px"></div>
<script>Plotly.newPlot("swatch-only", [
  {x: [1, 2], y: [1, 2], type: "scatter", mode: "markers", name: "drawn", marker: {color: "#aa3377", size: 10}},
  {x: [1, 2], y: [null, null], type: "scatter", mode: "markers", name: "empty", marker: {color: "#228833", size: 10}}
], {showlegend: true});</script>
<div id="same-colour" class="plotly-graph-div" style="height:300px"></div>
<script>Plotly.newPlot("same-colour", [
  {x: [1, 2], y: [1, 2], type: "scatter", mode: "markers", name: "drawn", marker: {color: "#4477aa", size: 10}},
  {x: [1, 2], y: [2, 1], type: "scatter", mode: "markers", name: "hidden", showlegend: false,
   marker: {color: "#4477aa", size: 10}, opacity: 0}
]);</script>
</body>""")
    shown = next(v for v in ("0.1", "0.0", "0.2") if f'data-col="test_dice_mean_mean" data-value="{v}' in broken)
    broken = broken.replace(f'data-col="test_dice_mean_mean" data-value="{shown}', 'data-col="test_dice_mean_mean" '
                            f'data-value="{shown}9', 1)
    page.write_text(broken)
    result = check_page(browser, page)
    assert any("injected error" in e for e in result.console_errors)
    assert result.external_requests == ["http://127.0.0.1:9/logo.png"]
    invisible = next(p for p in result.plots if p["id"] == "invisible")
    with pytest.raises(AssertionError, match="is not on the screen"):
        assert_drawn(invisible)
    # a trace with no point on the plot, only its legend swatch; a trace drawn invisibly beside a visible one of the
    # same colour: their colours are on the screen (what "drawn" once meant), the traces themselves are not
    for plot_id, missing, color in (("swatch-only", "empty", "#228833"), ("same-colour", "hidden", "#4477aa")):
        plot = next(p for p in result.plots if p["id"] == plot_id)
        assert plot["pixels"][color] >= 4, plot["pixels"]
        own = {t["name"]: t["own_pixels"] for t in plot["traces"]}
        assert own["drawn"] >= 4 and own[missing] < 4, own
        with pytest.raises(AssertionError, match=f"trace {missing} .* is not on the screen"):
            assert_drawn(plot)
    mismatches = table_mismatches(result.tables, demo["run"])
    assert len(mismatches) == 1 and "test_dice_mean_mean" in mismatches[0]
