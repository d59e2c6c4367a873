"""Segmentations written as NIfTI files the BraTS way: new scans (``predict.py``) and a run's test cases
(``evaluate_experiment.py --export_predictions``).

- :func:`predict_folder`: new cases in any supported layout -> ``OUT/{case_id}.nii.gz``. Each case gets the
  run's preprocessing (:func:`brats_data.preprocess_case`: the cache's normalisation and brain crop), the
  run's :class:`~inference.predictor.Predictor` over the chosen best checkpoints (the softmax averaged
  over them and, with ``tta``, over every mirrored input), the crop put back into the original grid, and
  the label values of the data set (:func:`written_as`: ET = 4 for BraTS 2018/2021 names, 3 for 2023 names;
  an MSD or nnU-Net dataset folder's own values, from its dataset.json; PED's ET = 1, GLI post-treatment's
  RC = 4 ...), written with the grid, affine and header of the case's T1 file (MSD: its 4D image, spatial
  axes only), as uint8.
  Under torchrun the cases are shared out over the ranks (rank r takes every world-size-th case from r),
  each rank writing its own: the same files as one process. Several run folders of one experiment
  (``experiment.sharding.open_runs``: the shards of a sweep) form one ensemble.
- :func:`export_run_predictions`: the test cases of every best checkpoint of a run, from the run's cache
  and with the run's settings, as ``RUN/predictions/{unit}/{case_id}.nii.gz``, and their ground truth,
  copied from the source files, as ``RUN/predictions/references/{case_id}.nii.gz``.

A single forward (one checkpoint, no mirroring) is labelled by the argmax of its logits, exactly as the
run's evaluation, so exported predictions score the same as the run's ``per_case_results.csv``. Every
file is written atomically (``utils.io.atomic_output``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from brats_data import CaseRecord, find_input_cases, preprocess_case, unmap_labels
from brats_data.definitions import DatasetDef
from experiment.data import open_prepared_cache
from experiment.run_folder import RunFolder
from experiment.sharding import open_runs, select_checkpoints
from inference.postprocess import checkpoint_rule, rule_hook
from inference.predictor import InferenceSettings, Predictor
from utils import distributed as du
from utils.checkpoint import BEST_KEYS, load_checkpoint
from utils.distributed import resolve_device
from utils.io import atomic_output
from utils.labels import MODALITIES, LabelScheme


# ----------------------------------------------------------------------------- NIfTI output
def uncrop(array: np.ndarray, box: Sequence[slice], shape: Sequence[int], background: Any = 0) -> np.ndarray:
    """``array`` (..., *crop) placed at ``box`` of a volume of ``shape`` (the leading axes kept); the rest is
    ``background`` (a scalar, or one value per leading index such as class probabilities)."""
    lead = array.shape[:array.ndim - len(shape)]
    out = np.empty(lead + tuple(shape), dtype=array.dtype)
    out[...] = np.reshape(background, np.shape(background) + (1,) * len(shape))
    out[(Ellipsis, *box)] = array
    return out


def _nifti_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


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
    with atomic_output(path, suffix=_nifti_suffix(Path(path))) as tmp:
        nib.save(image, str(tmp))


def write_probabilities(probs: np.ndarray, dataset: DatasetDef | str, path: str | Path,
                        regions: LabelScheme | None = None) -> None:
    """Probabilities (K, Z, Y, X) as ``.npz``: ``probabilities`` float16 (K, X, Y, Z), the array order of the NIfTI
    files, and ``labels``, the label value of each channel in the data set's convention. For a region-based model
    (``regions``: its scheme) the channels are regions: ``regions`` names them and ``labels`` holds the value each
    one paints (``region_order``)."""
    payload = {"probabilities": np.ascontiguousarray(probs.transpose(0, 3, 2, 1)).astype(np.float16)}
    if regions is None:
        payload["labels"] = unmap_labels(np.arange(probs.shape[0]), dataset)
    else:
        payload["regions"] = np.array([key for key, _ in regions.region_order])
        payload["labels"] = unmap_labels(np.array([cls for _, cls in regions.region_order]), dataset)
    with atomic_output(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **payload)


def copy_reference(source: str | Path, path: str | Path) -> None:
    """The ground-truth file, copied as is (a ``.nii`` one is re-saved as ``.nii.gz``)."""
    source = Path(source)
    with atomic_output(path, suffix=".nii.gz") as tmp:
        if source.name.endswith(".nii.gz"):
            shutil.copyfile(source, tmp)
        else:
            nib.save(nib.load(str(source)), str(tmp))


# ----------------------------------------------------------------------------- predict.py
def written_as(case: CaseRecord, dataset: DatasetDef) -> DatasetDef:
    """Whose label values a prediction of ``case`` is written in: the case's own data set where its classes mean
    the run's (a BraTS 2021 run predicting BraTS 2023 files writes ET as 3; an MSD folder gets MSD's values),
    else the run's data set (a PED run writes PED's values, ET = 1)."""
    return case.dataset if case.dataset.scheme.compatible(dataset.scheme) else dataset


@dataclass
class PredictionSummary:
    output: Path
    n_cases: int
    checkpoints: list[str]
    seconds: float  # wall time of the slowest rank, from the common start
    tta: bool
    postprocess: str = "none"
    processes: int = 1
    rank: int = 0
    per_rank: list[int] | None = None  # cases written by each rank

    @property
    def cases_per_second(self) -> float:
        return self.n_cases / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        per_case = self.seconds / max(self.n_cases, 1)
        where = ""
        if self.processes > 1:
            where = f" on {self.processes} processes ({' + '.join(map(str, self.per_rank or []))} cases)"
        rule = f", post-processing: {self.postprocess}" if self.postprocess != "none" else ""
        return (f"predicted {self.n_cases} case(s) with {len(self.checkpoints)} checkpoint(s)"
                f"{' x mirroring' if self.tta else ''}{rule}{where} in {self.seconds:.1f} s ({per_case:.2f} s per "
                f"case, {self.cases_per_second:.2f} cases/s) -> {self.output}")


def predict_folder(run_dir: str | Path | Sequence[str | Path], input_dir: str | Path, output_dir: str | Path, *,
                   models: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                   folds: Sequence[int] | None = None, tta: bool = False, save_probabilities: bool = False,
                   overlap: float | None = None, sw_batch_size: int | None = None, blending: str | None = None,
                   device: str = "auto", overwrite: bool = False, progress: bool = True, postprocess: bool = True
                   ) -> PredictionSummary:
    """Segment every case of ``input_dir`` with the ensemble of the chosen best checkpoints of ``run_dir`` (one
    run folder, or several of one experiment): ``OUT/{case_id}.nii.gz`` (and ``OUT/{case_id}.npz`` with
    ``save_probabilities``).

    Several ``models`` make one ensemble: every selected checkpoint weighs the same in the mean softmax (the mean
    sigmoid of region-based checkpoints). The checkpoints' post-processing rule (``--postprocess``) is applied
    when they all have the same one (one checkpoint; or units that share a rule) unless ``postprocess`` is False.
    An output folder that already holds ``.nii.gz`` files is refused unless ``overwrite``. Under torchrun
    every rank predicts its share of the cases (rank r: cases r, r + world size, ...) on its own device;
    the summary (every rank's) counts all cases, its time is the slowest rank's.
    """
    out = Path(output_dir)
    existing = sorted(out.glob("*.nii.gz")) if out.is_dir() else []
    if existing and not overwrite:  # every rank checks before any writes (the barrier below)
        raise FileExistsError(f"{out} already holds predictions ({len(existing)} .nii.gz files); "
                              "pass --overwrite to replace them")
    run_dirs = [run_dir] if isinstance(run_dir, str | Path) else list(run_dir)
    opened = open_runs(run_dirs, device=device)
    cfg = opened[0][1]
    owns_group = du.under_torchrun() and not torch.distributed.is_initialized()
    try:
        ctx = du.init_distributed(cfg.device)
    except RuntimeError as exc:  # --device cuda without CUDA
        raise ValueError(str(exc)) from None
    try:
        settings = InferenceSettings.from_config(cfg, ctx.device, overlap=overlap, sw_batch_size=sw_batch_size,
                                                 mirror=tta, blending=blending)
        dataset = cfg.dataset_def()
        cases = find_input_cases(input_dir, prefer=dataset)
        paths = select_checkpoints([run for run, _ in opened], models, seeds, folds)
        checkpoints = [load_checkpoint(p, BEST_KEYS) for p in paths]
        rule = checkpoint_rule(checkpoints) if postprocess else None
        predictor = Predictor.from_checkpoints(checkpoints, settings, [p.name for p in paths],
                                               postprocess=rule_hook(rule, dataset.scheme))
        mine = cases[ctx.rank::ctx.world_size]
        du.barrier()
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        for case in tqdm(mine, desc="predict", unit="case", disable=not (progress and ctx.is_main)):
            image, box, shape = preprocess_case(case)
            labels, probs = predictor.predict(image, probabilities=save_probabilities)
            writer = written_as(case, dataset)
            write_segmentation(writer.unmap_labels(uncrop(labels, box, shape)), case.image_paths[MODALITIES[0]],
                               out / f"{case.case_id}.nii.gz")
            if probs is not None:  # outside the crop: background, certain (no region)
                background = np.eye(len(probs), 1, dtype=np.float32)[:, 0] if predictor.regions is None else 0.0
                write_probabilities(uncrop(probs, box, shape, background), writer, out / f"{case.case_id}.npz",
                                    predictor.regions)
        done = du.all_gather_objects((len(mine), time.perf_counter() - start))
    finally:
        if owns_group:
            du.cleanup()
    return PredictionSummary(out, sum(n for n, _ in done), [p.name for p in paths], max(t for _, t in done), tta,
                             rule.describe() if rule else "none", ctx.world_size, ctx.rank, [n for n, _ in done])


# ----------------------------------------------------------------------------- evaluate_experiment.py
def export_run_predictions(run_dir: str | Path, data_path: str | None = None, cache_dir: str | None = None,
                           device: str = "auto", progress: bool = True, postprocess: bool = True) -> Path:
    """Every best checkpoint's test predictions as ``RUN/predictions/{unit}/{case_id}.nii.gz`` (from the run's
    cache and settings, as its evaluation predicts them, with the unit's post-processing rule unless
    ``postprocess`` is False) and the ground truth of those cases as ``RUN/predictions/references/{case_id}.nii.gz``;
    returns ``RUN/predictions``."""
    run, cfg = RunFolder.open(run_dir, data_path=data_path, cache_dir=cache_dir)
    settings = InferenceSettings.from_config(cfg, resolve_device(device))
    cache, dataset = open_prepared_cache(cfg, progress=progress), cfg.dataset_def()
    for unit in run.test_units():
        name = run.unit(unit.key)
        rule = checkpoint_rule([unit.checkpoint]) if postprocess else None
        predictor = Predictor.from_checkpoints([unit.checkpoint], settings, [name],
                                               postprocess=rule_hook(rule, dataset.scheme))
        for case_id in tqdm(unit.test_ids, desc=f"export {name}", unit="case", disable=not progress):
            meta = cache.meta(case_id)
            labels = predictor.labels(cache.image(case_id))
            box = tuple(slice(a, b) for a, b in meta["bbox"])
            write_segmentation(dataset.unmap_labels(uncrop(labels, box, meta["original_shape"])),
                               meta["source_files"][MODALITIES[0]], run.prediction_dir(unit.key) / f"{case_id}.nii.gz")
            copy_reference(meta["source_files"]["seg"], run.reference_dir() / f"{case_id}.nii.gz")
    return run.reference_dir().parent
