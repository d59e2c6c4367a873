"""``python -m visualization``: merge run folders, or rebuild a folder's report.

    python -m visualization RUN_DIR [RUN_DIR ...] --output DIR   merge run folders trained in separate jobs: their
                                                                tables, comparison, statistics, ranking, charts and
                                                                report.html into DIR (visualization/merge.py)
    python -m visualization FOLDER [FOLDER ...] --report         rebuild report.html of each run or merged folder
                                                                from its files (visualization/report.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.errors import first_line
from visualization.merge import MERGED_JSON, MergeError, merge_runs
from visualization.report import write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m visualization",
        description="Merge run folders (same splits, each (model, seed, fold) once) and write the comparison "
                    "table, statistical tests, ranking, charts and report.html of all their models into --output; "
                    "or, with --report, rebuild report.html of each folder given.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (or merged folders, --report)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--output", metavar="DIR", help="merge RUN_DIRs into this folder (created)")
    action.add_argument("--report", action="store_true",
                        help="rebuild RUN_DIR/report.html from the folder's files (a run or a merged folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.report:
            for folder in args.run_dirs:
                print(f"wrote {write_report(folder)}")
            return 0
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
