"""Checkpoint writing, loading and pretrained-weight initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.checkpoint import CheckpointError, load_checkpoint, load_pretrained, save_checkpoint, unwrap_model
from utils.experiment_utils import get_model


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    state = {"model_name": "unet3d_xs", "state_dict": {"w": torch.arange(4.0)}, "epoch": 3,
             "curves": [{"epoch": 0, "val_dice_mean": 0.5}], "config": {"seeds": [24, 42], "dim": "3d"}}
    save_checkpoint(tmp_path / "a.pth", state)
    loaded = load_checkpoint(tmp_path / "a.pth", required=("model_name", "state_dict"))
    assert loaded["epoch"] == 3 and loaded["curves"] == state["curves"] and loaded["config"] == state["config"]
    assert torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"], "no temporary file is left behind"


def test_saving_a_non_plain_value_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="ndarray"):
        save_checkpoint(tmp_path / "b.pth", {"state_dict": {}, "extra": np.zeros(3)})
    assert not (tmp_path / "b.pth").exists()


def test_missing_keys_and_missing_files_are_clear_errors(tmp_path):
    save_checkpoint(tmp_path / "c.pth", {"state_dict": {}})
    with pytest.raises(CheckpointError, match="lacks keys"):
        load_checkpoint(tmp_path / "c.pth", required=("model_name",))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")


def test_pretrained_weights_load_where_names_and_shapes_match(tmp_path):
    torch.manual_seed(0)
    source = get_model("unet3d_xs", "3d", (32, 32, 32))
    save_checkpoint(tmp_path / "unet3d_xs.pth", {"state_dict": source.state_dict()})
    torch.manual_seed(1)
    target = get_model("unet3d_xs", "3d", (32, 32, 32))
    report = load_pretrained(target, tmp_path / "unet3d_xs.pth")
    assert not report["skipped"] and not report["missing"]
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    wider = get_model("unet3d_s", "3d", (32, 32, 32))  # other widths: only shape-equal tensors load
    report = load_pretrained(wider, tmp_path / "unet3d_xs.pth")
    assert report["skipped"] and len(report["loaded"]) < len(report["skipped"])
    save_checkpoint(tmp_path / "foreign.pth", {"state_dict": {"backbone.w": torch.zeros(3)}})
    with pytest.raises(CheckpointError, match="no parameter"):
        load_pretrained(target, tmp_path / "foreign.pth")


def test_unwrap_model_strips_compile_and_ddp_style_wrappers():
    inner = torch.nn.Linear(2, 2)

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap_model(Wrapper(Wrapper(inner))) is inner


def test_replace_rows_rewrites_a_units_rows_without_duplicates(tmp_path):
    from utils.io import read_csv, replace_rows

    path, cols = tmp_path / "t.csv", ["model", "seed", "case_id", "dice"]
    replace_rows(path, {"model": "a", "seed": 1}, [{"model": "a", "seed": 1, "case_id": "c1", "dice": 0.5}], cols)
    replace_rows(path, {"model": "b", "seed": 1}, [{"model": "b", "seed": 1, "case_id": "c1", "dice": 0.7}], cols)
    replace_rows(path, {"model": "a", "seed": 1}, [{"model": "a", "seed": 1, "case_id": "c1", "dice": 0.6}], cols)
    df = read_csv(path)
    assert list(df.columns) == cols and len(df) == 2
    assert df.set_index("model").loc["a", "dice"] == 0.6 and df.set_index("model").loc["b", "dice"] == 0.7
