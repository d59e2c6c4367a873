"""Atomic writers keep the mode a plain open() gives under the umask; one readable line per exception."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import evaluate_experiment
import predict
from inference.export import write_probabilities, write_segmentation
from utils.checkpoint import save_checkpoint
from utils.errors import first_line
from utils.io import atomic_write_bytes, current_umask, write_csv, write_json
from visualization.figures import drawing


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


def _write_everything(folder: Path) -> list[Path]:
    ref = folder / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), str(ref))
    paths = [folder / n for n in ("a.csv", "config.json", "raw.bin", "best.pth", "seg.nii.gz", "probs.npz",
                                  "chart.png")]
    write_csv(paths[0], pd.DataFrame({"x": [1]}))
    write_json(paths[1], {"x": 1})
    atomic_write_bytes(paths[2], b"data")
    save_checkpoint(paths[3], {"state_dict": {"w": torch.zeros(2)}})
    write_segmentation(np.zeros((6, 5, 4), np.uint8), ref, paths[4])
    write_probabilities(np.full((4, 6, 5, 4), 0.25, np.float32), "brats2021", paths[5])
    with drawing(paths[6]) as (_fig, axes):
        axes[0, 0].plot([0, 1])
    return paths


@pytest.mark.parametrize("mask,mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what a plain open() gives
    assert stat.S_IMODE(plain.stat().st_mode) == mode
    for path in _write_everything(tmp_path):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
    assert not list(tmp_path.glob(".*")), "no temporary file left behind"


def test_nifti_written_atomically_reads_back(tmp_path):
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([1.0, 2.0, 3.0, 1.0])), str(ref))
    labels = np.random.default_rng(0).integers(0, 5, size=(6, 5, 4)).astype(np.uint8)
    write_segmentation(labels, ref, tmp_path / "out.nii.gz")
    back = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj).transpose(2, 1, 0), labels)
    np.testing.assert_array_equal(back.affine, np.diag([1.0, 2.0, 3.0, 1.0]))


@pytest.mark.parametrize("message,expected,typed", [
    ("", "ValueError", "ValueError"),
    ("   \n  ", "ValueError", "ValueError"),
    ("bad patch\nsecond line", "bad patch", "ValueError: bad patch"),
    ("\n  indented first\n", "indented first", "ValueError: indented first"),
])
def test_first_line_of_any_exception(message, expected, typed):
    exc = ValueError(message)
    assert first_line(exc) == expected
    assert first_line(exc, with_type=True) == typed


@pytest.mark.parametrize("cli,target,argv", [
    (predict, "predict_folder", ["--run_dir", "r", "--input", "i", "--output", "o"]),
    (evaluate_experiment, "evaluate_runs", ["--results_dir", "r"]),
])
def test_an_empty_error_message_still_gives_one_readable_line(cli, target, argv, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise ValueError("")

    monkeypatch.setattr(cli, target, fail)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: ValueError"]
