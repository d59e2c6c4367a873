"""evaluate_experiment.py --export_predictions / --official_eval: a run's test predictions as NIfTI on the
original grid (un-cropped, BraTS labels), which score exactly as the run did, and the official BraTS
evaluation of them in its own environment."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import data_loader as dl
import evaluate_experiment
import predict
from brats_data.cases import unmap_labels
from experiment.config import load_run_config
from experiment.data import open_prepared_cache
from inference.export import uncrop, write_segmentation
from inference.official_eval import BRATS_EVAL_INSTALL, DEFAULT_BRATS_EVAL_PYTHON
from metrics import brats_region_metrics
from tests.test_predict import tiny_run
from utils.labels import MODALITIES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run, cases = tiny_run(tmp_path_factory)
    assert evaluate_experiment.main(["--results_dir", str(run), "--export_predictions", "--device", "cpu"]) == 0
    return run, cases


def labels_of(path: Path, layout: str = "brats2021") -> np.ndarray:
    """A NIfTI label map as model classes in the suite's (Z, Y, X) order."""
    return dl.map_labels(np.asanyarray(nib.load(str(path)).dataobj).transpose(2, 1, 0), layout)


def test_exported_predictions_score_as_the_run_did(exported):
    run, cases = exported
    per_case = pd.read_csv(run / "per_case_results.csv")
    splits = json.loads((run / "splits.json").read_text())
    units = sorted(d.name for d in (run / "predictions").iterdir() if d.name != "references")
    assert units == [f"unet3d_xs_seed_{s}" for s in sorted(int(s) for s in splits)]
    all_test = set()
    for seed in splits:
        test = splits[seed]["folds"][0]["test"]
        all_test |= set(test)
        folder = run / "predictions" / f"unet3d_xs_seed_{seed}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{c}.nii.gz" for c in test)
        for case_id in test:
            pred_file = folder / f"{case_id}.nii.gz"
            t1 = nib.load(str(cases / case_id / f"{case_id}_t1.nii.gz"))
            out = nib.load(str(pred_file))
            assert out.shape == t1.shape and out.get_data_dtype() == np.uint8
            np.testing.assert_array_equal(out.affine, t1.affine)
            assert set(np.unique(np.asanyarray(out.dataobj)).tolist()) <= {0, 1, 2, 4}
            truth = labels_of(cases / case_id / f"{case_id}_seg.nii.gz")
            got = brats_region_metrics(labels_of(pred_file), truth, spacing=t1.header.get_zooms()[::-1])
            row = per_case[(per_case.seed == int(seed)) & (per_case.case_id == case_id)].iloc[0]
            for region in ("wt", "tc", "et"):
                assert got[f"dice_{region}"] == row[f"dice_{region}"], (case_id, region)  # exactly
                assert got[f"hd95_{region}"] == pytest.approx(row[f"hd95_{region}"], abs=1e-6), (case_id, region)
    refs = run / "predictions" / "references"
    assert sorted(p.name for p in refs.iterdir()) == sorted(f"{c}.nii.gz" for c in all_test)
    for case_id in all_test:  # the ground truth is the source file, byte for byte
        assert (refs / f"{case_id}.nii.gz").read_bytes() == (cases / case_id / f"{case_id}_seg.nii.gz").read_bytes()


def test_a_single_checkpoint_predicts_new_cases_as_the_export(exported, tmp_path):
    run, cases = exported
    seed = "24"
    case_id = json.loads((run / "splits.json").read_text())[seed]["folds"][0]["test"][0]
    args = ["--run_dir", str(run), "--input", str(cases / case_id), "--output", str(tmp_path), "--device", "cpu",
            "--seeds", seed]
    assert predict.main(args) == 0
    exported_file = run / "predictions" / f"unet3d_xs_seed_{seed}" / f"{case_id}.nii.gz"
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(tmp_path / f"{case_id}.nii.gz")).dataobj),
                                  np.asanyarray(nib.load(str(exported_file)).dataobj))


@pytest.mark.parametrize("layout", ["brats2021", "brats2023"])
def test_ground_truth_survives_uncrop_and_label_mapping(exported, tmp_path, layout):
    """The cache's cropped classes, put back and relabelled, are the source segmentation (every label)."""
    run, cases = exported
    cfg = load_run_config(run)
    cache = open_prepared_cache(cfg, progress=False)
    for case_id in cache.case_ids:
        meta = cache.meta(case_id)
        box = tuple(slice(a, b) for a, b in meta["bbox"])
        full = uncrop(np.asarray(cache.label(case_id)), box, meta["original_shape"])
        out = tmp_path / f"{case_id}.nii.gz"
        write_segmentation(unmap_labels(full, layout), meta["source_files"][MODALITIES[0]], out)
        source = np.asanyarray(nib.load(meta["source_files"]["seg"]).dataobj)
        written = np.asanyarray(nib.load(str(out)).dataobj)
        expected = source if layout == "brats2021" else np.where(source == 4, 3, source)
        np.testing.assert_array_equal(written, expected)
        assert 4 in source  # every synthetic case has enhancing tumour: the ET label is exercised


def test_official_eval_without_its_environment_says_how_to_create_it(exported, capsys):
    run, _ = exported
    args = ["--results_dir", str(run), "--official_eval", "--brats_eval_python", "/nonexistent/bin/python"]
    assert evaluate_experiment.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and BRATS_EVAL_INSTALL in err[0]


@pytest.mark.skipif(not DEFAULT_BRATS_EVAL_PYTHON.exists(),
                    reason="the official BraTS evaluation environment is missing; create it with: "
                           f"{BRATS_EVAL_INSTALL}")
def test_official_eval_scores_the_exported_predictions(exported):
    run, cases = exported
    assert evaluate_experiment.main(["--results_dir", str(run), "--official_eval"]) == 0
    table = pd.read_csv(run / "official_brats_metrics.csv")
    assert list(table.columns[:4]) == ["model", "seed", "fold", "case_id"]
    for region in ("wt", "tc", "et"):
        for column in (f"lesionwise_dsc_mean_{region}", f"lesionwise_hd95_mean_{region}", f"global_dsc_{region}",
                       f"global_hd95_{region}", f"all_instance_f1_{region}"):
            assert column in table.columns
    per_case = pd.read_csv(run / "per_case_results.csv")
    assert len(table) == len(per_case)
    merged = table.merge(per_case, on=["model", "seed", "fold", "case_id"], validate="one_to_one")
    for region, labels in (("wt", (1, 2, 4)), ("tc", (1, 4)), ("et", (4,))):
        # The package's legacy Dice is the suite's Dice wherever the reference region is not empty; with
        # ET = 4 read as ET (the project's config), not as the GLI config's resection cavity.
        present = [np.isin(np.asanyarray(nib.load(str(cases / c / f"{c}_seg.nii.gz")).dataobj), labels).any()
                   for c in merged["case_id"]]
        assert any(present)
        np.testing.assert_allclose(merged.loc[present, f"global_dsc_{region}"],
                                   merged.loc[present, f"dice_{region}"], atol=1e-9)
