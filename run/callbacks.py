"""What a run carries from unit to unit (:class:`RunState`) and what a caller hooks into it (:class:`RunCallbacks`:
charts, reports, trackers), called by :func:`notify` on rank 0. The callers pass the callbacks (the command line:
``visualization.ChartCallbacks`` and the trackers of ``--tracker``, ``run/tracking.py``); the loop builds none."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluation.scoring import EvaluationResult
from experiment.config import ExperimentConfig
from experiment.run_folder import RunFolder, UnitKey
from run.rank_failure import RankFailureWatch
from training.trainer import TrainResult
from utils import distributed as du
from utils.errors import first_line

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the loop carries from unit to unit."""

    cfg: ExperimentConfig
    ctx: du.DistContext
    run: RunFolder
    cache: Any
    splits: dict[str, Any]
    done: set[UnitKey]
    efficiency: dict[str, tuple[dict, str]] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    callbacks: Sequence[RunCallbacks] = ()
    watch: RankFailureWatch | None = None  # under torchrun: one rank's failure reaches every rank
    progress: dict[str, Any] = field(default_factory=dict)  # the unit in progress and its last epoch (rank 0)


class RunCallbacks:
    """What a caller hooks into a run (charts, reports, trackers); every method is a no-op here.

    Called on rank 0 only, after the run folder holds what they describe, in this order: ``on_run_start``;
    per unit ``on_unit_start``, ``on_train_progress`` (every ``CHECK_EVERY`` steps), ``on_epoch_end``, then
    ``on_unit_end`` or ``on_unit_failed`` (or ``on_unit_interrupted``, and the run ends); ``on_run_end``. An
    exception in a callback is logged as a warning and the run goes on.
    """

    def on_run_start(self, state: RunState) -> None:
        """The run folder, config.json, splits.json and run.log exist; no unit has started in this process."""

    def on_unit_start(self, state: RunState, key: UnitKey) -> None:
        """A unit starts training (or resumes: its epoch rows so far are in all_epochs_results.csv)."""

    def on_train_progress(self, state: RunState, key: UnitKey, epoch: int, step: int, loss: float) -> None:
        """The mean training loss of ``epoch`` over its first ``step`` steps and every rank."""

    def on_epoch_end(self, state: RunState, key: UnitKey, row: dict[str, Any]) -> None:
        """An epoch's row (all_epochs_results.csv columns) was written."""

    def on_unit_end(self, state: RunState, key: UnitKey, result: TrainResult, evaluation: EvaluationResult) -> None:
        """A unit finished: its rows are written; ``result`` holds the best weights, ``evaluation`` its test."""

    def on_unit_failed(self, state: RunState, key: UnitKey, epoch: int, reason: str) -> None:
        """A unit failed (recorded in failed_runs.csv); the run goes on with the next one."""

    def on_unit_interrupted(self, state: RunState, key: UnitKey) -> None:
        """A stop request (SIGINT/SIGTERM) ended the unit, which stays resumable, and the run."""

    def on_run_end(self, state: RunState) -> None:
        """Every unit ran; the comparison, statistics and ranking files are written."""


def notify(state: RunState, event: str, *args: Any) -> None:
    """Call ``event`` on every callback (rank 0); a failure is a warning, never a lost run."""
    if not state.ctx.is_main:
        return
    for callback in state.callbacks:
        try:
            getattr(callback, event)(state, *args)
        except Exception as exc:  # a chart or a tracker must never cost the results
            log.warning("warning: %s.%s failed: %s", type(callback).__name__, event, first_line(exc, with_type=True))
