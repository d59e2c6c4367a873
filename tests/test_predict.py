"""predict.py: new cases in any BraTS layout -> uint8 NIfTI segmentations on the input's grid, with the
layout's labels; ensembles, mirroring, probabilities, refusal to overwrite, input discovery.

The tiny trained run (:func:`tiny_run`) is built once per session and shared with tests/test_export.py."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

import data_loader as dl
import predict
from brats_data import find_input_cases
from brats_data.cases import LAYOUTS, unmap_labels
from brats_data.definitions import DATASETS
from evaluation.scoring import predict_volume
from experiment_runner import ExperimentConfig, run_integrated_experiment
from inference.predictor import InferenceSettings, Predictor, mirror_axes

pytestmark = pytest.mark.slow

SHAPE = (48, 48, 40)
SEEDS = [24, 42]
# Header fields a uint8 label map may not share with its int16 (or float) source image.
DTYPE_FIELDS = {"datatype", "bitpix", "scl_slope", "scl_inter", "cal_max", "cal_min", "glmax", "glmin", "vox_offset"}
_RUN: dict[str, object] = {}


def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, folder of the 4 source cases in the BraTS 2021 layout): 1 epoch of unet3d_xs, two seeds.

    The cases are a copy of the synthetic ones as dataset ``brats2021``, so the run never regenerates them."""
    if not _RUN:
        root = tmp_path_factory.mktemp("predict_data")
        extra = {"difficulty": "easy"} if "difficulty" in inspect.signature(dl.generate_synthetic_dataset).parameters \
            else {}
        synthetic = dl.generate_synthetic_dataset(root / "synthetic", n_cases=4, seed=0, shape=SHAPE, **extra)
        cases = root / "BRATS2021" / "BraTS2021_Training_Data"
        shutil.copytree(synthetic, cases, ignore=shutil.ignore_patterns("*.json"))
        cfg = ExperimentConfig(
            data_path=str(root), dataset_version="brats2021", cache_dir=str(root / "cache"), epochs=1,
            models=["unet3d_xs"], dim="3d", patch_size=[32, 32, 32], num_workers=0, device="cpu",
            results_dir=str(tmp_path_factory.mktemp("predict_results")), patches_per_case=2, seeds=SEEDS, lr=3e-3,
            batch_size=2, measure_efficiency=False)
        summary = run_integrated_experiment(cfg)
        assert summary.exit_code == 0, summary.failed
        _RUN.update(run=summary.run_dir, cases=cases)
    return _RUN["run"], _RUN["cases"]


@pytest.fixture(scope="module")
def run_and_cases(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def assert_like_input(out_path: Path, t1_path: Path, labels: set[int]) -> np.ndarray:
    data, out = read(out_path)
    t1 = nib.load(str(t1_path))
    assert out.shape == t1.shape and data.dtype == np.uint8 and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, t1.affine)
    for key in out.header.keys():
        if key not in DTYPE_FIELDS:
            np.testing.assert_array_equal(out.header[key], t1.header[key], err_msg=key)
    assert set(np.unique(data).tolist()) <= labels
    return data


def test_predicts_every_case_as_uint8_on_the_input_grid(run_and_cases, tmp_path, capsys):
    run, cases = run_and_cases
    out = tmp_path / "out"
    assert predict.main(["--run_dir", str(run), "--input", str(cases), "--output", str(out), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "predicted 4 case(s) with 2 checkpoint(s)" in line and "s per case" in line  # both seeds, one ensemble
    ids = sorted(p.name for p in cases.iterdir())
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.nii.gz" for i in ids]
    for case_id in ids:
        assert_like_input(out / f"{case_id}.nii.gz", cases / case_id / f"{case_id}_t1.nii.gz", {0, 1, 2, 4})


def test_tta_and_probabilities_of_a_single_case_folder(run_and_cases, tmp_path):
    run, cases = run_and_cases
    case = sorted(cases.iterdir())[0]
    out = tmp_path / "out"
    args = ["--run_dir", str(run), "--input", str(case), "--output", str(out), "--device", "cpu", "--seeds", "24",
            "--tta", "--save_probabilities", "--overlap", "0.25", "--sw_batch_size", "8"]
    assert predict.main(args) == 0
    labels = assert_like_input(out / f"{case.name}.nii.gz", case / f"{case.name}_t1.nii.gz", {0, 1, 2, 4})
    saved = np.load(out / f"{case.name}.npz")
    probs = saved["probabilities"]
    assert probs.dtype == np.float16 and probs.shape == (4, *labels.shape)
    np.testing.assert_array_equal(saved["labels"], [0, 1, 2, 4])
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    assert (probs >= 0).all()
    assert np.mean(saved["labels"][probs.argmax(0)] == labels) > 0.99  # float16 rounding may tie a few voxels


@pytest.mark.parametrize("dim,patch", [("3d", (16, 16, 16)), ("2d", (16, 16))])
def test_one_forward_is_labelled_exactly_as_the_runs_evaluation(dim, patch):
    torch.manual_seed(0)
    conv = nn.Conv3d if dim == "3d" else nn.Conv2d
    model = nn.Sequential(conv(2, 8, 3, padding=1), nn.ReLU(), conv(8, 4, 3, padding=1)).eval()
    image = np.random.default_rng(0).normal(size=(4, 19, 27, 22)).astype(np.float16)
    settings = InferenceSettings(dim, patch, 0.25, 3, "none", torch.device("cpu"))
    labels, probs = Predictor.from_model(model, ("t1ce", "flair"), settings).predict(image, probabilities=True)
    expected = predict_volume(model, image[[1, 3]], dim, patch, 0.25, torch.device("cpu"), sw_batch_size=3)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    member = Predictor.from_model(model, ("t1ce", "flair"), settings).members[0]
    ensemble = Predictor([member, member], settings.with_(mirror=True))
    tta_labels, tta_probs = ensemble.predict(image, probabilities=True)
    assert tta_labels.shape == labels.shape and tta_probs.shape == (4, *labels.shape)
    np.testing.assert_array_equal(tta_labels, tta_probs.argmax(0))


def test_mirroring_covers_every_axis_flip():
    assert len(mirror_axes("3d")) == 8 and mirror_axes("3d")[0] == () and (1, 2, 3) in mirror_axes("3d")
    assert mirror_axes("2d") == [(), (2,), (3,), (2, 3)]


def test_refuses_an_output_folder_with_predictions_unless_overwrite(run_and_cases, tmp_path, capsys):
    run, cases = run_and_cases
    case = sorted(cases.iterdir())[1]
    args = ["--run_dir", str(run), "--input", str(case), "--output", str(tmp_path), "--device", "cpu"]
    (tmp_path / "old.nii.gz").write_bytes(b"")
    assert predict.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds predictions" in err[0] and "--overwrite" in err[0]
    assert not (tmp_path / f"{case.name}.nii.gz").exists()
    assert predict.main(args + ["--overwrite"]) == 0
    assert (tmp_path / f"{case.name}.nii.gz").is_file()


def _copy_as_brats2023(case: Path, dest: Path, with_seg: bool) -> Path:
    """One BraTS 2021-layout case folder renamed into the BraTS 2023 layout (BraTS-GLI-xxxxx-000-t1n ...)."""
    new_id = f"BraTS-GLI-{case.name[-5:]}-000"
    folder = dest / new_id
    folder.mkdir(parents=True)
    old, new = LAYOUTS["brats2021"], LAYOUTS["brats2023"]
    pairs = [(old.suffix(m), new.suffix(m)) for m, _ in old.suffixes] + ([("seg", "seg")] if with_seg else [])
    for a, b in pairs:
        shutil.copyfile(case / old.file_name(case.name, a), folder / new.file_name(new_id, b))
    return folder


def test_brats2023_cases_are_written_back_with_et_3(run_and_cases, tmp_path):
    run, cases = run_and_cases
    sources = sorted(cases.iterdir())[:2]
    inputs = tmp_path / "in"
    folders = [_copy_as_brats2023(src, inputs, with_seg=i == 0) for i, src in enumerate(sources)]  # 2nd: no seg
    flat = tmp_path / "in2021"
    for src in sources:
        shutil.copytree(src, flat / src.name)
    common = ["--run_dir", str(run), "--device", "cpu", "--seeds", "24"]
    assert predict.main(common + ["--input", str(inputs), "--output", str(tmp_path / "o23")]) == 0
    assert predict.main(common + ["--input", str(flat), "--output", str(tmp_path / "o21")]) == 0
    for src, folder in zip(sources, folders):
        got = assert_like_input(tmp_path / "o23" / f"{folder.name}.nii.gz", folder / f"{folder.name}-t1n.nii.gz",
                                {0, 1, 2, 3})
        ref = read(tmp_path / "o21" / f"{src.name}.nii.gz")[0]
        np.testing.assert_array_equal(got, np.where(ref == 4, 3, ref))  # same voxels, the 2023 ET label


def test_label_convention_of_each_layout_inverts_map_labels():
    classes = np.arange(4, dtype=np.uint8)
    np.testing.assert_array_equal(unmap_labels(classes, "brats2018"), [0, 1, 2, 4])
    np.testing.assert_array_equal(unmap_labels(classes, "brats2021"), [0, 1, 2, 4])
    np.testing.assert_array_equal(unmap_labels(classes, "brats2023"), [0, 1, 2, 3])
    for layout in LAYOUTS:
        assert unmap_labels(classes, layout).dtype == np.uint8
        np.testing.assert_array_equal(dl.map_labels(unmap_labels(classes, layout), layout), classes)


def test_input_discovery_names_a_bad_case_folder_and_finds_groups(run_and_cases, tmp_path):
    _, cases = run_and_cases
    src = sorted(cases.iterdir())[0]
    shutil.copytree(src, tmp_path / "HGG" / src.name)  # BraTS 2018: group folders of case folders
    found = find_input_cases(tmp_path, prefer=DATASETS["brats2018"])
    assert [(c.case_id, c.layout) for c in found] == [(src.name, "brats2018")]
    (tmp_path / "HGG" / src.name / f"{src.name}_flair.nii.gz").unlink()
    with pytest.raises(dl.BadCaseError, match=src.name):
        find_input_cases(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no cases"):
        find_input_cases(tmp_path / "empty")


def test_model_choice_errors_are_one_line(run_and_cases, tmp_path, capsys):
    run, cases = run_and_cases
    args = ["--run_dir", str(run), "--input", str(cases), "--output", str(tmp_path / "o"), "--device", "cpu"]
    assert predict.main(args + ["--models", "unet3d_s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unet3d_s" in err[0] and "unet3d_xs" in err[0]
    assert predict.main(args + ["--seeds", "7"]) == 2
    assert "matches seeds [7]" in capsys.readouterr().err
