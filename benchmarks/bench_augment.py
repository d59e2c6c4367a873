"""Benchmark: patches per second of the ``nnunet`` augmentation (training.augmentation) vs nnU-Net's own pipeline.

Batch 2 of 2-channel 128^3 training patches (``--quick``: 64^3), cut from the loader region that
``loader_patch_size`` gives for that patch (304x310x304 for 128^3). Both sides get the same regions, in this
one process:

- ours: ``BatchAugmentation(patch)(image, label, epoch=0, step=i)`` on the (2, 2, *region) float32 batch and its
  int64 labels, on ONE CPU core (``torch.set_num_threads(1)``), and on the GPU when CUDA is present (the batch
  already on the device, as after the loader's host-to-device copy; warm-up, then synchronised timing);
- nnU-Net: batchgeneratorsv2's transforms composed exactly as nnunetv2 2.8.1's
  ``nnUNetTrainer.get_training_transforms`` builds them for a 3D isotropic, non-cascaded configuration without
  regions or deep supervision (SpatialTransform, GaussianNoise, GaussianBlur, MultiplicativeBrightness, Contrast,
  SimulateLowResolution, Gamma inverted and not, Mirror, RemoveLabel -1 -> 0), applied per sample as nnU-Net's data
  loader does (float32 image, int16 segmentation, one thread), collated into a batch. nnunetv2 itself is not
  imported (it pulls in its whole training stack); see ``nnunet_training_transforms``.

nnU-Net's transforms change their input in place when a sample is only cropped (the crop is a view), so each of
its samples gets a fresh copy of the region, made outside the timing (its loader crops fresh memory too). Its blur
benchmarks FFT against direct convolution the first time it meets a kernel size; that runs before timing.

Rates are per CPU second of this single-threaded process (per dedicated core) and the two sides alternate batch by
batch; the draws differ (each side its own random numbers), so the rates average over ``--batches`` batches of
random transforms (the per-sample probabilities make single batches vary several-fold).

Run: ``python benchmarks/bench_augment.py [--quick] [--batches 40] [--gpu_batches 50]``. Last line:
``aug_cpu_vs_nnunet=<x> aug_gpu_patches_per_s=<y or nan>`` (x: our CPU patches/s over nnU-Net's).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.augmentation import BatchAugmentation, loader_patch_size  # noqa: E402

BATCH, CHANNELS = 2, 2


def nnunet_training_transforms(patch_size: tuple[int, ...]):
    """nnunetv2 2.8.1 ``nnUNetTrainer.get_training_transforms(patch_size, rotation_for_DA=(-30°, 30°) in radians,
    deep_supervision_scales=None, mirror_axes=(0, 1, 2), do_dummy_2d_data_aug=False)`` (no mask, not cascaded,
    no regions, no ignore label), the same classes and arguments in the same order."""
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    rotation_for_DA = (-30.0 / 360 * 2.0 * np.pi, 30.0 / 360 * 2.0 * np.pi)
    transforms = [
        SpatialTransform(
            patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
            p_rotation=0.2, rotation=rotation_for_DA, p_scaling=0.2, scaling=(0.7, 1.4),
            p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False, border_mode_seg="constant",
            padding_value_seg=-1,
        ),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.1),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=0.5, benchmark=True),
                        apply_probability=0.2),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False,
                                                       synchronize_axes=True, ignore_axes=None, allowed_channels=None,
                                                       p_per_channel=0.5),
                        apply_probability=0.25),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1),
                        apply_probability=0.1),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1),
                        apply_probability=0.3),
        MirrorTransform(allowed_axes=(0, 1, 2)),
        RemoveLabelTansform(-1, 0),
    ]
    return ComposeTransforms(transforms), transforms[2].transform


def warm_nnunet_blur(blur, patch: tuple[int, ...]) -> None:
    """Run the FFT-vs-convolution benchmark of nnU-Net's blur for every kernel size sigma in [0.5, 1] gives."""
    dummy = torch.randn(1, *patch)
    for sigma in (0.5, 0.75, 1.0):
        for axis in range(len(patch)):
            blur._benchmark_wrapper(dummy, sigma, axis)


def phantom(region: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A brain-like (B, C, *region) image (an ellipsoid of z-scored tissue, zero outside) and int64 labels 0-3
    (a tumour with edema, enhancing rim and core), as the loader hands them over."""
    gen = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1.0, 1.0, s) for s in region]
    r2 = sum(((a / 0.8) ** 2).view([-1 if i == k else 1 for i in range(3)]) for k, a in enumerate(axes))
    t2 = sum(((a - 0.2) / 0.3).pow(2).view([-1 if i == k else 1 for i in range(3)]) for k, a in enumerate(axes))
    brain = r2 < 1
    image = torch.randn((BATCH, CHANNELS, *region), generator=gen) * 0.5 + torch.sin(6 * r2)
    image.mul_(brain)
    label = torch.zeros((BATCH, *region), dtype=torch.int64)
    label[:, t2 < 1] = 2
    label[:, t2 < 0.5] = 3
    label[:, t2 < 0.25] = 1
    return image, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64^3 patches and 12 batches: seconds on a CPU")
    parser.add_argument("--patch", type=int, default=None, help="cubic patch side (default 128; 64 with --quick)")
    parser.add_argument("--batches", type=int, default=None, help="timed CPU batches per side (default 40; 12 quick)")
    parser.add_argument("--gpu_batches", type=int, default=50, help="timed GPU batches (after 10 of warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    side = args.patch or (64 if args.quick else 128)
    batches = args.batches or (12 if args.quick else 40)
    if side < 8 or batches < 1 or args.gpu_batches < 1:
        parser.error("--patch must be >= 8 and --batches, --gpu_batches >= 1")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    patch = (side,) * 3
    region = loader_patch_size(patch)
    image, label = phantom(region, args.seed)
    print(f"batch {BATCH} x {CHANNELS} channels, patch {patch}, loader region {region} "
          f"({image.numel() * 4 / 2**20:.0f} MiB image + {label.numel() * 8 / 2**20:.0f} MiB labels)")

    ours = BatchAugmentation(patch, seed=args.seed)
    nnunet, nnunet_blur = nnunet_training_transforms(patch)
    warm_nnunet_blur(nnunet_blur, patch)
    seg16 = label.to(torch.int16)[:, None]

    def run_ours(step: int) -> None:
        out_image, out_label = ours(image, label, epoch=0, step=step)
        assert out_image.shape == (BATCH, CHANNELS, *patch) and out_label.shape == (BATCH, *patch)

    def run_nnunet(fresh: list[torch.Tensor]) -> None:
        data_all = torch.empty((BATCH, CHANNELS, *patch), dtype=torch.float32)
        seg_all = torch.empty((BATCH, 1, *patch), dtype=torch.int16)
        for b in range(BATCH):
            out = nnunet(image=fresh[b], segmentation=seg16[b])
            data_all[b] = out["image"]
            seg_all[b] = out["segmentation"]

    run_ours(10**6)  # warm-up (first calls allocate)
    run_nnunet([image[b].clone() for b in range(BATCH)])

    ours_cpu, nnunet_cpu, ours_wall, nnunet_wall = [], [], [], []
    for i in range(batches):
        wall, cpu = time.perf_counter(), time.process_time()
        run_ours(i)
        ours_cpu.append(time.process_time() - cpu)
        ours_wall.append(time.perf_counter() - wall)
        fresh = [image[b].clone() for b in range(BATCH)]
        wall, cpu = time.perf_counter(), time.process_time()
        run_nnunet(fresh)
        nnunet_cpu.append(time.process_time() - cpu)
        nnunet_wall.append(time.perf_counter() - wall)
    ours_rate = BATCH * batches / sum(ours_cpu)
    nnunet_rate = BATCH * batches / sum(nnunet_cpu)
    for name, cpu, wall in (("ours   ", ours_cpu, ours_wall), ("nnU-Net", nnunet_cpu, nnunet_wall)):
        print(f"{name} CPU (1 thread): {BATCH * batches / sum(cpu):.2f} patches per CPU-s, "
              f"{BATCH * batches / sum(wall):.2f} per wall-s; ms per batch median {1000 * statistics.median(cpu):.0f} "
              f"min {1000 * min(cpu):.0f} max {1000 * max(cpu):.0f} ({batches} batches)")

    gpu_rate = math.nan
    if torch.cuda.is_available():
        device = torch.device("cuda")
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        image_d, label_d = image.to(device), label.to(device)
        for i in range(10):
            ours(image_d, label_d, epoch=1, step=i)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(args.gpu_batches):
            ours(image_d, label_d, epoch=2, step=i)
        torch.cuda.synchronize()
        gpu_rate = BATCH * args.gpu_batches / (time.perf_counter() - start)
        print(f"ours GPU ({torch.cuda.get_device_name(device)}): {gpu_rate:.1f} patches/s "
              f"({1000 * BATCH / gpu_rate:.2f} ms per batch of {BATCH}, {args.gpu_batches} batches)")
    else:
        print("no CUDA device: GPU rate nan")
    print(f"wall clock: load average {os.getloadavg()[0]:.1f} (2 shared cores make wall rates noisy)")
    print(f"aug_cpu_vs_nnunet={ours_rate / nnunet_rate:.2f} aug_gpu_patches_per_s={gpu_rate:.1f}")


if __name__ == "__main__":
    main()
