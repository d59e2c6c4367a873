"""Bitwise sensitivity of CPU training to run-time settings (kernels, threads), in seconds instead of minutes.

Trains each model of the README demo (``unet3d_xs``, ``unet3d_stride_xs``: 32^3 patches, batch 2, AdamW
lr 3e-3, the default Dice + CE loss, seed 24) for ``--steps`` steps on fixed random data, then runs one
forward pass in eval mode, and prints an md5 of the weights and of the eval logits, and the last loss to
17 digits. Run it under different environments (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``,
``OMP_NUM_THREADS``): equal digests mean bit-identical training; different digests mean the demo's
figures can differ too (ten epochs amplify any last-bit difference).

    OMP_NUM_THREADS=2 python benchmarks/bench_repro.py --steps 20 [--deterministic] [--no_mkldnn]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models import get_model, model_spec  # noqa: E402
from training.losses import make_loss  # noqa: E402
from utils.runtime import set_seed  # noqa: E402


def digest(tensors) -> str:
    h = hashlib.md5()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["unet3d_xs", "unet3d_stride_xs"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--no_mkldnn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    args = ap.parse_args()
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    env = {k: os.environ.get(k, "-") for k in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} "
          f"capability={torch.backends.cpu.get_cpu_capability()} env={env} "
          f"deterministic={args.deterministic} mkldnn={torch.backends.mkldnn.enabled}")
    g = torch.Generator().manual_seed(0)
    image4 = torch.randn(2, 4, 32, 32, 32, generator=g)
    smooth = torch.nn.functional.avg_pool3d(torch.randn(2, 1, 32, 32, 32, generator=g), 5, 1, 2)[:, 0]
    label = torch.bucketize(smooth, torch.tensor([0.05, 0.15, 0.25])).long()  # 4 classes, blobby
    loss_fn = make_loss("nnunet")
    for name in args.models:
        set_seed(24, args.deterministic)
        model = get_model(name, "3d", (32, 32, 32), 4)
        image = image4[:, :len(model_spec(name).modalities)]
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-5)
        model.train()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(image).float(), label)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(image)
        print(f"{name:<18} loss {loss.item():.17g} weights {digest(model.state_dict().values())} "
              f"eval logits {digest([logits])}")


if __name__ == "__main__":
    main()
