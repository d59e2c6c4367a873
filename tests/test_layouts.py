"""Datasets users already have: MSD Task01_BrainTumour (4D images) and nnU-Net raw dataset folders.

Both are written here from the synthetic generator's arrays (images in t1, t1ce, t2, flair order, seg
0/1/2/4 BraTS labels) with their dataset.json, and checked against what the suite loads."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import data_loader as dl
from brats_data.cache import case_key
from brats_data.cases import dataset_root, map_labels, read_case, read_images, unmap_labels
from brats_data.dataset_json import DatasetJsonError, parse_dataset_json
from brats_data.synthetic import synthesize_case

SHAPE = (32, 32, 24)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
T1, T1CE, T2, FLAIR = range(4)  # canonical order of synthesize_case's images
# MSD Task01: channels FLAIR, T1w, t1gd, T2w; labels 1 edema, 2 non-enhancing, 3 enhancing
MSD_JSON = {
    "name": "BRATS", "tensorImageSize": "4D",
    "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
}
MSD_ORDER = [FLAIR, T1, T1CE, T2]
# nnU-Net's Dataset137_BraTS2021 conversion: edema 1, necrosis 2, enhancing 3, region-based labels
NNUNET_REGION_JSON = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
    "regions_class_order": [1, 2, 3], "numTraining": 0, "file_ending": ".nii.gz",
}
NNUNET_REGION_VALUES = {1: 2, 2: 1, 4: 3}  # BraTS label -> nnU-Net value
# a plain label dict, channels shuffled and named the BraTS 2023 way
NNUNET_PLAIN_JSON = {
    "channel_names": {"0": "t2w", "1": "t1c", "2": "T2-FLAIR", "3": "t1n"},
    "labels": {"background": 0, "edema": 1, "enhancing tumor": 2, "necrosis": 3},
    "file_ending": ".nii.gz",
}
NNUNET_PLAIN_ORDER = [T2, T1CE, FLAIR, T1]
NNUNET_PLAIN_VALUES = {2: 1, 4: 2, 1: 3}
MSD_VALUES = {2: 1, 1: 2, 4: 3}  # BraTS label -> MSD label
BRATS_CLASS = {0: 0, 1: 1, 2: 2, 4: 3}  # BraTS label -> model class


def _save(data: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_zooms((1.0,) * data.ndim)
    nib.save(img, str(path))


def _relabel(seg: np.ndarray, values: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(seg)
    for brats, value in values.items():
        out[seg == brats] = value
    return out


def write_msd(root: Path, n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/Task01_BrainTumour`` with n 4D cases; returns case id -> (images, BraTS seg) as synthesized."""
    task = root / "Task01_BrainTumour"
    arrays = {}
    for i in range(n):
        images, seg = synthesize_case(0, i, SHAPE, difficulty="easy")
        case = f"BRATS_{i + 1:03d}"
        _save(np.stack([images[c] for c in MSD_ORDER], axis=-1).astype(np.float32),
              task / "imagesTr" / f"{case}.nii.gz")
        _save(_relabel(seg, MSD_VALUES).astype(np.uint8), task / "labelsTr" / f"{case}.nii.gz")
        arrays[case] = (images, seg)
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (task / "labelsTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (task / "dataset.json").write_text(json.dumps(MSD_JSON))
    return arrays


def write_nnunet(folder: Path, n: int, spec: dict, order: list[int], values: dict[int, int]):
    arrays = {}
    for i in range(n):
        images, seg = synthesize_case(0, i, SHAPE, difficulty="easy")
        case = f"BraTS2021_{i:05d}"
        for channel, source in enumerate(order):
            _save(images[source], folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        _save(_relabel(seg, values).astype(np.uint8), folder / "labelsTr" / f"{case}.nii.gz")
        arrays[case] = (images, seg)
    (folder / "dataset.json").write_text(json.dumps({**spec, "numTraining": n}))
    return arrays


def zyx(volume: np.ndarray) -> np.ndarray:
    return volume.transpose(2, 1, 0)


# ----------------------------------------------------------------------------- MSD
def test_msd_modality_order_and_label_names(tmp_path):
    arrays = write_msd(tmp_path, 2)
    cases = dl.discover_cases(tmp_path, "msd")
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002"]  # the ._ files are ignored
    # data_path may be the task folder itself
    assert [c.case_id for c in dl.discover_cases(tmp_path / "Task01_BrainTumour", "msd")] == ["BRATS_001", "BRATS_002"]
    assert dataset_root(tmp_path, "msd") == tmp_path / "Task01_BrainTumour"
    case = cases[0]
    assert set(case.image_paths.values()) == {tmp_path / "Task01_BrainTumour/imagesTr/BRATS_001.nii.gz"}
    assert case.channels == {"t1": 1, "t1ce": 2, "t2": 3, "flair": 0}
    dl.validate_case(case, full=True)
    images, seg = arrays["BRATS_001"]
    raw = read_case(case)
    for m, index in zip(dl.MODALITIES, range(4)):  # canonical order, whatever the file's
        np.testing.assert_array_equal(raw.image[index], zyx(images[index]).astype(np.float32), err_msg=m)
    np.testing.assert_array_equal(raw.label, zyx(_relabel(seg, BRATS_CLASS)))
    # edema stays edema: a voxel written as MSD label 1 loads as class 2 (ED)
    msd = zyx(np.asarray(nib.load(str(case.label_path)).dataobj))
    assert (msd == 1).any() and np.all(raw.label[msd == 1] == 2)
    assert np.all(raw.label[msd == 2] == 1) and np.all(raw.label[msd == 3] == 3)
    # written back in MSD numbering
    np.testing.assert_array_equal(unmap_labels(np.arange(4), case.dataset), [0, 2, 1, 3])
    np.testing.assert_array_equal(unmap_labels(raw.label, case.dataset), msd)
    np.testing.assert_array_equal(read_images(case).image, raw.image)
    image, label, spacing = dl.load_case(case)
    assert image.shape == (4, *SHAPE[::-1]) and spacing == (1.0, 1.0, 1.0)


def test_msd_bad_inputs(tmp_path):
    write_msd(tmp_path, 2)
    task = tmp_path / "Task01_BrainTumour"
    case = dl.discover_cases(tmp_path, "msd")[1]
    # a 3D image where the 4D one is expected
    _save(np.zeros(SHAPE, np.float32), task / "imagesTr" / "BRATS_002.nii.gz")
    with pytest.raises(dl.BadCaseError, match=r"BRATS_002.*4D.*BRATS_002\.nii\.gz"):
        dl.validate_case(case)
    (task / "imagesTr" / "BRATS_002.nii.gz").unlink()
    _save(np.zeros(SHAPE, np.uint8), task / "labelsTr" / "BRATS_003.nii.gz")  # a label without its image: no case
    with pytest.raises(dl.BadCaseError, match="case BRATS_002: missing image"):
        dl.validate_case(case)
    # labels outside the dataset's set
    case = dl.discover_cases(tmp_path, "msd")[0]
    seg = np.asarray(nib.load(str(case.label_path)).dataobj).copy()
    seg[0, 0, 0] = 4
    _save(seg, case.label_path)
    with pytest.raises(dl.BadCaseError, match=r"BRATS_001: labels \[4\] outside"):
        read_case(case)
    # a dataset.json whose modalities cannot be mapped
    (task / "dataset.json").write_text(json.dumps({**MSD_JSON, "modality": {**MSD_JSON["modality"], "3": "DWI"}}))
    with pytest.raises(DatasetJsonError, match=r"dataset\.json.*unknown channel name 'DWI'"):
        dl.discover_cases(tmp_path, "msd")
    (task / "dataset.json").write_text(json.dumps({k: v for k, v in MSD_JSON.items() if k != "modality"}))
    with pytest.raises(ValueError, match=r"dataset\.json: no \"channel_names\""):
        dl.discover_cases(tmp_path, "msd")
    (task / "dataset.json").unlink()
    with pytest.raises(ValueError, match=r"dataset\.json not found"):
        dl.discover_cases(tmp_path, "msd")
    with pytest.raises(FileNotFoundError, match="No msd cases"):
        dl.discover_cases(tmp_path / "elsewhere", "msd")


def test_msd_cache_key_follows_dataset_json(tmp_path):
    write_msd(tmp_path, 1)
    before = dl.discover_cases(tmp_path, "msd")[0]
    reordered = {**MSD_JSON, "modality": {"0": "T1w", "1": "FLAIR", "2": "t1gd", "3": "T2w"}}
    (tmp_path / "Task01_BrainTumour" / "dataset.json").write_text(json.dumps(reordered))
    after = dl.discover_cases(tmp_path, "msd")[0]
    assert after.channels["t1"] == 0 and case_key(after) != case_key(before)


# ----------------------------------------------------------------------------- nnU-Net
@pytest.mark.parametrize("spec, order, values, expected_map", [
    (NNUNET_REGION_JSON, [T1, T1CE, T2, FLAIR], NNUNET_REGION_VALUES, {0: 0, 1: 2, 2: 1, 3: 3}),
    (NNUNET_PLAIN_JSON, NNUNET_PLAIN_ORDER, NNUNET_PLAIN_VALUES, {0: 0, 1: 2, 2: 3, 3: 1}),
], ids=["region-based", "plain"])
def test_nnunet_channels_and_labels(tmp_path, spec, order, values, expected_map):
    folder = tmp_path / "Dataset137_BraTS2021"
    arrays = write_nnunet(folder, 2, spec, order, values)
    assert parse_dataset_json(folder).label_map == expected_map
    cases = dl.discover_cases(folder, "nnunet")
    assert dataset_root(folder, "nnunet") == folder
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    case = cases[1]
    assert case.image_paths["t1ce"] == folder / "imagesTr" / f"{case.case_id}_{order.index(T1CE):04d}.nii.gz"
    images, seg = arrays[case.case_id]
    raw = read_case(case)
    np.testing.assert_array_equal(raw.image[1], zyx(images[T1CE]).astype(np.float32))  # the t1ce channel
    np.testing.assert_array_equal(raw.image, np.stack([zyx(v) for v in images]).astype(np.float32))
    np.testing.assert_array_equal(raw.label, zyx(_relabel(seg, BRATS_CLASS)))
    written = np.asarray(nib.load(str(case.label_path)).dataobj)
    np.testing.assert_array_equal(unmap_labels(raw.label, case.dataset), zyx(written))  # the dataset's own values
    np.testing.assert_array_equal(map_labels(unmap_labels(np.arange(4), case.dataset), case.dataset), np.arange(4))


def test_nnunet_missing_channel_file_and_unmappable_labels(tmp_path):
    folder = tmp_path / "Dataset137_BraTS2021"
    write_nnunet(folder, 2, NNUNET_REGION_JSON, [T1, T1CE, T2, FLAIR], NNUNET_REGION_VALUES)
    (folder / "imagesTr" / "BraTS2021_00001_0001.nii.gz").unlink()
    bad = dl.discover_cases(folder, "nnunet")[1]
    with pytest.raises(dl.BadCaseError, match=r"case BraTS2021_00001: missing modality 't1ce'.*BraTS2021_00001_0001"):
        dl.validate_case(bad)
    cache = dl.PreprocessedCache(tmp_path / "cache", dl.discover_cases(folder, "nnunet"))
    errors = cache.build(num_workers=1, progress=False, skip_bad_cases=True)
    assert [e.case_id for e in errors] == ["BraTS2021_00001"] and cache.case_ids == ["BraTS2021_00000"]

    def refused(labels, match):
        spec = {k: v for k, v in NNUNET_REGION_JSON.items() if k != "regions_class_order"}
        if any(isinstance(v, list) for v in labels.values()):
            spec["regions_class_order"] = [1, 2, 3]
        (folder / "dataset.json").write_text(json.dumps({**spec, "labels": labels}))
        with pytest.raises(DatasetJsonError, match=match):
            dl.discover_cases(folder, "nnunet")

    refused({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": [2]},
            r"dataset\.json: label value 2 lies in regions \['et', 'wt'\]")
    refused({"background": 0, "whole tumor": [1, 2], "peritumoral zone": [2]}, "region 'peritumoral zone'")
    refused({"background": 0, "edema": 1, "tumour": 2, "enhancing": 3}, "label name 'tumour'")
    refused({"background": 0, "edema": 1, "enhancing": 3}, r"no label for NCR/NET")
    (folder / "dataset.json").write_text(json.dumps({**NNUNET_REGION_JSON, "file_ending": ".mha"}))
    with pytest.raises(DatasetJsonError, match="file_ending '.mha'"):
        dl.discover_cases(folder, "nnunet")


# ----------------------------------------------------------------------------- a run and predict.py
@pytest.mark.slow
def test_msd_end_to_end_and_predictions_in_msd_numbering(tmp_path):
    from experiment_runner import ExperimentConfig, run_integrated_experiment
    from inference.export import find_input_cases, predict_folder

    write_msd(tmp_path / "data", 6)
    cfg = ExperimentConfig(
        dataset_version="msd", data_path=str(tmp_path / "data"), dim="3d", models=["unet3d_xs"],
        patch_size=[16, 32, 32], epochs=1, num_workers=0, device="cpu", measure_efficiency=False,
        iters_per_epoch=1, results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"))
    summary = run_integrated_experiment(cfg)
    assert summary.exit_code == 0, summary.failed
    meta = json.loads(next((tmp_path / "cache").glob("BRATS_001/meta.json")).read_text())
    assert meta["layout"].startswith("msd:")

    task = tmp_path / "data" / "Task01_BrainTumour"
    assert [c.case_id for c in find_input_cases(task)] == [f"BRATS_{i:03d}" for i in range(1, 7)]
    assert len(find_input_cases(tmp_path / "data")) == 6  # the folder above the task folder too
    result = predict_folder(summary.run_dir, task, tmp_path / "pred", device="cpu", save_probabilities=True,
                            progress=False)
    assert result.n_cases == 6
    for i in (1, 6):
        out = nib.load(str(tmp_path / "pred" / f"BRATS_{i:03d}.nii.gz"))
        assert out.shape == SHAPE and out.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(out.affine, AFFINE)
        saved = np.load(tmp_path / "pred" / f"BRATS_{i:03d}.npz")
        np.testing.assert_array_equal(saved["labels"], [0, 2, 1, 3])  # MSD: 1 edema, 2 non-enhancing, 3 enhancing
        # the written labels are the MSD labels of the classes (float16 probabilities: rare near-ties may differ)
        agree = np.asarray(out.dataobj) == saved["labels"][saved["probabilities"].argmax(0)]
        assert agree.mean() > 0.99
