"""``python -m visualization RUN_DIR [RUN_DIR ...] --output DIR``: merge run folders trained in separate
jobs and write their comparison table, statistics, ranking and charts into DIR (visualization/merge.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.errors import first_line
from visualization.merge import MERGED_JSON, MergeError, merge_runs


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
    missing = json.loads((Path(args.output) / MERGED_JSON).read_text()).get("missing_units") or []
    if missing:
        names = ", ".join(f"{u['model']} seed {u['seed']} fold {u['fold']}" for u in missing[:5])
        print(f"warning: {len(missing)} unit(s) of the experiment finished in none of these runs ({names}"
              f"{' ...' if len(missing) > 5 else ''}); see their failed_runs.csv, merged_runs.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
