"""The run's logging: progress on stdout (rank 0), warnings on stderr (every rank, prefixed), and everything with
timestamps in the run folder's ``run.log``; the project's packages log under their module names."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from utils import distributed as du

# the packages whose loggers the run writes (run.log); the console shows the phases' own progress only
LOGGED_PACKAGES = ("experiment", "training", "inference", "evaluation", "run", "brats_data", "visualization",
                   "models", "metrics", "utils")
CONSOLE_PACKAGES = ("experiment", "training", "inference", "evaluation", "run")


@contextmanager
def run_logging(ctx: du.DistContext, log_file: Path | None = None) -> Iterator[None]:
    """Progress to stdout and warnings to stderr (rank 0; other ranks: warnings only, prefixed), and,
    once the run folder exists, everything with timestamps to ``run.log`` (see :func:`add_log_file`)."""
    loggers = [logging.getLogger(name) for name in LOGGED_PACKAGES]
    previous = [(lg, lg.level, lg.propagate) for lg in loggers]
    handlers: list[logging.Handler] = []
    if ctx.is_main:
        out = logging.StreamHandler(sys.stdout)
        # the console shows the run's own progress; other packages' notes go to run.log only
        out.addFilter(lambda record: record.levelno < logging.WARNING
                      and record.name.split(".")[0] in CONSOLE_PACKAGES)
        handlers.append(out)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("%(message)s" if ctx.is_main else f"[rank {ctx.rank}] %(message)s"))
    handlers.append(err)
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.propagate = False
        for h in handlers:
            lg.addHandler(h)
    try:
        yield
    finally:
        for lg, level, propagate in previous:
            for h in list(lg.handlers):
                if h in handlers or getattr(h, "_run_log", False):
                    lg.removeHandler(h)
            lg.setLevel(level)
            lg.propagate = propagate
        for h in handlers:
            h.close()


def add_log_file(path: Path) -> None:
    """Append everything the run logs, with timestamps, to ``path`` (rank 0 only)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._run_log = True  # type: ignore[attr-defined]
    for name in LOGGED_PACKAGES:
        logging.getLogger(name).addHandler(handler)
