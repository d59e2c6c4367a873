"""Command line of the suite: parse flags -> ExperimentConfig -> run_integrated_experiment.

    python integrated_experiment.py --dataset_version synthetic --dim 3d --models unet3d_xs
    python integrated_experiment.py --dim 3d --models unet3d_s swin_unetr --use_5fold --list_units
    python integrated_experiment.py --dim 3d --models unet3d_s swin_unetr --use_5fold --shard 0/4
    torchrun --nproc_per_node=4 integrated_experiment.py --epochs 10 --batch_size 4 --seeds 24

Every option is a field of ``experiment.config.ExperimentConfig`` (its flag, help and choices live
there): the parser is built from that one table. A research tool for comparing segmentation models;
not for diagnosis.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from experiment.config import ExperimentConfig, apply_recipe, build_parser, cli_fields, given_fields


def config_from_args(args: argparse.Namespace, given: set[str] | None = None) -> ExperimentConfig:
    """The configuration of parsed ``args``; with ``--recipe`` its values fill every option not in ``given`` (the
    options on the command line, :func:`experiment.config.given_fields`; ``None``: those that differ from their
    defaults)."""
    values = {f.name: getattr(args, f.name) for f in cli_fields()}
    if given is None:
        defaults = vars(build_parser().parse_args([]))
        given = {k for k, v in values.items() if v != defaults.get(k)}
    return ExperimentConfig(**apply_recipe(values, given))


def print_models() -> None:
    from models.catalog import catalog_rows, format_lines

    print("\n".join(format_lines(catalog_rows())))


def list_units(cfg: ExperimentConfig) -> None:
    """``--list_units``: the experiment's units (of the run, with --resume), one per line, then their count."""
    from experiment.config import resume_config
    from experiment.sharding import list_units_lines
    from models import model_spec

    if cfg.resume is not None:
        cfg = resume_config(cfg)
    for name in cfg.model_names:
        model_spec(name)  # an unknown model: ValueError naming the known ones
    print("\n".join(list_units_lines(cfg)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        print_models()
        return 0
    try:
        cfg = config_from_args(args, given_fields(argv))
    except ValueError as exc:  # a flag value the configuration rejects
        parser.error(str(exc))

    from brats_data import BadCaseError
    from experiment.data import DataError, preprocess_only
    from experiment_runner import run_integrated_experiment
    from utils.checkpoint import CheckpointError
    from utils.errors import first_line

    try:
        if args.list_units:
            list_units(cfg)
            return 0
        if args.preprocess_only:
            print(preprocess_only(cfg))
            return 0
        summary = run_integrated_experiment(cfg)  # charts, report.html and the trackers of --tracker
    except (BadCaseError, DataError, CheckpointError, OSError, ValueError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    if summary.failed:
        print(f"{len(summary.failed)} unit(s) failed; see {summary.run_dir / 'failed_runs.csv'}", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
