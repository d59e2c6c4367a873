"""Data for a run: discover, validate and cache the cases (rank 0 builds, the others wait), the
splits of every seed, and the training loader of one unit."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

import data_loader as dl
from experiment.config import ExperimentConfig
from utils import distributed as du

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """Raised on the other ranks when the main rank could not prepare the data (it raised the original)."""


def _open_cache(cfg: ExperimentConfig) -> Any:
    cases = dl.discover_cases(Path(cfg.data_path), cfg.dataset_version, max_samples=cfg.max_samples)
    return dl.PreprocessedCache(cfg.resolved_cache_dir(), cases)


def prepare_data(cfg: ExperimentConfig, ctx: du.DistContext) -> tuple[Any, list[dict[str, str]]]:
    """Discover, validate and cache the cases: rank 0 builds, the others wait, then open the same cache.

    Returns ``(cache, skipped)``; ``skipped`` lists the bad cases (dicts: case_id, path, reason)
    left out under ``--skip_bad_cases``. A bad case without that flag raises ``BadCaseError``
    (naming the case and the file) on rank 0 and :class:`DataError` on the others.
    """
    outcome: tuple[str, Any] = ("ok", [])
    if ctx.is_main:
        try:
            if cfg.dataset_version == "synthetic":
                shape = {"shape": tuple(cfg.synthetic_shape)} if cfg.synthetic_shape else {}
                dl.generate_synthetic_dataset(Path(cfg.data_path), n_cases=cfg.synthetic_cases, seed=0, **shape)
            cache = _open_cache(cfg)
            workers = max(1, min(cfg.num_workers, os.cpu_count() or 1))
            errors = cache.build(num_workers=workers, progress=True, skip_bad_cases=cfg.skip_bad_cases)
            outcome = ("ok", [{"case_id": e.case_id, "path": str(e.path), "reason": e.reason} for e in errors])
        except Exception as exc:
            du.broadcast_object(("error", str(exc)))
            raise
    status, payload = du.broadcast_object(outcome)
    if status == "error":
        raise DataError(payload)
    if not ctx.is_main:  # the cache is complete now: open it, excluding the same bad cases
        cache = _open_cache(cfg)
        cache.build(num_workers=1, progress=False, skip_bad_cases=True)
    return cache, payload


def open_prepared_cache(cfg: ExperimentConfig, progress: bool = True) -> Any:
    """The cache of a finished run's data, for re-evaluation and prediction (builds what is missing)."""
    cache = _open_cache(cfg)
    cache.build(num_workers=1, progress=progress, skip_bad_cases=cfg.skip_bad_cases)
    return cache


def make_all_splits(cfg: ExperimentConfig, case_ids: Sequence[str]) -> dict[str, Any]:
    """The patient-level splits of every seed (and every fold with ``--use_5fold``)."""
    return {str(s): dl.make_splits(list(case_ids), seed=s, use_5fold=cfg.use_5fold) for s in cfg.seeds}


def build_train_loader(
    cfg: ExperimentConfig, cache: Any, case_ids: Sequence[str], modalities: Sequence[str], seed: int,
    ctx: du.DistContext,
) -> tuple[DataLoader, DistributedSampler, Any]:
    """Loader of training patches (3D) or slices (2D), sharded by a DistributedSampler (also in one process)."""
    n_samples = cfg.resolved_patches_per_case() * len(case_ids)
    cls = dl.SliceDataset if cfg.dim == "2d" else dl.PatchDataset
    dataset = cls(cache, list(case_ids), list(modalities), cfg.spatial_patch, samples_per_epoch=n_samples,
                  seed=seed)
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    workers = cfg.num_workers
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, drop_last=False,
    )
    return loader, sampler, dataset
