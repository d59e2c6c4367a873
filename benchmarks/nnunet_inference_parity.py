"""The suite's Predictor (``blending="nnunet"``) against nnU-Net v2's ``nnUNetPredictor`` on CPU, one thread, the
same weights (a small ``PlainConvUNet``) and settings (step 0.5, Gaussian, mirroring on all axes): the largest
probability difference, and the time per case of the suite over nnU-Net's (the goal: <= 1.0).

    python benchmarks/nnunet_inference_parity.py [--cases 3] [--patch 48 48 48] [--repeats 2]

Needs the nnU-Net v2 reference environment (``tests/nnunet_ref.py``). Synthetic cases, preprocessed by the suite's
cache; nnU-Net runs in its own process (its import time is not counted), the suite in this one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from brats_data import PreprocessedCache, discover_cases, generate_synthetic_dataset  # noqa: E402
from tests.nnunet_ref import run_in_nnunet  # noqa: E402
from tests.test_nnunet_parity import NNUNET_INFERENCE, parity_weights, suite_probabilities  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48])
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="synthetic NIfTI shape (X Y Z)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_synthetic_dataset(root / "data", n_cases=args.cases, seed=1, shape=tuple(args.shape))
        cache = PreprocessedCache(root / "cache", discover_cases(root / "data", "synthetic"))
        cache.build(progress=False)
        images = {cid: np.asarray(cache.image(cid)).astype(np.float32) for cid in cache.case_ids}
        np.savez(root / "images.npz", **images)
        parity_weights(root / "net.pt")
        theirs_s, ours_s = [], []
        for _ in range(args.repeats):  # alternate, so that a busy machine slows both alike
            out = run_in_nnunet(NNUNET_INFERENCE, {"weights": str(root / "net.pt"), "images": str(root / "images.npz"),
                                                   "patch": args.patch, "out": str(root / "nnunet.npz")}, timeout=3600)
            theirs_s.append(out["seconds"])
            ours, seconds = suite_probabilities(images, root / "net.pt", args.patch)
            ours_s.append(seconds)
        theirs = np.load(root / "nnunet.npz")
        diff = max(float(np.abs(ours[k] - theirs[k]).max()) for k in images)
        t_theirs = float(np.median(np.min(np.array(theirs_s), axis=0)))
        t_ours = float(np.median(np.min(np.array(ours_s), axis=0)))
        shapes = ", ".join("x".join(map(str, im.shape[1:])) for im in images.values())
        print(f"cases {shapes}, patch {tuple(args.patch)}, step 0.5, Gaussian, 8 mirrorings, CPU, 1 thread")
        print(f"max |p_suite - p_nnunet|: {diff:.2e} (nnU-Net's float16 accumulators; tests/test_nnunet_parity.py)")
        print(f"time per case: suite {t_ours:.2f} s, nnUNetPredictor {t_theirs:.2f} s (best of {args.repeats}, "
              f"median over cases); ratio suite/nnU-Net {t_ours / t_theirs:.3f}")


if __name__ == "__main__":
    main()
