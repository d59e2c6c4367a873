"""Command line of the suite: parse flags -> ExperimentConfig -> run_integrated_experiment.

    python integrated_experiment.py --dataset_version synthetic --dim 3d --models unet3d_xs
    torchrun --nproc_per_node=4 integrated_experiment.py --epochs 10 --batch_size 4 --seeds 24

Every option is a field of ``experiment.config.ExperimentConfig`` (its flag, help and choices live
there): the parser is built from that one table. A research tool for comparing segmentation models;
not for diagnosis.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import MISSING, Field
from typing import Any

from experiment.config import ExperimentConfig, cli_fields

GROUPS = ("data", "training", "run")


def _add_option(group: argparse._ActionsContainer, f: Field) -> None:
    cli: dict[str, Any] = f.metadata["cli"]
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    if cli["flags"]:  # mutually exclusive switches that each set one value
        switches = group.add_mutually_exclusive_group()
        for flag, (value, help_text) in cli["flags"].items():
            switches.add_argument(flag, dest=f.name, action="store_const", const=value, help=help_text)
        group.set_defaults(**{f.name: default})
        return
    flag = cli["flag"] or f"--{f.name}"
    if isinstance(default, bool):
        action = "store_false" if default else "store_true"
        group.add_argument(flag, dest=f.name, action=action, default=default, help=cli["help"])
        return
    kwargs = {k: cli[k] for k in ("choices", "nargs", "metavar") if cli[k] is not None}
    value_type = cli["type"] or type(default)
    group.add_argument(flag, dest=f.name, type=value_type, default=default, help=cli["help"], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="integrated_experiment.py",
        description="Train, evaluate and compare BraTS brain-tumour segmentation models (accuracy and efficiency). "
                    "Research use only, not for diagnosis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for f in cli_fields():
        _add_option(groups[f.metadata["cli"]["group"]], f)
    groups["run"].add_argument("--list_models", action="store_true",
                               help="print every registered model (family, modalities, dims, parameters) and exit")
    groups["data"].add_argument("--preprocess_only", action="store_true",
                                help="validate the cases and build the preprocessing cache (same data flags), "
                                     "print a summary and exit")
    return p


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return ExperimentConfig(**{f.name: getattr(args, f.name) for f in cli_fields()})


def print_models() -> None:
    from models.catalog import catalog_rows, format_lines

    print("\n".join(format_lines(catalog_rows())))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        print_models()
        return 0
    try:
        cfg = config_from_args(args)
    except ValueError as exc:  # a flag value the configuration rejects
        parser.error(str(exc))

    import data_loader as dl
    from experiment.data import DataError, preprocess_only
    from experiment.loop import run_integrated_experiment
    from utils.checkpoint import CheckpointError

    try:
        if args.preprocess_only:
            print(preprocess_only(cfg))
            return 0
        summary = run_integrated_experiment(cfg)
    except (dl.BadCaseError, DataError, CheckpointError, OSError, ValueError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return 2
    if summary.failed:
        print(f"{len(summary.failed)} unit(s) failed; see {summary.run_dir / 'failed_runs.csv'}", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
