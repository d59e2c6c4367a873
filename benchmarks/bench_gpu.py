"""GPU checks in one script (run it on a CUDA machine; ``--quick`` runs the same code paths on CPU at toy sizes).

Measures, each against a reference in the same process:
1. training step (batch 1, bf16 autocast) of the suite's U-Net vs MONAI's DynUNet (nnU-Net topology),
   compared in FLOPs per second (the two networks differ in FLOPs);
2. the same step under ``torch.compile`` vs eager;
3. the suite's own training loop (``UnitTrainer.train_epoch``: the preprocessed cache, DataLoader
   workers, the loss and its non-finite/stop checks) vs the bare step of the same trainer on a
   resident batch;
4. sliding-window inference over a 240x240x155 volume: the suite's ``sliding_window_predict`` vs MONAI's
   ``sliding_window_inference`` (gaussian blending) with the same network and overlap;
5. parameters, FLOPs, PAM (train/inference), stage-wise PAM and latency of a few models through the
   suite's ``measure_efficiency`` (RepLK models re-parameterised for latency).

Its last line: ``dynunet_flops_ratio=<a> compile_speedup=<b> loop_vs_bare=<c> sliding_window_vs_monai=<d>``
(ratios > 1 mean the suite is faster, except loop_vs_bare which is a fraction of the bare step rate).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai.inferers import sliding_window_inference  # noqa: E402
from monai.networks.nets import DynUNet  # noqa: E402

from evaluation.efficiency import count_flops, measure_efficiency  # noqa: E402
from experiment.config import ExperimentConfig  # noqa: E402
from experiment.data import prepare_data  # noqa: E402
from experiment.run_folder import RunFolder, UnitKey  # noqa: E402
from inference.predictor import cosine_weight_map, sliding_window_predict  # noqa: E402
from losses import make_loss  # noqa: E402
from models import get_model  # noqa: E402
from training.trainer import UnitTrainer  # noqa: E402
from utils import distributed as du  # noqa: E402
from utils.runtime import autocast_context  # noqa: E402

TABLE_MODELS = ["unet3d_s", "unet3d_m", "swin_unetr", "dualbranch_01_unet_s", "dualbranch_14_convnext_s"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, x, y, device, amp, steps, warmup) -> float:
    """Median seconds per bare training step on a fixed batch (fused AdamW on CUDA, Dice+CE loss)."""
    loss_fn, ctx = make_loss("nnunet"), autocast_context(device, amp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx():
            out = model(x)
        loss_fn(out.float(), y).backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def dynunet(in_ch: int, width_div: int = 1) -> torch.nn.Module:
    """MONAI DynUNet in the nnU-Net 3D topology (six levels, 32..320 filters; narrower for --quick)."""
    kernels, strides = [3] * 6, [1] + [2] * 5
    filters = [f // width_div for f in (32, 64, 128, 256, 320, 320)]
    return DynUNet(3, in_ch, 4, kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:],
                   filters=filters, norm_name="instance", res_block=False)


def loop_vs_bare(model_name: str, patch: tuple[int, ...], volume: tuple[int, ...], device: torch.device,
                 steps: int, workers: int, root: Path, augmentation: str = "flips") -> tuple[float, float, int]:
    """Seconds per step of the suite's training epoch (real cache and loader, checks included; with
    ``augmentation="nnunet"`` the loader's larger regions and the augmentation on the device) and of the bare step
    of the same trainer on one resident, already augmented batch; returns (loop, bare, steps timed)."""
    n_cases = 4
    cfg = ExperimentConfig(data_path=str(root), dataset_version="synthetic", synthetic_cases=n_cases,
                           synthetic_shape=list(volume[::-1]), dim="3d", models=[model_name], patch_size=list(patch),
                           batch_size=1, num_workers=workers, patches_per_case=max(1, steps // n_cases), epochs=2,
                           device=device.type, measure_efficiency=False, augmentation=augmentation)
    ctx = du.init_distributed(cfg.device)
    cache, _ = prepare_data(cfg, ctx)
    split = {"train": list(cache.case_ids), "val": [], "test": []}
    trainer = UnitTrainer(model_name, cfg, cache, split, UnitKey(model_name, 0, 0), RunFolder.create(root / "runs"),
                          ctx)
    loader = trainer.build_train_loader()  # the trainer's own: larger regions with the nnunet augmentation
    trainer.train_epoch(loader, 0)  # warm-up: worker start, cuDNN autotuning, allocator
    t0 = time.perf_counter()
    trainer.train_epoch(loader, 1)  # ends with a host read of the reduced loss: the GPU is done
    n = len(loader)
    t_loop = (time.perf_counter() - t0) / n
    image, label = next(iter(loader))
    image, label = trainer.batch_transform(image.to(device), label.to(device).long())
    trainer.augment = None  # the bare step: the augmented batch, resident
    times = []
    for _ in range(n):
        sync(device)
        t1 = time.perf_counter()
        trainer.train_step(image, label)
        sync(device)
        times.append(time.perf_counter() - t1)
    return t_loop, sorted(times)[len(times) // 2], n


def sliding_window_ratio(model, volume, patch, device, amp, rounds: int) -> tuple[float, float]:
    """Median seconds of the suite's and MONAI's sliding window, alternated, after one warm-up round.

    The cosine weight map is made once on the device, as ``evaluate_model`` does for a test set."""
    image = torch.randn(1, 2, *volume, device=device)
    weight_map = cosine_weight_map(patch).to(device)
    model.eval()
    suite, monai = [], []
    for _ in range(rounds + 1):
        sync(device)
        t0 = time.perf_counter()
        sliding_window_predict(model, image, patch, 0.1, sw_batch_size=2, amp=amp, weight_map=weight_map)
        sync(device)
        suite.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast_context(device, amp)():
            sliding_window_inference(image, patch, 2, model, overlap=0.1, mode="gaussian")
        sync(device)
        monai.append(time.perf_counter() - t0)
    return sorted(suite[1:])[rounds // 2], sorted(monai[1:])[rounds // 2]


def efficiency_table(names: list[str], patch: tuple[int, ...], device: torch.device) -> None:
    cfg = ExperimentConfig(dim="3d", patch_size=list(patch), models=names, dataset_version="synthetic")
    for name in names:
        values, stages, notes = measure_efficiency(name, cfg, device)
        top = max(stages, key=lambda r: r["pam_train_mb"], default=None)
        print(f"{name}: params {values['params'] / 1e6:.2f}M flops {values['flops'] / 1e9:.0f}G "
              f"PAM train {values['pam_train_mb']:.0f} MiB inference {values['pam_inference_mb']:.0f} MiB "
              f"latency {values['latency_ms']:.1f} ± {values['latency_ms_std']:.1f} ms; {len(stages)} stages"
              + (f", largest {top['stage']} {top['pam_train_mb']:.0f} MiB" if top else "")
              + (f" [{notes}]" if notes else ""), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="toy sizes (checks the code paths on CPU)")
    p.add_argument("--model", default="unet3d_m")
    p.add_argument("--loop_steps", type=int, default=None,
                   help="steps of the timed training epoch (default 100; 3 with --quick): long enough that the "
                        "loader's start at each epoch is amortised as in real epochs")
    p.add_argument("--workers", type=int, default=6, help="DataLoader workers of the training loop")
    p.add_argument("--no_table", action="store_true", help="skip the efficiency table (section 5)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = "bf16" if device.type == "cuda" else "none"
    patch = (64, 64, 64) if args.quick else (128, 128, 128)  # six levels need >= 64 for DynUNet
    volume = (72, 80, 80) if args.quick else (155, 240, 240)
    steps, warmup = (2, 1) if args.quick else (20, 5)
    torch.backends.cudnn.benchmark = True
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) "
          f"torch={torch.__version__} patch={patch}", flush=True)

    # 1. suite U-Net vs DynUNet, FLOPs per second
    x = torch.randn(1, 2, *patch, device=device)
    y = torch.randint(0, 4, (1, *patch), device=device)
    ours = get_model(args.model, "3d", patch).to(device)
    ref = dynunet(2, width_div=4 if args.quick else 1).to(device)
    f_ours, f_ref = count_flops(ours, x.shape), count_flops(ref, x.shape)
    t_ours = time_steps(ours, x, y, device, amp, steps, warmup)
    t_ref = time_steps(ref, x, y, device, amp, steps, warmup)
    flops_ratio = (f_ours / t_ours) / (f_ref / t_ref)
    print(f"train step: {args.model} {t_ours * 1e3:.1f} ms ({f_ours / 1e9:.0f} GFLOP fwd, "
          f"{3 * f_ours / t_ours / 1e12:.1f} TFLOP/s), DynUNet {t_ref * 1e3:.1f} ms ({f_ref / 1e9:.0f} GFLOP fwd, "
          f"{3 * f_ref / t_ref / 1e12:.1f} TFLOP/s); FLOP/s ratio {flops_ratio:.2f}", flush=True)

    # 2. torch.compile
    compiled = torch.compile(get_model(args.model, "3d", patch).to(device))
    t_comp = time_steps(compiled, x, y, device, amp, steps, warmup + 2)
    print(f"compile: eager {t_ours * 1e3:.1f} ms, compiled {t_comp * 1e3:.1f} ms, speedup {t_ours / t_comp:.2f}",
          flush=True)
    del compiled, ref

    with tempfile.TemporaryDirectory() as tmp:
        # 3. the suite's training loop vs its bare step
        loop_steps = args.loop_steps or (3 if args.quick else 100)
        t_loop, t_bare, n = loop_vs_bare(args.model, patch, volume, device, loop_steps,
                                         0 if args.quick else args.workers, Path(tmp))
        loop_fraction = t_bare / t_loop
        print(f"loop: {t_loop * 1e3:.1f} ms/step over {n} steps of UnitTrainer.train_epoch "
              f"({args.workers if not args.quick else 0} workers) vs {t_bare * 1e3:.1f} ms bare: {loop_fraction:.2%}",
              flush=True)
        t_aug, t_bare_aug, n = loop_vs_bare(args.model, patch, volume, device, loop_steps,
                                            0 if args.quick else args.workers, Path(tmp) / "nnunet", "nnunet")
        aug_fraction = t_bare_aug / t_aug
        print(f"loop with --augmentation nnunet: {t_aug * 1e3:.1f} ms/step over {n} steps vs {t_bare_aug * 1e3:.1f} ms "
              f"bare: {aug_fraction:.2%}", flush=True)

    # 4. sliding window over a whole volume
    t_sw, t_monai = sliding_window_ratio(ours, volume, patch, device, amp, rounds=1 if args.quick else 5)
    sw_ratio = t_monai / t_sw
    print(f"sliding window {volume}: suite {t_sw * 1e3:.0f} ms, MONAI {t_monai * 1e3:.0f} ms, ratio {sw_ratio:.2f}",
          flush=True)
    del ours
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 5. efficiency table through the suite's own measurement
    if not args.no_table:
        efficiency_table([args.model] if args.quick else TABLE_MODELS, patch, device)

    print(f"dynunet_flops_ratio={flops_ratio:.3f} compile_speedup={t_ours / t_comp:.3f} "
          f"loop_vs_bare={loop_fraction:.3f} loop_vs_bare_nnunet={aug_fraction:.3f} "
          f"sliding_window_vs_monai={sw_ratio:.3f}")


if __name__ == "__main__":
    main()
