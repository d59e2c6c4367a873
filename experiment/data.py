"""Data for a run: discover, validate and cache the cases (rank 0 builds, the others wait), the
splits of every seed, and the training loader of one unit."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

import brats_data
from brats_data.splits import read_patient_map, stratified_subset
from experiment.config import ExperimentConfig
from utils import distributed as du
from utils.errors import first_line
from utils.io import read_json, write_json

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """Raised on the other ranks when the main rank could not prepare the data (it raised the original)."""


POLL_SECONDS = 2.0
STALE_SECONDS = 300.0  # tolerance for clocks of nodes and a shared file system that disagree


def case_grade(case: Any) -> str | None:
    """The grade of a case where its data set has grade folders (BraTS 2018: ``HGG``/``LGG``), else None."""
    group = Path(case.label_path).parent.parent.name
    return group if case.dataset.grade_groups and group in ("HGG", "LGG") else None


def _discover(cfg: ExperimentConfig) -> list[Any]:
    """The run's cases: all of the dataset, or with ``--max_samples N`` a seeded (seed 0), grade-stratified
    subset of whole patients, the same for every seed of the run and every later command."""
    cases = brats_data.discover_cases(Path(cfg.data_path), cfg.dataset_def())
    if cfg.max_samples is None or cfg.max_samples >= len(cases):
        return cases
    by_id = {c.case_id: c for c in cases}
    strata = {cid: case_grade(c) or "all" for cid, c in by_id.items()}
    keep = stratified_subset(list(by_id), cfg.max_samples, seed=0, strata=strata, groups=_patient_groups(cfg, by_id))
    return [by_id[cid] for cid in keep]


def _open_cache(cfg: ExperimentConfig) -> Any:
    return brats_data.PreprocessedCache(cfg.resolved_cache_dir(), _discover(cfg))


def _status_file(cfg: ExperimentConfig) -> Path:
    """Where rank 0 says the cache of this torchrun job is ready (the job id is the same on every rank)."""
    job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT") or "single"
    return cfg.resolved_cache_dir() / f".prepared-{job}.json"


def build_cache(cfg: ExperimentConfig, progress: bool = True) -> tuple[Any, list[dict[str, str]]]:
    """Generate the synthetic data if asked, discover the cases and build the cache (rank 0's work)."""
    if cfg.dataset_version == "synthetic":
        shape = {"shape": tuple(cfg.synthetic_shape)} if cfg.synthetic_shape else {}
        brats_data.generate_synthetic_dataset(Path(cfg.data_path), n_cases=cfg.synthetic_cases, seed=0,
                                              difficulty=cfg.synthetic_difficulty, task=cfg.synthetic_task, **shape)
    cache = _open_cache(cfg)
    errors = cache.build(num_workers=cfg.resolved_preprocess_workers(), progress=progress,
                         skip_bad_cases=cfg.skip_bad_cases)
    return cache, [{"case_id": e.case_id, "path": str(e.path), "reason": e.reason} for e in errors]


def prepare_data(cfg: ExperimentConfig, ctx: du.DistContext) -> tuple[Any, list[dict[str, str]]]:
    """Discover, validate and cache the cases: rank 0 builds, the others wait, then open the same cache.

    The other ranks wait on the file system (rank 0 writes a status file when done), never in a
    collective, so a build longer than the collective timeout (BraTS 2021 with few workers) is fine.
    Returns ``(cache, skipped)``; ``skipped`` lists the bad cases (dicts: case_id, path, reason) left
    out under ``--skip_bad_cases``. A bad case without that flag raises ``BadCaseError`` (naming the
    case and the file) on rank 0 and :class:`DataError` on the others.
    """
    status = _status_file(cfg)
    if ctx.is_main:
        try:
            cache, skipped = build_cache(cfg)
        except Exception as exc:
            if ctx.distributed:
                write_json(status, {"status": "error", "message": first_line(exc)})
            raise
        if ctx.distributed:
            write_json(status, {"status": "ok", "skipped": skipped})
    else:
        started = time.time() - STALE_SECONDS  # a status file left by an older job with the same id is ignored
        while not (status.is_file() and status.stat().st_mtime >= started):
            time.sleep(POLL_SECONDS)
        outcome = read_json(status)
        if outcome["status"] == "error":
            raise DataError(outcome["message"])
        cache, skipped = _open_cache(cfg), outcome["skipped"]
        cache.build(num_workers=1, progress=False, skip_bad_cases=True)  # opens it; everything is fresh
    du.barrier()  # every rank has read the status: it can go
    if ctx.is_main:
        status.unlink(missing_ok=True)
    return cache, skipped


def preprocess_only(cfg: ExperimentConfig) -> str:
    """``--preprocess_only``: build the cache (rank 0 under torchrun; the others wait) and summarise it."""
    t0 = time.perf_counter()
    ctx = du.init_distributed(cfg.device)
    try:
        cache, skipped = prepare_data(cfg, ctx)
    finally:
        du.cleanup()
    size = sum(f.stat().st_size for cid in cache.case_ids for f in cache.case_dir(cid).iterdir())
    lines = [f"preprocessed {len(cache.case_ids)} cases into {cache.cache_dir} ({size / 2**30:.2f} GiB on disk, "
             f"{len(getattr(cache, 'built_case_ids', []))} built now) in {time.perf_counter() - t0:.1f} s"]
    lines += [f"skipped {s['case_id']}: {s['reason']} ({s['path']})" for s in skipped]
    return "\n".join(lines + [f"{len(skipped)} skipped case(s)"])


def open_prepared_cache(cfg: ExperimentConfig, progress: bool = True) -> Any:
    """The cache of a finished run's data, for re-evaluation and prediction (builds what is missing)."""
    cache = _open_cache(cfg)
    cache.build(num_workers=1, progress=progress, skip_bad_cases=cfg.skip_bad_cases)
    return cache


def _patient_groups(cfg: ExperimentConfig, case_ids: Iterable[str]) -> dict[str, str]:
    ids, definition = list(case_ids), cfg.dataset_def()
    if cfg.patient_map:
        return read_patient_map(cfg.patient_map, ids)
    return {cid: definition.patient_of(cid) for cid in ids}


def case_strata(cache: Any) -> dict[str, str]:
    """Stratum of each cached case: grade where the data set has one, and whether it has enhancing tumour."""
    out = {}
    for cid in cache.case_ids:
        et_classes = cache.cases[cid].dataset.scheme.region_classes["et"]
        et = "ET" if sum(cache.class_voxels(cid)[c] for c in et_classes) > 0 else "no-ET"
        grade = case_grade(cache.cases[cid])
        out[cid] = f"{grade}/{et}" if grade else et
    return out


def make_all_splits(cfg: ExperimentConfig, cache: Any) -> dict[str, Any]:
    """The splits of every seed (and every fold with ``--use_5fold``): by patient, stratified."""
    ids = list(cache.case_ids)
    groups, strata = _patient_groups(cfg, ids), case_strata(cache)
    return {str(s): brats_data.make_splits(ids, seed=s, use_5fold=cfg.use_5fold, groups=groups, strata=strata)
            for s in cfg.seeds}


def samples_per_epoch(cfg: ExperimentConfig, n_train: int, world_size: int) -> int:
    """Training samples per epoch over all ranks: ``--iters_per_epoch`` x the global batch, so every
    rank takes exactly that many optimizer steps; else ``patches_per_case`` x training cases."""
    if cfg.iters_per_epoch:
        return cfg.iters_per_epoch * cfg.batch_size * world_size
    return cfg.resolved_patches_per_case() * n_train


def training_budget(cfg: ExperimentConfig, n_train: int, world_size: int) -> dict[str, int]:
    """Optimizer steps per epoch and in total, global batch and samples seen, as the loader will give them
    (the DistributedSampler pads each rank to the same count; the last batch may be partial)."""
    per_rank = math.ceil(samples_per_epoch(cfg, n_train, world_size) / world_size)
    steps = math.ceil(per_rank / cfg.batch_size)
    return {"steps_per_epoch": steps, "total_steps": steps * cfg.epochs,
            "global_batch_size": cfg.batch_size * world_size, "samples_seen": per_rank * world_size * cfg.epochs}


def build_train_loader(
    cfg: ExperimentConfig, cache: Any, case_ids: Sequence[str], modalities: Sequence[str], seed: int,
    ctx: du.DistContext, *, patch: Sequence[int] | None = None, flips: bool = True, brain_mask: bool = False,
) -> tuple[DataLoader, brats_data.BatchPositionSampler, Any]:
    """Loader of training patches (3D) or slices (2D), sharded by a DistributedSampler (also in one process),
    each index handed over with its position in the global batch (``--sampling nnunet`` forces foreground on
    the last third of it, nnU-Net's rule, whatever the workers and ranks).

    ``patch`` (default the run's) is the region the loader crops: larger than the training patch when an
    augmentation on the device cuts the patch from its centre; ``flips``: random flips in the loader;
    ``brain_mask``: background outside the brain mask labelled ``brats_data.OUTSIDE_LABEL`` (for an augmentation
    that zeroes the image there)."""
    n_samples = samples_per_epoch(cfg, len(case_ids), ctx.world_size)
    cls = brats_data.SliceDataset if cfg.dim == "2d" else brats_data.PatchDataset
    fg_classes = None
    if cfg.region_based:  # nnU-Net chooses among the regions present in region-based training
        scheme = cfg.dataset_def().scheme
        fg_classes = [scheme.region_classes[key] for key, _ in scheme.region_order]
    dataset = cls(cache, list(case_ids), list(modalities), tuple(patch or cfg.spatial_patch),
                  samples_per_epoch=n_samples, flips=flips, seed=seed, sampling=cfg.sampling,
                  final_patch=tuple(cfg.spatial_patch), batch_size=cfg.batch_size * ctx.world_size,
                  fg_classes=fg_classes, brain_mask=brain_mask)
    shards = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    sampler = brats_data.BatchPositionSampler(shards, cfg.batch_size, ctx.rank)
    workers = cfg.num_workers
    # an enlarged region (--augmentation nnunet: 205^3 for a 128^3 patch, ~290 MB a batch of 2 with 4 channels
    # and the uint8 label) queues 2 batches per worker, not 4: with 8 workers ~4.7 GB of shared memory per
    # process instead of ~9.4 GB
    enlarged = patch is not None and tuple(patch) != tuple(cfg.spatial_patch)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=(2 if enlarged else 4) if workers > 0 else None, drop_last=False,
    )
    return loader, sampler, dataset
