"""Command line of the suite: parse flags -> ExperimentConfig -> run_integrated_experiment.

    python integrated_experiment.py --dataset_version synthetic --dim 3d --models unet3d_xs
    torchrun --nproc_per_node=4 integrated_experiment.py --epochs 10 --batch_size 4 --seeds 24

A research tool for comparing segmentation models; not for diagnosis.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_DATA_PATH = os.environ.get("BRATS_DATA_PATH", "./data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="integrated_experiment.py",
        description="Train, evaluate and compare BraTS brain-tumour segmentation models (accuracy and efficiency). "
                    "Research use only, not for diagnosis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--data_path", default=DEFAULT_DATA_PATH,
                      help="common dataset root (env BRATS_DATA_PATH, else ./data)")
    data.add_argument("--dataset_version", default="brats2018",
                      choices=["brats2018", "brats2021", "brats2023", "synthetic"],
                      help="dataset layout under --data_path; 'synthetic' generates a BraTS-like dataset once")
    data.add_argument("--synthetic_cases", type=int, default=20, help="number of synthetic cases")
    data.add_argument("--synthetic_shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                      help="volume size of synthetic cases (default 96 96 64; real BraTS is 240 240 155)")
    data.add_argument("--max_samples", type=int, default=None, help="use at most N cases (first N by case id)")
    data.add_argument("--use_5fold", action="store_true", help="5-fold cross-validation instead of 80/10/10")
    data.add_argument("--skip_bad_cases", action="store_true",
                      help="skip unreadable/inconsistent cases (listed in skipped_cases.csv) instead of stopping")
    data.add_argument("--cache_dir", default=None,
                      help="preprocessed cache folder (default: {data_path}/preprocessed/{dataset_version})")
    data.add_argument("--num_workers", type=int, default=8, help="DataLoader workers (per process under torchrun)")
    data.add_argument("--sharing_strategy", default="file_descriptor", choices=["file_descriptor", "file_system"],
                      help="torch.multiprocessing sharing strategy (file_system if /dev/shm or open files run out)")
    data.add_argument("--patches_per_case", type=int, default=None,
                      help="training patches (3D) or slices (2D) drawn per training case per epoch "
                           "(default 1 in 3D, 8 in 2D)")

    train = p.add_argument_group("training")
    train.add_argument("--models", nargs="+", default=None, help="model names (default: every model for --dim)")
    train.add_argument("--dim", default="2d", choices=["2d", "3d"], help="2D slice models or 3D volume models")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch_size", type=int, default=1, help="per GPU/process under distributed training")
    train.add_argument("--seeds", type=int, nargs="+", default=[24], help="e.g. --seeds 24 42 123")
    train.add_argument("--patch_size", type=int, nargs="+", default=[128, 128, 128],
                       help="training patch and sliding-window ROI: Z Y X (3D); Y X or Z Y X (2D uses the last two)")
    train.add_argument("--overlap", type=float, default=0.1, help="sliding-window overlap")
    train.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (polynomial decay, power 0.9)")
    loss = train.add_mutually_exclusive_group()
    loss.add_argument("--use_nnunet_loss", action="store_true", default=True,
                      help="Dice 70%% + CE 30%% (the default)")
    loss.add_argument("--use_standard_loss", action="store_true", help="Dice 50%% + CE 50%%")
    train.add_argument("--use_pretrained", action="store_true",
                       help="initialise from local weights {pretrained_dir}/{model}.pth (nothing is downloaded)")
    train.add_argument("--pretrained_dir", default="pretrained")
    train.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on GPU)")
    train.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
                       help="mixed precision on CUDA (auto = bf16); always off on CPU")
    train.add_argument("--compile", action="store_true", help="torch.compile the training model")

    run = p.add_argument_group("run")
    run.add_argument("--results_dir", default="baseline_results", help="where run folders are created")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run in that folder")
    run.add_argument("--no_efficiency", action="store_true", help="skip FLOPs/PAM/latency measurement")
    run.add_argument("--list_models", action="store_true",
                     help="print every registered model (modalities, dims) and exit")
    return p


def config_from_args(args: argparse.Namespace):
    from experiment_runner import ExperimentConfig

    return ExperimentConfig(
        data_path=args.data_path, dataset_version=args.dataset_version, epochs=args.epochs,
        batch_size=args.batch_size, seeds=args.seeds, models=args.models, dim=args.dim,
        use_pretrained=args.use_pretrained, pretrained_dir=args.pretrained_dir,
        loss="standard" if args.use_standard_loss else "nnunet", num_workers=args.num_workers,
        sharing_strategy=args.sharing_strategy, use_5fold=args.use_5fold, max_samples=args.max_samples,
        synthetic_cases=args.synthetic_cases, synthetic_shape=args.synthetic_shape, results_dir=args.results_dir, patch_size=args.patch_size,
        overlap=args.overlap, device=args.device, resume=args.resume, skip_bad_cases=args.skip_bad_cases,
        deterministic=args.deterministic, lr=args.lr, patches_per_case=args.patches_per_case, amp=args.amp,
        compile=args.compile, cache_dir=args.cache_dir, measure_efficiency=not args.no_efficiency,
    )


def print_models() -> None:
    from utils.experiment_utils import list_models, model_spec

    for name in list_models():
        spec = model_spec(name)
        print(f"{name:48s} modalities={','.join(spec.modalities):22s} dims={','.join(spec.dims)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_models:
        print_models()
        return 0
    if len(args.patch_size) not in (2, 3):
        build_parser().error(f"--patch_size takes 2 or 3 values, got {len(args.patch_size)}")
    if args.dim == "3d" and len(args.patch_size) != 3:
        build_parser().error("--dim 3d needs --patch_size Z Y X (3 values)")

    import data_loader as dl
    from experiment_runner import DataError, run_integrated_experiment
    from utils.checkpoint import CheckpointError

    try:
        cfg = config_from_args(args)
        summary = run_integrated_experiment(cfg)
    except (dl.BadCaseError, DataError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return 2
    if summary.failed:
        print(f"{len(summary.failed)} unit(s) failed; see {summary.run_dir / 'failed_runs.csv'}", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
