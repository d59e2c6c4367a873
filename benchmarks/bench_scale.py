"""Real-scale behaviour measured on this machine, projected to BraTS 2021 (1,251 cases of 240x240x155).

1. Cache build of a few full-size synthetic cases: seconds per case per core, bytes per case on disk.
2. An epoch over many small cases (default 1,251) with 2 DataLoader workers: peak open files and
   peak resident memory (RSS) per worker.
3. Validation (whole-volume sliding-window inference + Dice) of one full-size case, 3D and 2D, with
   the suite's ``validation_dice`` on this CPU (``unet3d_xs``; on a GPU see RESULTS.md's GPU section).

Prints the projection and, last, ``open_files_per_worker=<n> build_s_per_case_core=<x>
val_s_per_case_3d=<y> val_s_per_case_2d=<z>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data_loader as dl  # noqa: E402
from evaluation.scoring import validation_dice  # noqa: E402
from inference.predictor import InferenceSettings, Predictor  # noqa: E402
from models import get_model  # noqa: E402

BRATS2021_CASES = 1251
FULL_SHAPE = (240, 240, 155)  # X, Y, Z


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


class Probe(dl.PatchDataset):
    """A PatchDataset that reports, with each item, the worker's open files and resident memory (KiB)."""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x, y, torch.tensor([len(os.listdir("/proc/self/fd")), _proc_status("VmRSS:")])


def build_full_size(root: Path, n: int) -> tuple[float, float, dl.PreprocessedCache]:
    """Seconds per case per core and bytes per case of building ``n`` full-size cases with one process."""
    dl.generate_synthetic_dataset(root, n_cases=n, seed=0, shape=FULL_SHAPE)
    cases = dl.discover_cases(root, "synthetic")
    cache = dl.PreprocessedCache(root / "cache", cases)
    t0 = time.perf_counter()
    cache.build(num_workers=1, progress=False)
    seconds = (time.perf_counter() - t0) / n
    size = sum(f.stat().st_size for cid in cache.case_ids for f in cache.case_dir(cid).iterdir()) / n
    return seconds, size, cache


def many_small(root: Path, n: int, workers: int) -> tuple[int, float]:
    """Peak open files and peak RSS (MiB) of a DataLoader worker over an epoch of ``n`` small cases."""
    dl.generate_synthetic_dataset(root / "src", n_cases=2, seed=0, shape=(24, 24, 24), difficulty="easy")
    src = root / "src" / "BRATS_SYNTHETIC" / "BraTS2021_Training_Data"
    out = root / "BRATS2021" / "BraTS2021_Training_Data"
    for i in range(n):
        template, case = src / f"BraTS2021_0000{i % 2}", out / f"BraTS2021_{i:05d}"
        case.mkdir(parents=True)
        for f in template.iterdir():
            shutil.copyfile(f, case / f.name.replace(template.name, case.name))
    cache = dl.PreprocessedCache(root / "cache", dl.discover_cases(root, "brats2021"))
    cache.build(num_workers=os.cpu_count() or 1, progress=False)
    ds = Probe(cache, cache.case_ids, ["t1ce", "flair"], (16, 16, 16), samples_per_epoch=n)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers)
    peak_fds, peak_rss = 0, 0
    for _, _, probe in loader:
        peak_fds, peak_rss = max(peak_fds, int(probe[:, 0].max())), max(peak_rss, int(probe[:, 1].max()))
    return peak_fds, peak_rss / 1024


def validation_seconds(cache, dim: str) -> float:
    patch = (128, 128, 128) if dim == "3d" else (128, 128)
    model = get_model("unet3d_xs", dim, patch)
    t0 = time.perf_counter()
    settings = InferenceSettings(dim, patch, overlap=0.1, sw_batch_size=4 if dim == "3d" else 64)
    validation_dice(Predictor.from_model(model, ["t1ce", "flair"], settings), cache, cache.case_ids[:1])
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=BRATS2021_CASES, help="small cases in the open-files epoch")
    p.add_argument("--full_cases", type=int, default=3, help="full-size cases built and validated")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_s, case_bytes, cache = build_full_size(tmp / "full", args.full_cases)
        print(f"cache build: {build_s:.2f} s per 240x240x155 case per core, {case_bytes / 2**20:.0f} MiB per case",
              flush=True)
        fds, rss = many_small(tmp / "small", args.cases, args.workers)
        print(f"epoch over {args.cases} cases, {args.workers} workers: peak {fds} open files and "
              f"{rss:.0f} MiB RSS per worker", flush=True)
        val3d, val2d = validation_seconds(cache, "3d"), validation_seconds(cache, "2d")
        print(f"validation of one 240x240x155 case on this CPU (unet3d_xs): 3D {val3d:.1f} s, 2D {val2d:.1f} s",
              flush=True)
    cores = os.cpu_count() or 1
    print(f"projection for BraTS 2021 ({BRATS2021_CASES} cases): cache {BRATS2021_CASES * case_bytes / 2**30:.0f} GiB "
          f"on disk; build {BRATS2021_CASES * build_s / 60:.0f} core-minutes "
          f"({BRATS2021_CASES * build_s / 60 / cores:.0f}"
          f" min on these {cores} cores, {BRATS2021_CASES * build_s / 60 / 16:.0f} min on 16); loader RSS "
          f"{rss:.0f} MiB per worker; validation of 125 cases on this CPU: 3D {125 * val3d / 60:.0f} min, "
          f"2D {125 * val2d / 60:.0f} min")
    print(f"open_files_per_worker={fds} build_s_per_case_core={build_s:.3f} val_s_per_case_3d={val3d:.3f} "
          f"val_s_per_case_2d={val2d:.3f}")


if __name__ == "__main__":
    main()
