"""``python -m visualization RUN_DIR [RUN_DIR ...] --output DIR``: merge run folders trained in separate
jobs and write their comparison table, statistics, ranking and charts into DIR (visualization/merge.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from utils.errors import first_line
from visualization.merge import MergeError, merge_runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m visualization",
        description="Merge run folders (same splits, each (model, seed, fold) once) and write the comparison "
                    "table, statistical tests, ranking and charts of all their models into --output.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders to merge")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the merged files (created)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        written = merge_runs(args.run_dirs, args.output)
    except (MergeError, OSError, ValueError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    print(f"merged {len(args.run_dirs)} run folders into {args.output}: "
          + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
