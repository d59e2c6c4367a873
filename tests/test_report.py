"""report.html without a browser: built from a folder's files only (merged fake runs here), every number of its
tables equal to its CSV, self-contained (plotly inlined once, pictures embedded, links to the folder's files), and
rebuilt by ``python -m visualization FOLDER --report``. The browser checks are in tests/test_browser.py."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from tests.browser import parse_tables, table_mismatches
from tests.test_visualization import MODELS, write_split_run
from visualization.__main__ import main as visualization_main
from visualization.report import COST_LABELS, render_report, write_report


@pytest.fixture
def merged(tmp_path) -> Path:
    first = write_split_run(tmp_path / "run_a", MODELS[:1])
    second = write_split_run(tmp_path / "run_b", MODELS[1:])
    per_case = pd.read_csv(second / "per_case_results.csv")  # the fake runs draw the same cases: make them differ
    for i, column in enumerate(("dice_wt", "dice_tc", "dice_et", "nsd_wt", "nsd_tc", "nsd_et")):
        per_case[column] = (per_case[column] * (0.7 + 0.05 * i) + 0.01 * per_case.index).clip(0, 1)
    per_case.to_csv(second / "per_case_results.csv", index=False)
    (first / "config.json").write_text(json.dumps({
        "config": {"dataset_version": "brats2021", "data_path": "/data", "models": [MODELS[0]], "dim": "3d",
                   "patch_size": [128, 128, 128], "seeds": [24, 42], "epochs": 50, "trainer": "UnitTrainer",
                   "loss": "nnunet", "lr": 0.001},
        "n_cases": 1251, "steps_per_epoch": 250, "total_steps": 12500, "global_batch_size": 8,
        "samples_seen": 100000, "device": "cuda:0", "world_size": 4, "amp": "bf16",
        "versions": {"torch": "2.13.0", "monai": "1.6.1"}, "git_commit": "0123abcd", "created": "2026-11-30T10:00"}))
    pd.DataFrame([{"model": MODELS[0], "seed": 7, "fold": 0, "epoch": 3, "reason": "OutOfMemoryError: CUDA out of "
                   "memory", "time": "2026-11-30T11:00:00"}]).to_csv(first / "failed_runs.csv", index=False)
    out = tmp_path / "merged"
    assert visualization_main([str(first), str(second), "--output", str(out)]) == 0
    return out


def test_merged_report_shows_each_csv_number_and_what_was_run(merged):
    text = (merged / "report.html").read_text()
    tables = parse_tables(text)
    assert {t["id"] for t in tables} == {"results", "efficiency", "statistics", "ranking", "failed"}
    assert table_mismatches(tables, merged) == []
    by_id = {t["id"]: t for t in tables}
    assert [r["key"]["model"] for r in by_id["results"]["rows"]] == list(MODELS)
    p_values = [v["text"] for r in by_id["statistics"]["rows"] for v in r["values"] if v["col"] == "p_value"]
    assert p_values and any(p != "–" for p in p_values), "six paired cases give p-values"
    assert by_id["failed"]["rows"][0]["key"]["seed"] == "7"
    # what was run: the recorded configuration of the first run; the second recorded none
    for fact in ("brats2021 at /data", "1251 used", "50 epochs x 250 optimizer steps = 12500 steps per unit",
                 "global batch 8", "cuda:0, 4 process(es), AMP bf16", "torch 2.13.0, monai 1.6.1", "0123abcd"):
        assert fact in text, fact
    assert "no configuration recorded" in text
    splits = json.loads((merged / "splits.json").read_text())
    for seed, entry in splits.items():  # cases per seed and fold in train, validation and test, as splits.json has
        for fold in entry["folds"]:
            sizes = [seed, fold["fold"], len(fold["train"]), len(fold["val"]), len(fold["test"])]
            assert "<tr>" + "".join(f"<td>{v}</td>" for v in sizes) in re.sub(r">\s+<", "><", text), sizes
    assert {len(f[p]) for e in splits.values() for f in e["folds"] for p in ("train", "val", "test")} == {1, 6}


def figures(text: str) -> dict[str, list[dict]]:
    """The traces of every plotly figure of a page, by div id (``Plotly.newPlot(id, data, ...)``), arrays decoded
    (plotly writes numeric arrays as base64 typed arrays)."""
    def decode(value):
        if isinstance(value, dict) and set(value) >= {"dtype", "bdata"}:
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
        if isinstance(value, dict):
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    out = {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', text):
        data, _ = json.JSONDecoder().raw_decode(text, match.end())
        out[match.group(1)] = decode(data)
    return out


def test_the_plots_draw_the_numbers_of_the_csvs(merged):
    """Each interactive figure's data, read back from the page, against the CSVs it is drawn from (computed here
    independently): the Pareto points, the learning curves (mean over seeds/folds per epoch), every case's Dice and
    NSD paired with its model."""
    plots = figures((merged / "report.html").read_text())
    assert set(plots) == {"plot-pareto", "plot-per-case", "plot-learning"}
    comparison = pd.read_csv(merged / "model_comparison.csv")
    costs = [c for c in COST_LABELS if c in comparison and comparison[c].notna().any()]
    assert "params_mean" in costs
    drawn = {(t["name"], t["xaxis"], round(t["x"][0], 9), round(t["y"][0], 9))
             for t in plots["plot-pareto"] if t["mode"] == "markers"}
    axes = {c: "x" if i == 0 else f"x{i + 1}" for i, c in enumerate(costs)}
    expected = {(r.model, axes[c], round(getattr(r, c) / COST_LABELS[c][1], 9), round(r.test_dice_mean_mean, 9))
                for r in comparison.itertuples() for c in costs if np.isfinite(getattr(r, c))}
    assert drawn == expected

    epochs = pd.read_csv(merged / "all_epochs_results.csv")
    assert epochs.groupby(["model", "epoch"]).size().max() > 1, "several seeds per epoch: the mean is tested"
    curves = {(t["name"], t["xaxis"]): (t["x"], t["y"]) for t in plots["plot-learning"]}
    for axis, column in (("x", "train_loss"), ("x2", "val_dice_mean")):
        for model, rows in epochs.groupby("model"):
            mean = rows.dropna(subset=[column]).groupby("epoch")[column].mean()
            x, y = curves[(model, axis)]
            assert x == (mean.index + 1).tolist(), (model, column)
            np.testing.assert_allclose(y, mean.to_numpy(), rtol=1e-12, err_msg=f"{model} {column}")

    per_case = pd.read_csv(merged / "per_case_results.csv")
    boxes = {(t["name"], t["yaxis"]): t for t in plots["plot-per-case"]}
    assert set(boxes) == {(r.upper(), axis) for r in ("wt", "tc", "et") for axis in ("y", "y2")}
    for (region, axis), box in boxes.items():
        column = f"{'dice' if axis == 'y' else 'nsd'}_{region.lower()}"
        shown = sorted(zip(box["x"], box["text"], np.round(box["y"], 12)))
        expected = sorted(zip(per_case["model"], per_case["case_id"], np.round(per_case[column], 12)))
        assert shown == expected, column


def test_report_is_self_contained(merged):
    text = (merged / "report.html").read_text()
    assert text.count(get_plotlyjs()[:300]) == 1, "plotly.js inlined once"
    page = text.replace(get_plotlyjs(), "")  # plotly.js holds URLs in strings it never fetches here
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I), "nothing is fetched from outside"
    assert "<link" not in page and "@import" not in page
    assert text.count('src="data:image/png;base64,') >= 1  # model_comparison_chart.png, embedded
    hrefs = set(re.findall(r'<li><a href="([^"]+)"', text))
    expected = {p.name + ("/" if p.is_dir() else "") for p in merged.iterdir() if p.name != "report.html"}
    assert hrefs == expected, "a link to every other file of the folder"
    assert len(re.findall(r'class="plotly-graph-div"', text)) == 3


def test_a_changed_csv_is_caught_and_the_cli_rebuilds_the_report(merged, capsys):
    comparison = pd.read_csv(merged / "model_comparison.csv")
    comparison.loc[0, "test_dice_wt_mean"] += 0.01
    comparison.to_csv(merged / "model_comparison.csv", index=False)
    pd.read_csv(merged / "ranking.csv").iloc[1:].to_csv(merged / "ranking.csv", index=False)  # one model less
    stale = table_mismatches(parse_tables((merged / "report.html").read_text()), merged)
    assert any("test_dice_wt_mean" in m for m in stale)
    assert visualization_main([str(merged), "--report"]) == 0
    assert "report.html" in capsys.readouterr().out
    fresh = parse_tables((merged / "report.html").read_text())
    assert table_mismatches(fresh, merged) == []
    assert len(next(t for t in fresh if t["id"] == "ranking")["rows"]) == len(MODELS) - 1


def test_report_cli_refuses_what_it_cannot_do(tmp_path, capsys):
    assert visualization_main([str(tmp_path / "missing"), "--report"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse's usage error: status 2 and the reason
        visualization_main([str(tmp_path), "--report", "--output", str(tmp_path / "out")])
    assert refused.value.code == 2
    assert "argument --output: not allowed with argument --report" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        visualization_main([str(tmp_path)])
    assert refused.value.code == 2
    assert "one of the arguments --output --report is required" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.html").exists()


def test_report_of_an_unfinished_run(tmp_path):
    run = tmp_path / "integrated_experiment_results_20260101_000000"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps({"24": {"seed": 24, "scheme": "holdout", "folds": [
        {"fold": 0, "train": ["a", "b"], "val": ["c"], "test": ["d"]}],
        "cases": {c: {"group": c, "stratum": "ET"} for c in "abcd"}}}))
    pd.DataFrame([{"model": "unet3d_xs", "seed": 24, "fold": 0, "epoch": 0, "train_loss": 1.0, "val_dice_wt": 0.1,
                   "val_dice_tc": 0.1, "val_dice_et": 0.1, "val_dice_mean": 0.1, "lr": 1e-3, "epoch_time_s": 3.0}]
                 ).to_csv(run / "all_epochs_results.csv", index=False)
    text = render_report(run)
    assert "no config.json in this folder" in text and "2 (ET: 2)" in text
    assert 'data-plot="learning"' in text and 'data-empty="pareto"' in text and 'data-empty="results"' in text
    plots = figures(text)
    assert set(plots) == {"plot-learning"}
    assert [(t["xaxis"], t["x"], t["y"]) for t in plots["plot-learning"]] == [("x", [1], [1.0]), ("x2", [1], [0.1])]
    assert write_report(run) == run / "report.html"
