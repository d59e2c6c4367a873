"""Benchmark: BraTS region Dice + HD95 + NSD and per-class Dice of one 240x240x155 case, ours versus MONAI.

Ours: ``metrics.brats_region_metrics(pred, target)`` on the two uint8 label maps (region masks
built inside, as in evaluation). MONAI: ``compute_dice`` on (1, 5, Z, Y, X) float masks (WT, TC,
ET, NCR, ED) + ``compute_hausdorff_distance(percentile=95)`` + ``compute_surface_dice
(class_thresholds=[1.0])`` on the three region masks, all prepared beforehand, so the conversion is
not charged to MONAI. Both run on the CPU, alternately, several repetitions; medians reported.
The script asserts that both give the same values.

Run: ``python benchmarks/bench_metrics.py [--repeats 5] [--seed 0]``. Last line:
``speedup_vs_monai=<x> ours_ms=<a> monai_ms=<b>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics import CLASS_DICE, REGIONS, brats_region_metrics, region_mask  # noqa: E402

SHAPE = (155, 240, 240)  # (Z, Y, X)


def synthetic_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A BraTS-like tumour (~5% of the volume: edema around a necrotic core and an enhancing rim)
    and a prediction of it: shifted by a few voxels, with a perturbed boundary."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    center = (78, 110, 130)
    radius = np.sqrt(((z - center[0]) / 0.9) ** 2 + ((y - center[1]) / 1.1) ** 2 + (x - center[2]) ** 2)

    def labels(noise_seed: int, offset: tuple[int, int, int]) -> np.ndarray:
        noise = np.random.default_rng(noise_seed).standard_normal((40, 60, 60)).astype(np.float32)
        noise = ndimage.zoom(ndimage.gaussian_filter(noise, 2.0), [s / n for s, n in zip(SHAPE, noise.shape)], order=1)
        r = np.roll(radius, offset, axis=(0, 1, 2)) + 4.0 * noise / noise.std()
        out = np.zeros(SHAPE, dtype=np.uint8)
        out[r < 47] = 2  # edema
        out[r < 30] = 3  # enhancing rim
        out[r < 22] = 1  # necrotic core
        return out

    target = labels(seed, (0, 0, 0))
    pred = labels(seed + 1, tuple(int(v) for v in rng.integers(-3, 4, size=3)))
    return pred, target


def monai_inputs(label_map: np.ndarray) -> torch.Tensor:
    """(1, 5, Z, Y, X) float masks WT, TC, ET, NCR, ED, as MONAI's metrics take them."""
    masks = [region_mask(label_map, r) for r in REGIONS] + [label_map == c for c in CLASS_DICE.values()]
    return torch.from_numpy(np.stack(masks).astype(np.float32))[None]


def monai_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    n = len(REGIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = compute_dice(pred, target, include_background=True)[0]
        hd = compute_hausdorff_distance(pred[:, :n], target[:, :n], include_background=True, percentile=95)[0]
        nsd = compute_surface_dice(pred[:, :n], target[:, :n], class_thresholds=[1.0] * n, include_background=True)[0]
    out = {f"dice_{r}": float(dice[i]) for i, r in enumerate(REGIONS)}
    out.update({f"hd95_{r}": float(hd[i]) for i, r in enumerate(REGIONS)})
    out.update({f"nsd_{r}": float(nsd[i]) for i, r in enumerate(REGIONS)})
    out.update({f"dice_{name}": float(dice[n + i]) for i, name in enumerate(CLASS_DICE)})
    return out


def time_ms(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) milliseconds of one call; CPU time sums all threads of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) * 1000.0, (time.process_time() - cpu) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    pred, target = synthetic_case(args.seed)
    print(f"volume {SHAPE}, target WT {np.mean(target > 0):.1%} of voxels, pred WT {np.mean(pred > 0):.1%}")
    pred_t, target_t = monai_inputs(pred), monai_inputs(target)

    ours = brats_region_metrics(pred, target)
    reference = monai_metrics(pred_t, target_t)
    for key, value in ours.items():
        rel = 1e-4 if key.startswith("hd95") else 1e-6
        assert abs(value - reference[key]) <= rel * max(abs(reference[key]), 1e-12), (key, value, reference[key])
    print("values (ours == MONAI): " + ", ".join(f"{k}={v:.4f}" for k, v in ours.items()))

    # Alternate the two so that a change of machine load affects both alike.
    ours_all, monai_all = [], []
    for _ in range(args.repeats):
        ours_all.append(time_ms(lambda: brats_region_metrics(pred, target)))
        monai_all.append(time_ms(lambda: monai_metrics(pred_t, target_t)))
    ours_ms, monai_ms = (statistics.median(t[0] for t in runs) for runs in (ours_all, monai_all))
    for name, runs in (("ours ", ours_all), ("MONAI", monai_all)):
        cpu_ms = statistics.median(t[1] for t in runs)
        print(f"{name} wall ms: median {statistics.median(t[0] for t in runs):.1f} "
              f"all {[round(t[0], 1) for t in runs]}; CPU ms median {cpu_ms:.1f}")
    print(f"threads: torch {torch.get_num_threads()}")
    print(f"speedup_vs_monai={monai_ms / ours_ms:.2f} ours_ms={ours_ms:.1f} monai_ms={monai_ms:.1f}")


if __name__ == "__main__":
    main()
