"""The preprocessing cache is never a case: with the default cache location (``{data_path}/preprocessed/
{dataset_version}``, inside the data folder) or any cache folder among the case folders, case discovery
(training, ``--preprocess_only``, export, ``predict.py``, the official evaluation) finds exactly the cases,
for every ``--dataset_version``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import evaluate_experiment
import integrated_experiment
import predict
from brats_data import PreprocessedCache, generate_synthetic_dataset
from brats_data.cases import discover_cases, find_input_cases, validate_case
from brats_data.definitions import DATASETS, SYNTHETIC_TASKS, DatasetDef, synthetic_def
from experiment.config import ExperimentConfig
from experiment.run_folder import OFFICIAL_METRICS_CSV
from inference.official_eval import BRATS_EVAL_INSTALL, DEFAULT_BRATS_EVAL_PYTHON
from tests.test_layouts import NNUNET_PLAIN_JSON, NNUNET_PLAIN_ORDER, NNUNET_PLAIN_VALUES, write_msd, write_nnunet
from utils.labels import MODALITIES

N_CASES = 3
SHAPE = (8, 8, 8)
# every folder record a --dataset_version selects: the shipped ones and the synthetic imitation of each task
FOLDER_RECORDS: dict[str, DatasetDef] = {
    **{name: d for name, d in DATASETS.items()},
    **{f"synthetic_{t}": synthetic_def(t) for t in SYNTHETIC_TASKS if t != "brats2021"},
}


def _config(data_path: Path, key: str) -> ExperimentConfig:
    """The configuration a user gets for a record with no --cache_dir (the default cache location)."""
    record = FOLDER_RECORDS.get(key)
    task = record.synthetic_task if record is not None and record.name == "synthetic" else "brats2021"
    version = "synthetic" if key.startswith("synthetic") else key
    return ExperimentConfig(data_path=str(data_path), dataset_version=version, synthetic_task=task or "brats2021",
                            dim="3d", models=["unet3d_xs"], device="cpu")


def _case_ids(record: DatasetDef) -> list[str]:
    tag = re.search(r"BraTS-([A-Z]+)-", record.case_pattern or "")
    if tag:
        return [f"BraTS-{tag[1]}-{i:05d}-000" for i in range(N_CASES)]
    if record.layout.name == "brats2018":
        return [f"Brats18_2013_{i}_1" for i in range(N_CASES)]
    return [f"BraTS2021_{i:05d}" for i in range(N_CASES)]


def _write_cases(folder: Path, record: DatasetDef) -> list[str]:
    """Tiny real NIfTI cases of ``record``'s layout in ``folder`` (its first group folder, for BraTS 2018)."""
    layout, ids = record.layout, _case_ids(record)
    rng = np.random.default_rng(0)
    for i, case_id in enumerate(ids):
        case = folder / layout.groups[i % len(layout.groups)] / case_id
        case.mkdir(parents=True)
        for modality in MODALITIES:
            image = rng.integers(1, 100, SHAPE).astype(np.int16)
            nib.save(nib.Nifti1Image(image, np.eye(4)), str(case / layout.file_name(case_id, layout.suffix(modality))))
        seg = np.zeros(SHAPE, dtype=np.uint8)
        seg[2:5, 2:5, 2:5] = max(record.labels)
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(case / layout.file_name(case_id, layout.seg_suffix)))
    return ids


def _build_cache(cache_dir: Path, cfg: ExperimentConfig) -> None:
    """A cache as the suite writes it, of the cases it finds (one folder per case, .lock, meta.json ...)."""
    cache = PreprocessedCache(cache_dir, discover_cases(cfg.data_path, cfg.dataset_def()))
    cache.build(progress=False)
    assert sorted(p.name for p in cache_dir.iterdir() if p.is_dir()) == cache.case_ids


def _assert_finds_exactly(cfg: ExperimentConfig, ids: list[str], input_dir: Path) -> None:
    cases = discover_cases(cfg.data_path, cfg.dataset_def())
    assert [c.case_id for c in cases] == sorted(ids)
    for case in cases:
        validate_case(case)
    assert [c.case_id for c in find_input_cases(input_dir, prefer=cfg.dataset_def())] == sorted(ids)


# ----------------------------------------------------------------------------- discovery, every record
@pytest.mark.parametrize("key", FOLDER_RECORDS)
def test_the_default_cache_in_a_release_layout_is_no_case(key, tmp_path):
    """``--data_path DATA`` with the release's folders under it: the cache at DATA/preprocessed/... is no case."""
    record = FOLDER_RECORDS[key]
    cfg = _config(tmp_path / "data", key)
    root = tmp_path / "data" / record.root
    ids = _write_cases(root, record)
    _build_cache(cfg.resolved_cache_dir(), cfg)
    assert cfg.resolved_cache_dir().is_relative_to(tmp_path / "data" / "preprocessed")
    _assert_finds_exactly(cfg, ids, root)
    _build_cache(cfg.resolved_cache_dir(), cfg)  # a second command (evaluation, export) finds the same cases


@pytest.mark.parametrize("key", [k for k, d in FOLDER_RECORDS.items() if d.case_pattern is not None])
def test_the_default_cache_beside_the_case_folders_is_no_case(key, tmp_path):
    """``--data_path`` the folder holding the case folders (BraTS 2023+ tasks): the default cache lands among the
    case folders, ``DATA/preprocessed/{dataset_version}``, and is never taken for a case."""
    record = FOLDER_RECORDS[key]
    data = tmp_path / "cases"
    cfg = _config(data, key)
    ids = _write_cases(data, record)
    _build_cache(cfg.resolved_cache_dir(), cfg)
    assert cfg.resolved_cache_dir().parent == data / "preprocessed"
    _assert_finds_exactly(cfg, ids, data)
    _build_cache(cfg.resolved_cache_dir(), cfg)


@pytest.mark.parametrize("key", FOLDER_RECORDS)
def test_any_cache_among_the_case_folders_is_no_case(key, tmp_path):
    """Whatever the record's ids: a cache folder named as the default one, a ``--cache_dir`` of another name and
    a folder of caches, all among the case folders (populated, with the cache's temporary folders), are no cases;
    BraTS 2018's group folder that holds them beside its case folders is still looked into (predict.py)."""
    record = FOLDER_RECORDS[key]
    cfg = _config(tmp_path / "data", key)
    root = tmp_path / "data" / record.root
    ids = _write_cases(root, record)
    folder = root / record.layout.groups[0]  # where case folders are looked for
    _build_cache(folder / "preprocessed" / cfg.dataset_version, cfg)
    _build_cache(folder / "my_cache", cfg)
    _build_cache(folder / "my_caches" / "run_a", cfg)
    (folder / "my_cache" / f".tmp-{ids[0]}-1-abc").mkdir()
    (folder / "preprocessed" / "empty_leftover").mkdir()
    _assert_finds_exactly(cfg, ids, root)


def test_a_case_folder_with_missing_files_is_still_a_bad_case_not_skipped(tmp_path):
    """The rule skips caches only: a case folder lacking its files is still found (and reported as a bad case)."""
    record = DATASETS["brats2024"]
    ids = _write_cases(tmp_path, record)
    for path in (tmp_path / ids[1]).iterdir():
        path.unlink()
    cases = discover_cases(tmp_path, record)
    assert [c.case_id for c in cases] == ids
    with pytest.raises(Exception, match="missing modality"):
        validate_case(cases[1])


@pytest.mark.parametrize("task_folder", [False, True])
def test_msd_with_the_default_cache(task_folder, tmp_path):
    """MSD: ``--data_path`` above Task01_BrainTumour or Task01_BrainTumour itself (the cache then inside it)."""
    write_msd(tmp_path / "data", N_CASES)
    data = tmp_path / "data" / "Task01_BrainTumour" if task_folder else tmp_path / "data"
    cfg = _config(data, "msd")
    _build_cache(cfg.resolved_cache_dir(), cfg)
    _assert_finds_exactly(cfg, [f"BRATS_{i + 1:03d}" for i in range(N_CASES)], tmp_path / "data" / "Task01_BrainTumour")


def test_nnunet_with_the_default_cache(tmp_path):
    """nnU-Net: ``--data_path`` is the dataset folder, so the default cache lies inside it."""
    data = tmp_path / "Dataset001_BraTS"
    write_nnunet(data, N_CASES, NNUNET_PLAIN_JSON, NNUNET_PLAIN_ORDER, NNUNET_PLAIN_VALUES)
    cfg = _config(data, "nnunet")
    _build_cache(cfg.resolved_cache_dir(), cfg)
    assert cfg.resolved_cache_dir().parent == data / "preprocessed"
    _assert_finds_exactly(cfg, [f"BraTS2021_{i:05d}" for i in range(N_CASES)], data)


# ----------------------------------------------------------------------------- end to end, default cache
E2E_CASES = 6
E2E_SHAPE = (32, 32, 32)
HAS_OFFICIAL = DEFAULT_BRATS_EVAL_PYTHON.exists()


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    """One generated data set per task, made once: ``(data_path, folder holding the case folders, ids)``.
    brats2024 / brats_ped: ``--data_path`` is the folder of the case folders (the default cache lands among
    them); brats2021: the release layout ``DATA/BRATS2021/BraTS2021_Training_Data``."""
    made: dict[str, tuple[Path, Path, list[str]]] = {}

    def make(task: str) -> tuple[Path, Path, list[str]]:
        if task not in made:
            generated = generate_synthetic_dataset(tmp_path_factory.mktemp(f"gen_{task}"), n_cases=E2E_CASES, seed=0,
                                                   shape=E2E_SHAPE, difficulty="easy", task=task)
            data = tmp_path_factory.mktemp(f"{task}_data") / "data"
            cases = data / DATASETS[task].root if task == "brats2021" else data
            shutil.copytree(generated, cases, ignore=shutil.ignore_patterns("*.json"))
            made[task] = data, cases, sorted(p.name for p in cases.iterdir() if p.is_dir())
        return made[task]

    return make


@pytest.mark.slow
@pytest.mark.parametrize("task", ["brats2024", "brats_ped", "brats2021"])
def test_train_evaluate_export_predict_with_the_default_cache(task, task_data, tmp_path):
    data, cases, ids = task_data(task)
    assert len(ids) == E2E_CASES
    results = tmp_path / "results"
    train = ["--data_path", str(data), "--dataset_version", task, "--dim", "3d", "--models", "unet3d_xs",
             "--epochs", "1", "--iters_per_epoch", "2", "--batch_size", "2", "--patch_size", "32", "32", "32",
             "--num_workers", "0", "--preprocess_workers", "1", "--device", "cpu", "--no_efficiency",
             "--tracker", "none", "--results_dir", str(results)]
    assert integrated_experiment.main(train) == 0
    cache = data / "preprocessed" / task  # the default location, no --cache_dir
    assert sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")) == ids
    assert integrated_experiment.main([*train, "--preprocess_only"]) == 0  # a second discovery, cache present
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    splits = json.loads((run / "splits.json").read_text())
    test_ids = sorted(splits["24"]["folds"][0]["test"])
    assert test_ids and set(test_ids) <= set(ids)

    evaluate = ["--results_dir", str(run), "--export_predictions", "--device", "cpu"]
    assert evaluate_experiment.main([*evaluate, "--official_eval"] if HAS_OFFICIAL else evaluate) == 0
    for folder in ("unet3d_xs_seed_24", "references"):
        assert sorted(p.name for p in (run / "predictions" / folder).iterdir()) == [f"{c}.nii.gz" for c in test_ids]
    out = tmp_path / "pred"
    # predict.py on the data folder (the folder of the case folders, beside the default cache for the new tasks)
    assert predict.main(["--run_dir", str(run), "--input", str(cases if task == "brats2021" else data),
                         "--output", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in ids]
    if not HAS_OFFICIAL:
        pytest.skip(f"the official BraTS evaluation environment is missing ({DEFAULT_BRATS_EVAL_PYTHON}); the rest "
                    f"passed; create it with: {BRATS_EVAL_INSTALL}")
    official = pd.read_csv(run / OFFICIAL_METRICS_CSV)
    assert sorted(official["case_id"]) == test_ids
