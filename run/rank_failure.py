"""One rank's exception inside a unit reaches every rank within seconds (under torchrun).

Without this, an exception raised on one rank only (out of memory on one GPU) leaves the other ranks
waiting in a collective (DDP's gradient all-reduce inside ``backward``, the stop check, the gathering of
validation and test cases, a barrier) until the collective timeout, 30 minutes by default. Instead:

1. The failing rank posts the failure (unit, epoch, reason, and its collective sequence number: how many
   collectives it has entered) to the job's rendezvous store (``utils.distributed.job_store``: a TCP
   key-value store every rank and node reaches, independent of the process group), then waits.
2. A watchdog thread on every rank polls the store (every :data:`POLL_S`). Once a failure is posted,
   every rank that did not fail publishes its own sequence number there.
3. Rank 0's watchdog decides, from those numbers alone:

   - **continue**: every rank failed in this unit at the same sequence number (they raised at the same
     point, e.g. out of memory on every GPU at the same step): no collective is pending, so the unit is
     recorded in ``failed_runs.csv`` and every rank goes on with the next unit, as in one process;
   - **end**: a rank that did not fail has entered a collective the failed rank never will (its sequence
     number is higher: it is blocked there), two failed ranks stopped at different points, or
     ``BRATS_FAILURE_TIMEOUT_S`` (default :data:`DEFAULT_TIMEOUT_S`) seconds passed without a decision.
     Rank 0 records the unit in ``failed_runs.csv`` (the failing rank's reason, and which rank), then
     every rank leaves with status 3 (``os._exit`` from its watchdog thread: a rank blocked in a gloo
     collective cannot be woken otherwise, nor safely in an NCCL one), and torchrun ends non-zero.
     Every finished unit is on disk (atomic writes), and so is the failed unit's last checkpoint:
     ``--resume`` continues the run, trying the units of ``failed_runs.csv`` after the others.

A rank blocked in a collective has entered it, so a one-rank failure usually ends the job within a poll
interval or two; the timeout bounds the rest (a rank still computing, with no collective for a while).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from experiment.run_folder import UnitKey
from run.logs import LOGGED_PACKAGES
from utils import distributed as du
from utils.errors import first_line

log = logging.getLogger(__name__)

TIMEOUT_ENV = "BRATS_FAILURE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0
POLL_S = 0.2
EXIT_JOB_ENDED = 3  # as "some units failed" (loop.EXIT_UNITS_FAILED)
CONTINUE, END = "continue", "end"


def failure_timeout_s() -> float:
    """``BRATS_FAILURE_TIMEOUT_S`` (seconds, > 0), else :data:`DEFAULT_TIMEOUT_S`."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_S
    seconds = float(value)
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {value!r}")
    return seconds


def flush_logs() -> None:
    """Flush every handler of the loggers the run writes to (run.log included), stdout and stderr."""
    loggers = [logging.getLogger(name) for name in LOGGED_PACKAGES]
    for handler in {h for lg in loggers for h in lg.handlers}:
        try:
            handler.flush()
        except Exception:  # leaving anyway
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


class RankFailureWatch:
    """The protocol of the module docstring for one job: :meth:`unit_failed` on a failing rank, a watchdog
    thread on every rank. ``on_end(key, epoch, reason)`` records a unit that ends the job (called on rank 0,
    from the watchdog thread, before any rank leaves)."""

    def __init__(self, store: Any, rank: int, world_size: int, on_end: Callable[[UnitKey, int, str], None],
                 timeout_s: float | None = None, poll_s: float = POLL_S,
                 exit_process: Callable[[int], None] = os._exit, seq: Callable[[], int] = du.collective_seq) -> None:
        self.store, self.rank, self.world_size, self.on_end = store, rank, world_size, on_end
        self.timeout_s = failure_timeout_s() if timeout_s is None else timeout_s
        self.poll_s = poll_s
        self._exit_process, self._seq = exit_process, seq
        job = os.environ.get("TORCHELASTIC_RUN_ID", "job")
        self.prefix = f"brats_rank_failure/{job}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self._failed_here: set[str] = set()
        self._decided: set[str] = set()
        self._first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rank-failure-watch", daemon=True)

    # ------------------------------------------------------------------ keys
    def _key(self, *parts: Any) -> str:
        return "/".join([self.prefix, *map(str, parts)])

    def _get(self, key: str) -> str | None:
        return self.store.get(key).decode() if self.store.check([key]) else None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, ctx: du.DistContext, on_end: Callable[[UnitKey, int, str], None]) -> RankFailureWatch:
        watch = cls(du.job_store(), ctx.rank, ctx.world_size, on_end)
        watch._thread.start()
        return watch

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.poll_s + 1)

    def leave(self, why: str) -> None:
        """End this process now (status 3), logs flushed: the job ends (torchrun stops the other ranks too)."""
        log.error("rank %d: %s; leaving with exit status %d", self.rank, why, EXIT_JOB_ENDED)
        flush_logs()
        self._exit_process(EXIT_JOB_ENDED)

    # ------------------------------------------------------------------ the failing rank (main thread)
    def unit_failed(self, key: UnitKey, unit: str, epoch: int, exc: BaseException) -> None:
        """Post this rank's failure of ``unit`` and wait for rank 0's decision. Returns when every rank
        failed there alike (the caller records the unit and goes on); otherwise the process ends here."""
        record = {"model": key.model, "seed": key.seed, "fold": key.fold, "epoch": epoch,
                  "reason": first_line(exc, with_type=True), "seq": self._seq()}
        self._failed_here.add(unit)
        self.store.set(self._key(unit, "failed", self.rank), json.dumps(record))
        self.store.set(self._key("active"), unit)
        deadline = time.monotonic() + self.timeout_s + 30.0
        while time.monotonic() < deadline:
            decision = self._get(self._key(unit, "decision"))
            if decision == CONTINUE:
                return
            if decision == END:
                self.leave(f"unit {unit} ended the job")
                return  # only when exit_process does not exit (tests)
            time.sleep(self.poll_s / 4)
        self.leave(f"no decision about unit {unit} from rank 0 within {self.timeout_s + 30:.0f} s")

    # ------------------------------------------------------------------ every rank (watchdog thread)
    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._poll()
            except Exception as exc:  # the store went away: the job is ending; nothing left to watch
                if not self._stop.is_set():
                    log.warning("warning: rank %d: the rank-failure watch stopped: %s", self.rank,
                                first_line(exc, with_type=True))
                return

    def _poll(self) -> None:
        unit = self._get(self._key("active"))
        if unit is None or unit in self._decided:
            return
        decision = self._get(self._key(unit, "decision"))
        if decision is not None:
            self._decided.add(unit)
            if decision == END and self.rank != 0:
                self.leave(f"unit {unit} failed on another rank and ended the job")
            return
        if unit not in self._failed_here:
            self.store.set(self._key(unit, "seq", self.rank), str(self._seq()))
        if self.rank == 0:
            self._decide(unit)

    def _decide(self, unit: str) -> None:
        """Rank 0: continue, end, or wait (module docstring)."""
        now = time.monotonic()
        first_seen = self._first_seen.setdefault(unit, now)
        failed = {r: json.loads(v) for r in range(self.world_size)
                  if (v := self._get(self._key(unit, "failed", r))) is not None}
        if not failed:
            return
        seqs = {r: int(v) for r in range(self.world_size)
                if r not in failed and (v := self._get(self._key(unit, "seq", r))) is not None}
        failed_seqs = {rec["seq"] for rec in failed.values()}
        waiting = sorted(r for r, s in seqs.items() if s > min(failed_seqs))
        if len(failed) == self.world_size and len(failed_seqs) == 1:
            self._decided.add(unit)
            self.store.set(self._key(unit, "decision"), CONTINUE)
            return
        if len(failed_seqs) > 1:
            why = "the ranks failed at different points"
        elif waiting:
            why = f"rank(s) {', '.join(map(str, waiting))} waited in a collective"
        elif now - first_seen > self.timeout_s:
            why = f"no other rank failed there within {self.timeout_s:.0f} s"
        else:
            return
        self._decided.add(unit)
        record = failed[min(failed)]  # the lowest failing rank's reason
        ranks = ", ".join(map(str, sorted(failed)))
        reason = (f"{record['reason']} [on rank {ranks} of {self.world_size}; {why}: the job was ended, "
                  "--resume continues]")
        key = UnitKey(record["model"], record["seed"], record["fold"])
        try:
            self.on_end(key, int(record["epoch"]), reason)
        finally:
            self.store.set(self._key(unit, "decision"), END)
            self.leave(f"unit {unit} failed on rank {ranks} ({record['reason']}); {why}")
