"""GPU checks in one script (run it on a CUDA machine; ``--quick`` runs the same code paths on CPU at toy sizes).

Measures, each against a reference in the same process:
1. training step (batch 1, bf16 autocast) of the suite's U-Net vs MONAI's DynUNet (nnU-Net topology),
   compared in FLOPs per second (the two networks differ in FLOPs);
2. the same step under ``torch.compile`` vs eager;
3. the whole training loop (PatchDataset from the preprocessed cache, DataLoader workers) vs the bare step;
4. sliding-window inference over a 240x240x155 volume: the suite's ``sliding_window_predict`` vs MONAI's
   ``sliding_window_inference`` (gaussian blending) with the same network and overlap;
5. PAM (train/inference) and latency of a few models via ``experiment.efficiency``.

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

import data_loader as dl  # noqa: E402
from experiment.efficiency import count_flops, measure_latency, measure_pam  # noqa: E402
from experiment.evaluation import sliding_window_predict  # noqa: E402
from losses import make_loss  # noqa: E402
from utils.experiment_utils import autocast_context, get_model  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, x, y, loss_fn, opt, ctx) -> None:
    """One training step: forward under autocast, Dice+CE loss, backward, AdamW step."""
    opt.zero_grad(set_to_none=True)
    with ctx():
        out = model(x)
    loss_fn(out.float(), y).backward()
    opt.step()


def time_steps(model, x, y, device, amp, steps, warmup) -> float:
    """Median seconds per training step on a fixed batch."""
    loss_fn, opt, ctx = make_loss("nnunet"), torch.optim.AdamW(model.parameters(), lr=1e-4), autocast_context(device, amp)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        train_step(model, x, y, loss_fn, opt, ctx)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="toy sizes (checks the code paths on CPU)")
    p.add_argument("--model", default="unet3d_m")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = "bf16" if device.type == "cuda" else "none"
    patch = (64, 64, 64) if args.quick else (128, 128, 128)  # six levels need >= 64 for DynUNet
    volume = (72, 80, 80) if args.quick else (155, 240, 240)
    steps, warmup = (2, 1) if args.quick else (20, 5)
    torch.backends.cudnn.benchmark = True
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) "
          f"torch={torch.__version__} patch={patch}")

    # 1. suite U-Net vs DynUNet, FLOPs per second
    x = torch.randn(1, 2, *patch, device=device)
    y = torch.randint(0, 4, (1, *patch), device=device)
    ours = get_model(args.model, "3d", patch).to(device)
    ref = dynunet(2, width_div=4 if args.quick else 1).to(device)
    f_ours, f_ref = count_flops(ours, x.shape), count_flops(ref, x.shape)
    t_ours = time_steps(ours, x, y, device, amp, steps, warmup)
    t_ref = time_steps(ref, x, y, device, amp, steps, warmup)
    flops_ratio = (f_ours / t_ours) / (f_ref / t_ref)
    print(f"train step: {args.model} {t_ours * 1e3:.1f} ms ({f_ours / 1e9:.0f} GFLOP fwd), "
          f"DynUNet {t_ref * 1e3:.1f} ms ({f_ref / 1e9:.0f} GFLOP fwd); FLOP/s ratio {flops_ratio:.2f}")

    # 2. torch.compile
    compiled = torch.compile(get_model(args.model, "3d", patch).to(device))
    t_comp = time_steps(compiled, x, y, device, amp, steps, warmup + 2)
    print(f"compile: eager {t_ours * 1e3:.1f} ms, compiled {t_comp * 1e3:.1f} ms, speedup {t_ours / t_comp:.2f}")

    # 3. whole loop with the real loader vs the bare step
    with tempfile.TemporaryDirectory() as tmp:
        dl.generate_synthetic_dataset(tmp, n_cases=4, seed=0, shape=volume[::-1])
        cases = dl.discover_cases(tmp, "synthetic")
        cache = dl.PreprocessedCache(Path(tmp) / "cache", cases)
        cache.build(num_workers=4, progress=False)
        n = steps + warmup
        ds = dl.PatchDataset(cache, cache.case_ids, ["t1ce", "flair"], patch, samples_per_epoch=n)
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=0 if args.quick else 6,
                                             pin_memory=device.type == "cuda", persistent_workers=False)
        model = get_model(args.model, "3d", patch).to(device)
        loss_fn, opt, ctx = make_loss("nnunet"), torch.optim.AdamW(model.parameters(), 1e-4), autocast_context(device, amp)
        t0 = time.perf_counter()
        for i, (img, lab) in enumerate(loader):
            if i == warmup:
                sync(device)
                t0 = time.perf_counter()
            train_step(model, img.to(device, non_blocking=True), lab.to(device, non_blocking=True), loss_fn, opt, ctx)
        sync(device)
        t_loop = (time.perf_counter() - t0) / steps
        loop_fraction = t_ours / t_loop
        print(f"loop: {t_loop * 1e3:.1f} ms/step with the loader vs {t_ours * 1e3:.1f} bare: {loop_fraction:.2%}")

        # 4. sliding window over a whole volume
        image = torch.randn(1, 2, *volume, device=device)
        model.eval()
        for _ in range(2):
            sync(device)
            t0 = time.perf_counter()
            sliding_window_predict(model, image, patch, 0.1, sw_batch_size=2, amp=amp)
            sync(device)
            t_sw = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.no_grad(), ctx():
                sliding_window_inference(image, patch, 2, model, overlap=0.1, mode="gaussian")
            sync(device)
            t_monai = time.perf_counter() - t0
        sw_ratio = t_monai / t_sw
        print(f"sliding window {volume}: suite {t_sw * 1e3:.0f} ms, MONAI {t_monai * 1e3:.0f} ms, ratio {sw_ratio:.2f}")

    # 5. PAM and latency
    for name in ([args.model] if args.quick else [args.model, "unet3d_s", "swin_unetr", "dualbranch_01_unet_s"]):
        m = get_model(name, "3d", patch)
        pam = measure_pam(m, (1, 2, *patch), device, amp)
        lat = measure_latency(m, (1, 2, *patch), device, amp)
        print(f"{name}: PAM {pam or 'n/a (no CUDA)'} latency {lat['latency_ms']:.1f} ± {lat['latency_ms_std']:.1f} ms")
        del m
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"dynunet_flops_ratio={flops_ratio:.3f} compile_speedup={t_ours / t_comp:.3f} "
          f"loop_vs_bare={loop_fraction:.3f} sliding_window_vs_monai={sw_ratio:.3f}")


if __name__ == "__main__":
    main()
