"""Loader benchmark: 128^3 training patches from the preprocessed cache vs. straight from NIfTI (MONAI).

Both sides run in this one process on one thread (``torch.set_num_threads(1)``, ``num_workers=0``),
so the rates are per CPU core.  Data: synthetic cases at the real BraTS shape 240x240x155, written to
a temporary folder.  Both produce the same kind of sample: T1ce + FLAIR, 128^3, foreground-weighted
sampling (cache: 1/3 foreground-centred; MONAI: RandCropByPosNegLabeld pos=1 neg=2) and random flips
on the three axes.  The MONAI side is the usual tutorial chain: LoadImaged, EnsureChannelFirstd,
MapLabelValued (4 -> 3), NormalizeIntensityd(nonzero, channel_wise), RandCropByPosNegLabeld,
RandFlipd x3.  Cache build time is reported but not part of the patch rate.

Rates are per CPU second of this (single-threaded) process, i.e. per dedicated core; wall-clock rates
are printed too, as they differ when other processes share the cores.

Usage: python benchmarks/bench_loader.py [--cases 4] [--cache_seconds 10] [--nifti_samples 8]
The last printed line is ``ratio_vs_nifti=<x> patches_per_s_per_core=<y>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loader import (  # noqa: E402
    PatchDataset,
    PreprocessedCache,
    discover_cases,
    generate_synthetic_dataset,
)

PATCH = (128, 128, 128)
MODALITIES = ("t1ce", "flair")


def timed_rate(step: Callable[[int], object], min_samples: int, min_seconds: float,
               warmup: int) -> tuple[float, float, int]:
    """Rates of ``step(i)`` after ``warmup`` calls, over >= min_samples calls and >= min_seconds.

    Returns (samples per wall-clock second, samples per CPU second of this process, samples).  The
    process runs one thread, so the CPU-time rate is the rate of one dedicated core; the wall-clock
    rate is lower when other processes share the cores.
    """
    for i in range(warmup):
        step(i)
    count, wall, cpu = 0, time.perf_counter(), time.process_time()
    while count < min_samples or time.perf_counter() - wall < min_seconds:
        step(warmup + count)
        count += 1
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu), count


def monai_chain():
    """The MONAI tutorial-style NIfTI -> 128^3 patch chain (one patch per loaded case)."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        MapLabelValued,
        NormalizeIntensityd,
        RandCropByPosNegLabeld,
        RandFlipd,
    )

    keys = ["image", "label"]
    chain = Compose([
        LoadImaged(keys=keys),
        EnsureChannelFirstd(keys=keys),
        MapLabelValued(keys="label", orig_labels=[4], target_labels=[3]),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=PATCH, pos=1, neg=2, num_samples=1),
        *[RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
    ])
    chain.set_random_state(seed=0)
    return chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=4, help="synthetic cases at 240x240x155")
    parser.add_argument("--cache_seconds", type=float, default=10.0, help="minimum timing of the cache loader")
    parser.add_argument("--nifti_samples", type=int, default=8, help="patches timed on the MONAI NIfTI chain")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data here (default: temporary)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        generate_synthetic_dataset(work, n_cases=args.cases, seed=0, shape=(240, 240, 155))
        cases = discover_cases(work, "synthetic")
        print(f"generated {len(cases)} cases at 240x240x155 in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        cache = PreprocessedCache(work / "cache", cases)
        cache.build(num_workers=1, progress=False)
        print(f"cache build: {time.perf_counter() - t0:.1f} s for {len(cases)} cases")

        dataset = PatchDataset(cache, cache.case_ids, MODALITIES, PATCH, samples_per_epoch=10**6, seed=0)
        cache_wall, cache_cpu, n_cache = timed_rate(dataset.__getitem__, 50, args.cache_seconds, 2 * len(cases))
        print(f"cache PatchDataset: {cache_cpu:.1f} patches per CPU-s, {cache_wall:.1f} per wall-s ({n_cache} patches)")

        chain = monai_chain()
        records = [{"image": [str(c.image_paths[m]) for m in MODALITIES], "label": str(c.label_path)} for c in cases]
        out = chain(records[0])[0]
        assert tuple(out["image"].shape) == (len(MODALITIES), *PATCH), out["image"].shape
        nifti_wall, nifti_cpu, n_nifti = timed_rate(lambda i: chain(records[i % len(records)]), args.nifti_samples,
                                                    0, 0)
        print(f"MONAI NIfTI chain: {nifti_cpu:.2f} patches per CPU-s, {nifti_wall:.2f} per wall-s ({n_nifti} patches)")

    print(f"wall clock (cores shared with other processes: load average {os.getloadavg()[0]:.1f}): "
          f"ratio {cache_wall / nifti_wall:.1f}, {cache_wall:.1f} patches/s")
    print(f"ratio_vs_nifti={cache_cpu / nifti_cpu:.1f} patches_per_s_per_core={cache_cpu:.1f}")


if __name__ == "__main__":
    main()
