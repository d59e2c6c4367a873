"""Every BraTS task of 2023-2025 as a data set record: a tiny generated data set of each new task runs
train -> test -> export -> official evaluation -> predict.py end to end, with the task's own columns
and label values; the records themselves (labels, regions, round trips, bad input)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import evaluate_experiment
import predict
from brats_data import generate_synthetic_dataset
from brats_data.cases import BadCaseError, discover_cases, read_case, validate_case
from brats_data.definitions import DATASETS, SYNTHETIC_TASKS, DatasetDef, dataset_def, synthetic_def
from experiment.config import ExperimentConfig
from experiment.run_folder import per_case_columns, result_columns
from experiment_runner import run_integrated_experiment
from inference.export import written_as
from inference.official_eval import BRATS_EVAL_INSTALL, DEFAULT_BRATS_EVAL_PYTHON, run_official_evaluation
from metrics.segmentation import dice_coefficient
from models import get_model
from utils.labels import CLASSIC

NEW_TASKS = ("brats2024", "brats_met", "brats_men", "brats_ped", "brats_ssa")
SHAPE = (40, 40, 32)
N_CASES = 6
HAS_OFFICIAL = DEFAULT_BRATS_EVAL_PYTHON.exists()


# ----------------------------------------------------------------------------- the records
def test_the_records_say_what_the_official_configurations_say():
    ped = DATASETS["brats_ped"]
    assert ped.scheme.region_classes == {"wt": (1, 2, 3, 4), "tc": (1, 2, 3), "et": (1,), "netc": (2,), "cc": (3,),
                                         "ed": (4,)}
    assert ped.write_back == (0, 1, 2, 3, 4) and ped.official_config == "ped"
    gli = DATASETS["brats2024"]
    assert [c.key for c in gli.scheme.classes] == ["netc", "snfh", "et", "rc"]
    assert gli.scheme.region_classes["rc"] == (4,) and gli.official_config == "gli"
    assert DATASETS["brats_met"].official_config == "mets" and DATASETS["brats_men"].official_config == "MenPre"
    assert DATASETS["brats2021"].scheme == CLASSIC and DATASETS["brats2021"].write_back == (0, 1, 2, 4)
    # columns: every region's Dice/HD95/NSD, Dice of classes that are not a region; the classic ones unchanged
    assert CLASSIC.metric_keys == ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et", "nsd_wt",
                                   "nsd_tc", "nsd_et", "dice_ncr", "dice_ed")
    assert "dice_rc" in gli.scheme.metric_keys and "nsd_cc" in ped.scheme.metric_keys
    assert DATASETS["brats_met"].scheme.class_dice == {"netc": 1, "snfh": 2}
    for definition in DATASETS.values():
        assert DatasetDef.from_dict(definition.to_dict()) == definition
        classes = np.arange(definition.num_classes)
        np.testing.assert_array_equal(definition.map_labels(definition.unmap_labels(classes)), classes)


def test_models_get_the_data_sets_classes():
    import torch

    for name in ("unet3d_xs", "dualbranch_01_unet_xs", "unetr"):
        model = get_model(name, "3d", (32, 32, 32), num_classes=DATASETS["brats_ped"].num_classes)
        assert model(torch.zeros(1, 2, 32, 32, 32)).shape == (1, 5, 32, 32, 32), name
    assert get_model("unet3d_xs", "3d", (32, 32, 32))(torch.zeros(1, 2, 32, 32, 32)).shape[1] == 4  # the default
    with pytest.raises(ValueError, match="num_classes"):
        get_model("unet3d_xs", "3d", (32, 32, 32), num_classes=1)


def test_bad_input_is_named(tmp_path):
    """A label outside the scheme, a case id that does not fit the task: one line naming case and file."""
    root = generate_synthetic_dataset(tmp_path, n_cases=2, seed=0, shape=SHAPE, difficulty="easy", task="brats_men")
    case = discover_cases(tmp_path, synthetic_def("brats_men"))[0]
    seg = nib.load(str(case.label_path))
    data = np.asanyarray(seg.dataobj).copy()
    data[0, 0, 0] = 4  # MEN has no label 4
    nib.save(nib.Nifti1Image(data, seg.affine, seg.header), str(case.label_path))
    with pytest.raises(BadCaseError, match=rf"case {case.case_id}: labels \[4\] outside the synthetic label set"):
        read_case(case)
    renamed = Path(root) / "not-a-brats-id"
    shutil.copytree(case.label_path.parent, renamed)
    bad = discover_cases(tmp_path, synthetic_def("brats_men"))
    with pytest.raises(BadCaseError, match="case not-a-brats-id: case id 'not-a-brats-id' does not fit"):
        validate_case(next(c for c in bad if c.case_id == "not-a-brats-id"))


def test_a_model_needing_modalities_the_data_set_lacks_is_refused(tmp_path, monkeypatch, capsys):
    import integrated_experiment
    from brats_data import definitions

    two = DatasetDef(**{**DATASETS["brats2021"].__dict__, "name": "brats2021", "modalities": ("t1ce", "flair")})
    monkeypatch.setitem(definitions.DATASETS, "brats2021", two)
    code = integrated_experiment.main(["--dataset_version", "brats2021", "--data_path", str(tmp_path),
                                       "--models", "unet3d_4modal_s", "--dim", "3d", "--patch_size", "32", "32", "32",
                                       "--results_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "model 'unet3d_4modal_s' needs the modalities t1, t2, which dataset brats2021 lacks" in err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- end to end, per task
def _task_data(tmp_path_factory, task: str) -> Path:
    """The generated cases of ``task`` copied to a folder named as no release names it: ``--data_path``
    points at the folder that holds the case folders."""
    root = tmp_path_factory.mktemp(f"gen_{task}")
    generated = generate_synthetic_dataset(root, n_cases=N_CASES, seed=0, shape=SHAPE, difficulty="easy", task=task)
    cases = tmp_path_factory.mktemp(f"{task}_release") / "Training"
    shutil.copytree(generated, cases, ignore=shutil.ignore_patterns("*.json"))
    return cases


@pytest.fixture(scope="module", params=NEW_TASKS)
def task_run(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """A trained, tested and exported run of each new task: (task, its data folder, its run folder)."""
    task = request.param
    data = _task_data(tmp_path_factory, task)
    work = tmp_path_factory.mktemp(f"run_{task}")
    cfg = ExperimentConfig(data_path=str(data), dataset_version=task, cache_dir=str(work / "cache"), epochs=1,
                           models=["unet3d_xs"], dim="3d", patch_size=[32, 32, 32], num_workers=0, device="cpu",
                           results_dir=str(work / "results"), patches_per_case=2, seeds=[24], lr=3e-3,
                           batch_size=2, measure_efficiency=False)
    summary = run_integrated_experiment(cfg, callbacks=[])
    assert summary.exit_code == 0, summary.failed
    assert evaluate_experiment.main(["--results_dir", str(summary.run_dir), "--export_predictions"]) == 0
    return task, data, summary.run_dir


def _classes(path: Path, definition: DatasetDef) -> np.ndarray:
    return definition.map_labels(np.asanyarray(nib.load(str(path)).dataobj))


def _dice_per_region(pred: np.ndarray, ref: np.ndarray, definition: DatasetDef) -> dict[str, float]:
    return {region: dice_coefficient(np.isin(pred, classes), np.isin(ref, classes))
            for region, classes in definition.scheme.region_classes.items()}


@pytest.mark.slow
def test_each_new_task_runs_end_to_end(task_run, tmp_path):
    task, data, run = task_run
    definition = DATASETS[task]
    scheme = definition.scheme
    per_case = pd.read_csv(run / "per_case_results.csv")
    assert list(per_case.columns) == per_case_columns(scheme)  # exactly the task's regions and classes
    results = pd.read_csv(run / "integrated_experiment_results.csv")
    assert list(results.columns[:len(result_columns(scheme)) - 10]) == result_columns(scheme)[:-10]
    assert results[[f"test_dice_{r.key}" for r in scheme.regions]].notna().all().all()
    mean = per_case[[f"dice_{r}" for r in ("wt", "tc", "et")]].mean(axis=1).mean()
    assert results["test_dice_mean"].iloc[0] == pytest.approx(mean)
    epochs = pd.read_csv(run / "all_epochs_results.csv")
    assert {f"val_dice_{r.key}" for r in scheme.regions} <= set(epochs.columns)

    # re-evaluation reproduces the run's test metrics, in the task's columns
    assert evaluate_experiment.main(["--results_dir", str(run)]) == 0
    evaluation = pd.read_csv(run / "evaluation_results.csv")
    test_columns = [c for c in results.columns if c.startswith("test_")]
    pd.testing.assert_frame_equal(evaluation[test_columns], results[test_columns], check_exact=True)

    # export: predictions in the task's values, references copied; each exported prediction scored against its
    # exported reference gives the run's per-case Dice of every region (so the files are the run's test predictions,
    # at the right place and in the right values: a blank or shifted export would not score the same)
    exported = {p.name.removesuffix(".nii.gz"): p for p in (run / "predictions" / "unet3d_xs_seed_24").glob("*.nii.gz")}
    assert sorted(exported) == sorted(per_case["case_id"])
    references = run / "predictions" / "references"
    for case_id, path in exported.items():
        assert set(np.unique(np.asanyarray(nib.load(str(path)).dataobj))) <= definition.labels
        row = per_case.set_index("case_id").loc[case_id]
        dice = _dice_per_region(_classes(path, definition), _classes(references / f"{case_id}.nii.gz", definition),
                                definition)
        for region, value in dice.items():
            assert value == pytest.approx(row[f"dice_{region}"], abs=1e-9), (case_id, region)
    assert per_case[[f"dice_{r}" for r in ("wt", "tc", "et")]].to_numpy().mean() > 0.0  # it did segment
    # predict.py on the release folder: the task's values, the inputs' grid, and for the test cases the very
    # labels the run exported (same checkpoint, same settings)
    out = tmp_path / "pred"
    assert predict.main(["--run_dir", str(run), "--input", str(data), "--output", str(out), "--device", "cpu"]) == 0
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == N_CASES
    for path in written:
        assert set(np.unique(np.asanyarray(nib.load(str(path)).dataobj))) <= definition.labels
    predicted = {p.name.removesuffix(".nii.gz"): p for p in written}
    assert set(exported) <= set(predicted), (sorted(exported), sorted(predicted))
    for case_id, path in exported.items():
        image, export = nib.load(str(predicted[case_id])), nib.load(str(path))
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), np.asanyarray(export.dataobj), err_msg=case_id)
        np.testing.assert_allclose(image.affine, export.affine)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OFFICIAL, reason="the official BraTS evaluation environment is missing "
                    f"({DEFAULT_BRATS_EVAL_PYTHON}); enable with: {BRATS_EVAL_INSTALL}")
def test_the_official_evaluation_of_each_new_task_equals_ours(task_run):
    """The official evaluation with the task's own configuration: its regions' columns, and its legacy Dice equal to
    the suite's wherever the reference region is not empty (the configuration reads the task's labels)."""
    task, _, run = task_run
    assert_official_equals_ours(run, DATASETS[task], pd.read_csv(run / "per_case_results.csv"))


def assert_official_equals_ours(run: Path, definition: DatasetDef, per_case: pd.DataFrame) -> None:
    table = run_official_evaluation(run)
    assert {f"global_dsc_{r.key}" for r in definition.scheme.regions} <= set(table.columns), sorted(table.columns)
    assert len(table) == len(per_case)
    merged = table.merge(per_case, on=["model", "seed", "fold", "case_id"], validate="one_to_one")
    references = {c: definition.map_labels(np.asanyarray(nib.load(str(run / "predictions" / "references" /
                                                                       f"{c}.nii.gz")).dataobj))
                  for c in merged["case_id"]}
    checked = 0
    for region, classes in definition.scheme.region_classes.items():
        present = [bool(np.isin(references[c], classes).any()) for c in merged["case_id"]]
        np.testing.assert_allclose(merged.loc[present, f"global_dsc_{region}"],
                                   merged.loc[present, f"dice_{region}"], atol=1e-9, err_msg=region)
        checked += sum(present)
    assert checked > 0


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OFFICIAL, reason="the official BraTS evaluation environment is missing "
                    f"({DEFAULT_BRATS_EVAL_PYTHON}); enable with: {BRATS_EVAL_INSTALL}")
def test_msd_data_are_scored_officially_after_relabelling(tmp_path):
    """MSD numbers its labels its own way (1 edema, 2 non-enhancing, 3 enhancing): the official evaluation sees
    them relabelled to BraTS 2023 values, and its Dice equals the suite's; the exported files keep MSD's values."""
    from tests.test_layouts import write_msd

    write_msd(tmp_path / "data", 6)
    cfg = ExperimentConfig(dataset_version="msd", data_path=str(tmp_path / "data"), dim="3d", models=["unet3d_xs"],
                           patch_size=[16, 32, 32], epochs=1, num_workers=0, device="cpu", measure_efficiency=False,
                           iters_per_epoch=2, results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"))
    summary = run_integrated_experiment(cfg, callbacks=[])
    assert summary.exit_code == 0, summary.failed
    assert evaluate_experiment.main(["--results_dir", str(summary.run_dir), "--export_predictions"]) == 0
    definition = cfg.dataset_def()
    assert definition.write_back == (0, 2, 1, 3) and definition.official_values == (0, 1, 2, 3)
    assert_official_equals_ours(summary.run_dir, definition, pd.read_csv(summary.run_dir / "per_case_results.csv"))


@pytest.mark.parametrize("task", NEW_TASKS)
def test_labels_written_back_are_the_tasks_own_values(task, tmp_path):
    """The ground truth read into model classes and written back by predict.py's rule gives the source file's
    values exactly: PED's ET stays 1, GLI post-treatment's RC stays 4."""
    generate_synthetic_dataset(tmp_path, n_cases=N_CASES, seed=0, shape=SHAPE, difficulty="easy", task=task)
    definition = dataset_def(task)
    cases = discover_cases(tmp_path, synthetic_def(task))
    seen = set()
    for case in cases:
        raw = read_case(case)
        source = np.asanyarray(nib.load(str(case.label_path)).dataobj).transpose(2, 1, 0)
        writer = written_as(case, definition)
        np.testing.assert_array_equal(writer.unmap_labels(raw.label), source)
        seen |= set(np.unique(source).tolist())
    assert seen == set(definition.labels)  # every value of the scheme occurs in the tiny data set
    if task == "brats_ped":
        assert definition.unmap_labels(np.array([1]))[0] == 1  # ET
    if task == "brats2024":
        assert definition.unmap_labels(np.array([4]))[0] == 4  # RC


def test_a_classic_run_writes_brats2023_names_with_et_3_and_ped_keeps_its_own():
    classic_2023 = DATASETS["brats2023"]
    case = type("Case", (), {"dataset": classic_2023})()
    assert written_as(case, DATASETS["brats2021"]) is classic_2023  # same classes: the case's own numbering
    assert written_as(case, DATASETS["brats_ped"]) is DATASETS["brats_ped"]  # other classes: the run's


def test_synthetic_tasks_are_the_records_of_their_task():
    for task in SYNTHETIC_TASKS:
        definition = synthetic_def(task)
        assert definition.name == "synthetic" and definition.scheme == dataset_def(task if task != "brats2021"
                                                                                    else "brats2021").scheme
    assert synthetic_def("brats2021") is DATASETS["synthetic"]
    assert ExperimentConfig(dataset_version="synthetic", synthetic_task="brats_ped").dataset_def().num_classes == 5


def test_a_configs_data_set_record_is_one_value_and_writes_nothing_to_it(tmp_path):
    """``dataset_def()`` is a pure function of the configuration: it leaves ``dataset`` alone, gives the same
    record on every call, and an MSD dataset.json written after the configuration was made is read then."""
    from tests.test_layouts import write_msd

    cfg = ExperimentConfig(dataset_version="msd", data_path=str(tmp_path / "data"))  # no data yet
    with pytest.raises(ValueError, match="dataset.json"):
        cfg.dataset_def()
    write_msd(tmp_path / "data", 2)
    record = cfg.dataset_def()
    assert cfg.dataset is None and cfg.dataset_def() is record and record.write_back == (0, 2, 1, 3)
    recorded = ExperimentConfig.from_dict({**cfg.to_dict(), "dataset": record.to_dict()})
    assert recorded.dataset_def() == record  # the record a run folder's config.json holds
    synthetic = ExperimentConfig(dataset_version="synthetic", data_path=str(tmp_path / "none"))
    assert synthetic.dataset_def() is synthetic_def() and synthetic.dataset is None
