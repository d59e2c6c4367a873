"""Segmentations as NIfTI files the BraTS way, and the official BraTS evaluation of a run's test predictions.

- :func:`predict_folder` (``predict.py``): new cases in any BraTS layout -> ``OUT/{case_id}.nii.gz``.
  Each case gets the run's preprocessing (the cache's normalisation and brain crop, the same
  ``brats_data`` functions), sliding-window inference with the run's settings, the softmax averaged
  over the chosen best checkpoints (and, with ``tta``, over every mirrored input), argmax, the crop put
  back into the original grid, and the labels of the case's layout (ET = 4 for BraTS 2018/2021, 3 for
  2023; an MSD or nnU-Net dataset folder's own label values, from its dataset.json), written with the grid,
  affine and header of the case's T1 file (MSD: its 4D image, spatial axes only), as uint8.
- :func:`export_run_predictions` (``evaluate_experiment.py --export_predictions``): the test cases of
  every best checkpoint of a run, from the run's cache, as ``RUN/predictions/{unit}/{case_id}.nii.gz``,
  and their ground truth, copied from the source files, as ``RUN/predictions/references/{case_id}.nii.gz``.
- :func:`run_official_evaluation` (``evaluate_experiment.py --official_eval``): the official package
  (``brats-evaluation``, built on panoptica) in its own environment scores the exported folders and
  the per-case rows go to ``RUN/official_brats_metrics.csv``.

A single forward (one checkpoint, no mirroring) is labelled by the argmax of its logits, exactly as the
run's evaluation (:func:`experiment.evaluation.predict_volume`) does, so exported predictions score the
same as the run's ``per_case_results.csv``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

import data_loader as dl
from brats_data.cache import preprocess_image
from brats_data.cases import (
    LAYOUTS,
    NIFTI_EXTENSIONS,
    VERSION_ROOTS,
    CaseRecord,
    find_case,
    find_dataset_folder_cases,
    read_images,
    unmap_labels,
)
from experiment import evaluation
from experiment.config import ExperimentConfig, load_run_config, unit_name
from experiment.data import open_prepared_cache
from experiment.evaluation import cosine_weight_map
from experiment.run_folder import (
    OFFICIAL_METRICS_CSV,
    PREDICTIONS_DIR,
    REFERENCES_DIR,
    SPLITS_JSON,
    RunFolder,
)
from utils.checkpoint import BEST_KEYS, CheckpointError, load_checkpoint
from utils.distributed import resolve_device
from utils.experiment_utils import get_model, model_spec
from utils.io import write_csv
from utils.labels import MODALITIES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BRATS_EVAL_VERSION = "0.0.10"  # PyPI brats-evaluation (import name brats_evaluation), and its panoptica
PANOPTICA_VERSION = "2.1.7"
BRATS_EVAL_INSTALL = (f"python3 -m venv .venv-brats-eval && .venv-brats-eval/bin/pip install "
                      f"brats-evaluation=={BRATS_EVAL_VERSION} panoptica=={PANOPTICA_VERSION}")
DEFAULT_BRATS_EVAL_PYTHON = PROJECT_ROOT / ".venv-brats-eval" / "bin" / "python"
ET4_CONFIG = PROJECT_ROOT / "configs" / "brats_evaluation_gli_et4.yaml"  # the GLI config with ET = 4
UNIT_PATTERN = re.compile(r"^(?P<model>.+)_seed_(?P<seed>-?\d+)(?:_fold_(?P<fold>\d+))?$")


class OfficialEvaluationError(RuntimeError):
    """The official BraTS evaluation could not run or failed (the message is one line)."""


# ----------------------------------------------------------------------------- run folders and checkpoints
def parse_unit(name: str) -> tuple[str, int, int] | None:
    """(model, seed, fold) of a unit name (:func:`experiment.config.unit_name`), ``None`` if it is not one."""
    match = UNIT_PATTERN.match(name)
    return None if match is None else (match["model"], int(match["seed"]), int(match["fold"] or 0))


def open_run(run_dir: str | Path, **runtime: Any) -> ExperimentConfig:
    """The run's configuration (:func:`load_run_config` with runtime overrides); the folder must be a run's."""
    if not RunFolder.is_run_folder(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run folder (config.json and {SPLITS_JSON} are needed)")
    return load_run_config(run_dir, **runtime)


@dataclass
class TestUnit:
    """One best checkpoint of a run and the test cases of its seed and fold."""

    path: Path
    checkpoint: dict[str, Any]
    model: str
    seed: int
    fold: int
    test_ids: list[str]

    @property
    def key(self) -> dict[str, Any]:
        return {"model": self.model, "seed": self.seed, "fold": self.fold}


def _test_unit(run: RunFolder, splits: dict[str, Any], path: Path) -> TestUnit:
    ckpt = load_checkpoint(path, BEST_KEYS + ("seed", "fold"))
    seed, fold = int(ckpt["seed"]), int(ckpt["fold"])
    split = next((f for f in splits.get(str(seed), {}).get("folds", []) if f["fold"] == fold), None)
    if split is None:
        raise CheckpointError(f"{path}: seed {seed} fold {fold} is not in {run / SPLITS_JSON}")
    return TestUnit(path, ckpt, ckpt["model_name"], seed, fold, list(split["test"]))


def run_test_units(run_dir: str | Path, cfg: ExperimentConfig) -> Iterator[TestUnit]:
    """Every ``*_best.pth`` of the run with its test split, loaded (weights-only) one at a time as iterated,
    in file-name order; a run without checkpoints raises at once."""
    run = RunFolder(run_dir, cfg.use_5fold)
    splits, checkpoints = run.read_splits() or {}, run.best_checkpoints()
    if not checkpoints:
        raise FileNotFoundError(f"no *_best.pth checkpoints in {run_dir}")
    return (_test_unit(run, splits, path) for path in checkpoints)


def select_checkpoints(run_dir: str | Path, cfg: ExperimentConfig, models: Sequence[str] | None = None,
                       seeds: Sequence[int] | None = None, folds: Sequence[int] | None = None) -> list[Path]:
    """The best checkpoints to ensemble: those of ``models`` (default: the run's one model; a run of several
    models needs ``models``), restricted to ``seeds`` and ``folds`` when given."""
    found = {}
    for path in RunFolder(run_dir, cfg.use_5fold).best_checkpoints():
        unit = parse_unit(path.name.removesuffix("_best.pth"))
        if unit is not None and unit_name(*unit, cfg.use_5fold) == path.name.removesuffix("_best.pth"):
            found[path] = unit
    available = sorted({model for model, _, _ in found.values()})
    if not available:
        raise FileNotFoundError(f"no *_best.pth checkpoints in {run_dir}")
    if not models and len(available) > 1:
        raise ValueError(f"the run has best checkpoints of several models ({', '.join(available)}); "
                         "choose with --models")
    for model in models or ():
        if model not in available:
            raise ValueError(f"no best checkpoint of model {model!r} in {run_dir} (it has: {', '.join(available)})")
    chosen = [path for path, (model, seed, fold) in found.items()
              if model in (models or available) and (not seeds or seed in seeds) and (not folds or fold in folds)]
    if not chosen:
        raise ValueError(f"no best checkpoint in {run_dir} matches seeds {list(seeds or [])} folds {list(folds or [])}")
    return chosen


@dataclass
class Member:
    """One network of an ensemble and the input channels (canonical modality indices) it reads."""

    name: str
    model: nn.Module
    channels: list[int]


def load_member(checkpoint: dict[str, Any], cfg: ExperimentConfig, device: torch.device, name: str = "") -> Member:
    """Build ``checkpoint["model_name"]`` for the run's dim and patch, load its weights, eval mode on ``device``."""
    model = get_model(checkpoint["model_name"], cfg.dim, cfg.spatial_patch)
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    return Member(name or checkpoint["model_name"], model,
                  dl.modality_indices(model_spec(checkpoint["model_name"]).modalities))


# ----------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class Inference:
    """Sliding-window settings (the run's unless overridden)."""

    dim: str
    patch: tuple[int, ...]
    overlap: float
    sw_batch_size: int
    amp: str
    device: torch.device

    @classmethod
    def of(cls, cfg: ExperimentConfig, device: torch.device, overlap: float | None = None,
           sw_batch_size: int | None = None) -> Inference:
        if overlap is not None and not 0.0 <= overlap < 1.0:
            raise ValueError(f"--overlap must be in [0, 1), got {overlap}")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise ValueError(f"--sw_batch_size must be >= 1, got {sw_batch_size}")
        return cls(cfg.dim, tuple(cfg.spatial_patch), cfg.overlap if overlap is None else overlap,
                   sw_batch_size or cfg.resolved_sw_batch_size(), cfg.resolved_amp(device), device)


def volume_logits(model: nn.Module, x: torch.Tensor, inf: Inference, weight_map: torch.Tensor) -> torch.Tensor:
    """Logits (K, Z, Y, X) of a volume ``x`` (C, Z, Y, X): evaluation's :func:`volume_logits` with ``inf``'s settings,
    so predictions are made exactly as the run's test."""
    return evaluation.volume_logits(model, x, inf.dim, inf.patch, inf.overlap, inf.sw_batch_size, inf.amp, weight_map)


def mirror_axes(dim: str) -> list[tuple[int, ...]]:
    """Test-time mirroring: every subset of the spatial axes of a (C, Z, Y, X) volume (8 in 3D; in 2D the
    in-plane axes only, 4), the identity first."""
    axes = (1, 2, 3) if dim == "3d" else (2, 3)
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]


def predict_crop(members: Sequence[Member], image: np.ndarray, inf: Inference, *, tta: bool = False,
                 probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Label map (Z, Y, X) uint8 of a preprocessed volume ``image`` (4, Z, Y, X), and with ``probabilities``
    the class probabilities (K, Z, Y, X) float32: the softmax averaged over members and mirrorings.

    One forward (one member, no ``tta``) is labelled by the argmax of its logits, as in evaluation."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(inf.device)
    weight_map = cosine_weight_map(inf.patch).to(inf.device)
    flips = mirror_axes(inf.dim) if tta else [()]
    if len(members) * len(flips) == 1:
        logits = volume_logits(members[0].model, x[members[0].channels], inf, weight_map)
        probs = torch.softmax(logits, 0) if probabilities else None
        return logits.argmax(0).to(torch.uint8).cpu().numpy(), None if probs is None else probs.cpu().numpy()
    total = None
    for member in members:
        xm = x[member.channels]
        for axes in flips:
            logits = volume_logits(member.model, xm.flip(axes) if axes else xm, inf, weight_map)
            p = torch.softmax(logits, 0)
            p = p.flip(axes) if axes else p
            total = p if total is None else total.add_(p)
    probs = total / (len(members) * len(flips))
    return probs.argmax(0).to(torch.uint8).cpu().numpy(), probs.cpu().numpy() if probabilities else None


def preprocess_case(case: CaseRecord) -> tuple[np.ndarray, tuple[slice, ...], tuple[int, ...]]:
    """A new case as the cache stores one: (image (4, Z, Y, X) cropped to the brain and normalised per
    modality, as ``brats_data.cache.build_case`` does; the crop box; the original (Z, Y, X) shape).

    The segmentation, if any, is not read: the box is the brain's (the cache also includes the tumour,
    which lies inside the brain in BraTS data)."""
    raw = read_images(case)
    image, box = preprocess_image(raw.image, raw.label)
    return image, box, raw.label.shape


def uncrop(array: np.ndarray, box: Sequence[slice], shape: Sequence[int], background: Any = 0) -> np.ndarray:
    """``array`` (..., *crop) placed at ``box`` of a volume of ``shape`` (the leading axes kept); the rest is
    ``background`` (a scalar, or one value per leading index such as class probabilities)."""
    lead = array.shape[:array.ndim - len(shape)]
    out = np.empty(lead + tuple(shape), dtype=array.dtype)
    out[...] = np.reshape(background, np.shape(background) + (1,) * len(shape))
    out[(Ellipsis, *box)] = array
    return out


# ----------------------------------------------------------------------------- NIfTI output
def _replace_with(path: Path, write: Any) -> None:
    """``write(tmp)`` to a temporary ``.nii.gz``/``.npz`` beside ``path``, then rename it onto ``path``."""
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_segmentation(labels: np.ndarray, like: str | Path, path: str | Path) -> None:
    """Label map (Z, Y, X) as a uint8 NIfTI with the grid, affine and header of the file ``like``."""
    ref = nib.load(str(like))
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    data = np.ascontiguousarray(np.asarray(labels, dtype=np.uint8).transpose(2, 1, 0))
    if data.shape != ref.shape[:3]:
        raise ValueError(f"label map of shape {data.shape} (X, Y, Z) does not fit {like} of shape {ref.shape}")
    image = type(ref)(data, ref.affine, header)
    image.set_data_dtype(np.uint8)
    _replace_with(Path(path), lambda tmp: nib.save(image, str(tmp)))


def write_probabilities(probs: np.ndarray, layout: str, path: str | Path) -> None:
    """Class probabilities (K, Z, Y, X) as ``.npz``: ``probabilities`` float16 (K, X, Y, Z), the array order of
    the NIfTI files, and ``labels``, the BraTS label of each channel in the layout's convention."""
    payload = {"probabilities": np.ascontiguousarray(probs.transpose(0, 3, 2, 1)).astype(np.float16),
               "labels": unmap_labels(np.arange(probs.shape[0]), layout)}

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **payload)

    _replace_with(Path(path), save)


def copy_reference(source: str | Path, path: str | Path) -> None:
    """The ground-truth file, copied as is (a ``.nii`` one is re-saved as ``.nii.gz``)."""
    source = Path(source)
    if source.name.endswith(".nii.gz"):
        _replace_with(Path(path), lambda tmp: shutil.copyfile(source, tmp))
    else:
        _replace_with(Path(path), lambda tmp: nib.save(nib.load(str(source)), str(tmp)))


# ----------------------------------------------------------------------------- predict.py
def _has_nifti(folder: Path) -> bool:
    return any(p.is_file() and p.name.endswith(NIFTI_EXTENSIONS) for p in folder.iterdir())


def _cases_in(folder: Path, prefer: str | None, depth: int) -> list[CaseRecord]:
    dataset_cases = find_dataset_folder_cases(folder)  # MSD / nnU-Net folder (dataset.json), or its images*
    if dataset_cases is not None:
        return dataset_cases
    case = find_case(folder, prefer)
    if case is not None:
        return [case]
    if _has_nifti(folder):
        raise dl.BadCaseError(folder.name, folder, "its NIfTI files fit no BraTS layout: the four modalities are "
                              "needed ({case}_{t1,t1ce,t2,flair}.nii.gz, or {case}-{t1n,t1c,t2w,t2f}.nii.gz)")
    if depth == 0:
        return []
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [c for sub in subfolders for c in _cases_in(sub, prefer, depth - 1)]


def find_input_cases(input_dir: str | Path, prefer: str | None = None) -> list[CaseRecord]:
    """The cases of ``input_dir``: a case folder, or a folder of case folders (or of group folders of case
    folders, e.g. BraTS 2018's HGG/LGG), in any supported layout (``prefer`` tried first), sorted by id. An MSD or
    nnU-Net dataset folder (holding dataset.json) gives the cases of its ``imagesTs`` (else ``imagesTr``), its
    ``images*`` folder those of that folder; their labels are written back in the dataset.json's numbering."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    cases = sorted(_cases_in(root, prefer, depth=2), key=lambda c: c.case_id)
    if not cases:
        raise FileNotFoundError(f"no cases in {root} (a case folder CASE holds CASE_t1.nii.gz, CASE_t1ce.nii.gz, "
                                "CASE_t2.nii.gz, CASE_flair.nii.gz, or the BraTS 2023 names CASE-t1n.nii.gz ...)")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate case ids in {root}: {', '.join(sorted({i for i in ids if ids.count(i) > 1}))}")
    return cases


@dataclass
class PredictionSummary:
    output: Path
    n_cases: int
    checkpoints: list[str]
    seconds: float
    tta: bool

    def line(self) -> str:
        per_case = self.seconds / max(self.n_cases, 1)
        return (f"predicted {self.n_cases} case(s) with {len(self.checkpoints)} checkpoint(s)"
                f"{' x mirroring' if self.tta else ''} in {self.seconds:.1f} s ({per_case:.2f} s per case) -> {self.output}")


def predict_folder(run_dir: str | Path, input_dir: str | Path, output_dir: str | Path, *,
                   models: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                   folds: Sequence[int] | None = None, tta: bool = False, save_probabilities: bool = False,
                   overlap: float | None = None, sw_batch_size: int | None = None, device: str = "auto",
                   overwrite: bool = False, progress: bool = True) -> PredictionSummary:
    """Segment every case of ``input_dir`` with the ensemble of the chosen best checkpoints of ``run_dir``:
    ``OUT/{case_id}.nii.gz`` (and ``OUT/{case_id}.npz`` with ``save_probabilities``).

    Several ``models`` make one ensemble: every selected checkpoint weighs the same in the mean softmax.
    An output folder that already holds ``.nii.gz`` files is refused unless ``overwrite``.
    """
    out = Path(output_dir)
    existing = sorted(out.glob("*.nii.gz")) if out.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds predictions ({len(existing)} .nii.gz files); "
                              "pass --overwrite to replace them")
    cfg = load_run_config(run_dir, device=device)
    try:
        torch_device = resolve_device(cfg.device)
    except RuntimeError as exc:  # --device cuda without CUDA
        raise ValueError(str(exc)) from None
    inf = Inference.of(cfg, torch_device, overlap, sw_batch_size)
    cases = find_input_cases(input_dir, prefer=VERSION_ROOTS[cfg.dataset_version][1])
    paths = select_checkpoints(run_dir, cfg, models, seeds, folds)
    members = [load_member(load_checkpoint(p, BEST_KEYS), cfg, inf.device, p.name) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        image, box, shape = preprocess_case(case)
        labels, probs = predict_crop(members, image, inf, tta=tta, probabilities=save_probabilities)
        write_segmentation(unmap_labels(uncrop(labels, box, shape), case.layout), case.image_paths[MODALITIES[0]],
                           out / f"{case.case_id}.nii.gz")
        if probs is not None:
            background = np.eye(len(probs), 1, dtype=np.float32)[:, 0]  # outside the crop: background, certain
            write_probabilities(uncrop(probs, box, shape, background), case.layout, out / f"{case.case_id}.npz")
    return PredictionSummary(out, len(cases), [p.name for p in paths], time.perf_counter() - start, tta)


# ----------------------------------------------------------------------------- evaluate_experiment.py
def export_run_predictions(run_dir: str | Path, data_path: str | None = None, cache_dir: str | None = None,
                           device: str = "auto", progress: bool = True) -> Path:
    """Every best checkpoint's test predictions as ``RUN/predictions/{unit}/{case_id}.nii.gz`` (from the run's
    cache and settings, as its evaluation predicts them) and the ground truth of those cases as
    ``RUN/predictions/references/{case_id}.nii.gz``; returns ``RUN/predictions``."""
    cfg = open_run(run_dir, data_path=data_path, cache_dir=cache_dir)
    inf = Inference.of(cfg, resolve_device(device))
    cache, out = open_prepared_cache(cfg, progress=progress), Path(run_dir) / PREDICTIONS_DIR
    for unit in run_test_units(run_dir, cfg):
        name = unit_name(unit.model, unit.seed, unit.fold, cfg.use_5fold)
        member = load_member(unit.checkpoint, cfg, inf.device, name)
        for case_id in tqdm(unit.test_ids, desc=f"export {name}", unit="case", disable=not progress):
            meta = cache.meta(case_id)
            labels, _ = predict_crop([member], cache.image(case_id), inf)
            box = tuple(slice(a, b) for a, b in meta["bbox"])
            write_segmentation(unmap_labels(uncrop(labels, box, meta["original_shape"]), meta["layout"]),
                               meta["source_files"][MODALITIES[0]], out / name / f"{case_id}.nii.gz")
            copy_reference(meta["source_files"]["seg"], out / REFERENCES_DIR / f"{case_id}.nii.gz")
    return out


# Runs in the official package's environment (no suite imports there): scores each unit's cases with the
# package's evaluate_single_exam and turns the results into the package's CSV with its parse_seg_results.
_DRIVER = r"""
import json, sys
from pathlib import Path
try:
    from brats_evaluation import config_path, evaluate_single_exam, parse_seg_results
    from panoptica import Panoptica_Evaluator
except ImportError as exc:
    sys.exit(f"the official package is not importable by {sys.executable}: {exc}")
job = json.loads(Path(sys.argv[1]).read_text())
config = job["config"] if job["config"].endswith(".yaml") else str(config_path(job["config"]))
evaluator = Panoptica_Evaluator.load_from_config(config)
for unit, cases in job["units"].items():
    metrics = [evaluate_single_exam(pred, ref, case_id, evaluator) for case_id, pred, ref in cases]
    failed = [m for m in metrics if "error" in m]
    if failed:
        sys.exit(f"{unit} {failed[0]['subject_name']}: {failed[0]['error']}")
    summary = Path(job["out"]) / f"{unit}.json"
    summary.write_text(json.dumps({"metrics": metrics, "missings": []}, default=float))
    parse_seg_results(str(summary), str(Path(job["out"]) / f"{unit}.csv"))
"""


def official_config(layout: str) -> str:
    """The evaluation configuration for a layout's labels: the package's GLI config when ET is 3 (BraTS
    2023), else the project's copy of it with ET = 4 (``configs/brats_evaluation_gli_et4.yaml``)."""
    if layout not in LAYOUTS:
        raise OfficialEvaluationError(f"the official BraTS evaluation needs BraTS labels (1 NCR, 2 ED, 3/4 ET); "
                                      f"layout {layout!r} (an MSD or nnU-Net dataset) has its own numbering")
    return "gli" if int(unmap_labels(np.array([3]), layout)[0]) == 3 else str(ET4_CONFIG)


def run_official_evaluation(run_dir: str | Path, brats_eval_python: str | Path | None = None,
                            timeout: float | None = None) -> pd.DataFrame:
    """Score the exported predictions (:func:`export_run_predictions`) with the official BraTS evaluation in
    its own environment; writes and returns ``RUN/official_brats_metrics.csv``: model, seed, fold, case_id,
    then the package's lesion-wise and legacy (global) columns, as its ``parse_seg_results`` names them."""
    python = Path(brats_eval_python) if brats_eval_python else DEFAULT_BRATS_EVAL_PYTHON
    if not python.exists():
        raise OfficialEvaluationError(f"the official BraTS evaluation environment is missing ({python}); "
                                      f"create it with: {BRATS_EVAL_INSTALL}")
    cfg = open_run(run_dir)
    root = Path(run_dir) / PREDICTIONS_DIR
    units = {d.name: parse_unit(d.name) for d in sorted(root.glob("*")) if d.is_dir() and parse_unit(d.name)}
    if not units:
        raise FileNotFoundError(f"no exported predictions in {root}; run with --export_predictions first")
    jobs: dict[str, list[list[str]]] = {}
    for name in units:
        jobs[name] = []
        for pred in sorted((root / name).glob("*.nii.gz")):
            case_id, ref = pred.name.removesuffix(".nii.gz"), root / REFERENCES_DIR / pred.name
            if not ref.is_file():
                raise FileNotFoundError(f"no reference for {pred}: {ref} is missing (run --export_predictions)")
            jobs[name].append([case_id, str(pred.resolve()), str(ref.resolve())])
    with tempfile.TemporaryDirectory(prefix="brats-eval-") as tmp:
        job = {"config": official_config(VERSION_ROOTS[cfg.dataset_version][1]), "units": jobs, "out": tmp}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        done = subprocess.run([str(python), "-c", _DRIVER, str(Path(tmp) / "job.json")], capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
            raise OfficialEvaluationError(f"the official BraTS evaluation failed ({python}): {last}")
        frames = []
        for name, (model, seed, fold) in units.items():
            ids = [case_id for case_id, _, _ in jobs[name]]
            if not ids:
                continue
            rows = pd.read_csv(Path(tmp) / f"{name}.csv", dtype={"subject_id": str}).iloc[:len(ids)]  # then mean/std/median
            if list(rows["subject_id"]) != ids:
                raise OfficialEvaluationError(f"{name}: the package's CSV lists {list(rows['subject_id'])}, not {ids}")
            frames.append(rows.drop(columns="subject_id").assign(model=model, seed=seed, fold=fold, case_id=ids))
    table = pd.concat(frames, ignore_index=True)
    first = ["model", "seed", "fold", "case_id"]
    table = table[first + [c for c in table.columns if c not in first]]
    write_csv(Path(run_dir) / OFFICIAL_METRICS_CSV, table)
    return table
