"""Segment new cases with the best checkpoints of a run, written as NIfTI files the BraTS way.

    python predict.py --run_dir baseline_results/integrated_experiment_results_YYYYMMDD_HHMMSS \
        --input /data/new_cases --output /data/predictions [--tta] [--save_probabilities]
    torchrun --nproc_per_node=4 predict.py --run_dir SHARD_0 SHARD_1 SHARD_2 --input ... --output ...

``--input`` is a case folder or a folder of case folders in any BraTS layout (2018/2021:
``{case}_{t1,t1ce,t2,flair}.nii.gz``; 2023: ``{case}-{t1n,t1c,t2w,t2f}.nii.gz``); a segmentation file
is not needed. Each case is preprocessed as the run's cache was, segmented by sliding window with the
mean softmax of the chosen checkpoints (default: every best checkpoint of the run's model; several run folders
of one experiment, e.g. the shards of a sweep, form one ensemble), and written
as ``OUT/{case_id}.nii.gz`` (uint8, the input's grid, affine and header, labels of the case's layout:
ET = 4 for 2018/2021, 3 for 2023). Under torchrun the cases are shared out over the processes (one per GPU),
each writing its own; the last line gives the cases per second. The logic lives in ``inference/export.py``.
Research tool: not for diagnosis or treatment decisions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brats_data import BadCaseError
from inference.export import predict_folder
from inference.predictor import BLENDINGS
from utils.checkpoint import CheckpointError
from utils.errors import first_line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Segment new BraTS cases with the best checkpoints of a run.")
    p.add_argument("--run_dir", required=True, nargs="+", metavar="RUN_DIR",
                   help="the run folder (config.json, *_best.pth), or several of one experiment (e.g. the shards "
                   "of a sweep: the same configuration and splits, each unit in one)")
    p.add_argument("--input", required=True, help="a case folder, or a folder of case folders")
    p.add_argument("--output", required=True, help="folder for {case_id}.nii.gz (and .npz)")
    p.add_argument("--models", nargs="+", default=None, help="models whose best checkpoints are ensembled "
                   "(default: the run's model; several models form one ensemble, each checkpoint weighing the same)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="only the checkpoints of these seeds")
    p.add_argument("--folds", nargs="+", type=int, default=None, help="only the checkpoints of these folds")
    p.add_argument("--tta", action="store_true", help="also average over mirrored inputs (8 in 3D, 4 in 2D)")
    p.add_argument("--save_probabilities", action="store_true",
                   help="also write {case_id}.npz: float16 class probabilities on the input's grid")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the run's)")
    p.add_argument("--sw_batch_size", type=int, default=None, help="windows per forward (default: the run's)")
    p.add_argument("--blending", default=None, choices=BLENDINGS,
                   help="how overlapping windows are weighed (default: the run's --blending)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--overwrite", action="store_true", help="replace predictions already in --output")
    p.add_argument("--no_postprocess", action="store_true", help="do not apply the checkpoints' post-processing rule "
                   "(chosen by --postprocess; applied when the chosen checkpoints share one)")
    args = p.parse_args(argv)
    try:
        summary = predict_folder(
            args.run_dir, args.input, args.output, models=args.models, seeds=args.seeds, folds=args.folds,
            tta=args.tta, save_probabilities=args.save_probabilities, overlap=args.overlap,
            sw_batch_size=args.sw_batch_size, blending=args.blending, device=args.device, overwrite=args.overwrite,
            postprocess=not args.no_postprocess)
    except (BadCaseError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    if summary.rank == 0:
        print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
