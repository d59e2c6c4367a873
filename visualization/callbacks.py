"""What a run draws, hooked into the loop as callbacks (``run.loop.RunCallbacks``): the loop never
imports ``visualization/``; the CLI (and the ``experiment_runner`` facade) pass :class:`ChartCallbacks`.

- after each unit: with ``--gradcam``, ``gradcam_{unit}.png``; the first test case's prediction of the
  first seed is kept for the slice figures;
- at the end of the run: every chart of the run folder's CSVs (:func:`make_all_plots`), one slice
  figure per (seed, fold) with the ground truth and every model's segmentation of that case, then
  ``report.html`` (visualization/report.py), which embeds them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from brats_data import modality_indices
from experiment.run_folder import UnitKey
from run.callbacks import RunCallbacks, RunState
from utils.errors import first_line
from visualization.charts import make_all_plots
from visualization.gradcam import write_unit_gradcam
from visualization.report import write_report
from visualization.slices import plot_segmentation_slices

log = logging.getLogger(__name__)

SLICE_MODALITIES = ("t1ce", "flair")  # the modalities drawn in the segmentation slice figures


class ChartCallbacks(RunCallbacks):
    """Charts, slice figures, Grad-CAM overlays and report.html of a run (rank 0; a failure only warns)."""

    def __init__(self) -> None:
        self.cases: dict[tuple[int, int, str], dict[str, Any]] = {}

    def on_unit_end(self, state: RunState, key: UnitKey, result: Any, evaluation: Any) -> None:
        if evaluation.first_prediction is None:
            return
        case_id, pred = evaluation.first_prediction
        if key.seed == state.cfg.seeds[0]:
            slot = self.cases.setdefault((key.seed, key.fold, case_id), {
                "image": np.asarray(state.cache.image(case_id)[modality_indices(SLICE_MODALITIES)], np.float32),
                "label": np.asarray(state.cache.label(case_id)), "preds": {}})
            slot["preds"][key.model] = pred
        if state.cfg.gradcam:
            try:
                write_unit_gradcam(key.model, result.best_state, state.cfg, state.cache, case_id,
                                   state.run.gradcam_figure(key), state.ctx.device, state.run.scheme)
            except Exception as exc:  # an explanation figure must never cost the unit
                log.warning("warning: Grad-CAM of %s failed: %s", state.run.unit(key), first_line(exc, with_type=True))

    def on_run_end(self, state: RunState) -> None:
        try:
            make_all_plots(state.run.path)
        except Exception as exc:  # a chart must never cost the results
            log.warning("warning: charts failed: %s", first_line(exc, with_type=True))
        for (seed, fold, case_id), item in self.cases.items():
            try:
                plot_segmentation_slices(item["image"], item["label"], item["preds"],
                                         state.run.slice_figure(seed, fold, case_id),
                                         modality_names=list(SLICE_MODALITIES), scheme=state.run.scheme)
            except Exception as exc:
                log.warning("warning: slice figure of %s failed: %s", case_id, first_line(exc, with_type=True))
        try:
            write_report(state.run.path)
        except Exception as exc:  # the report must never cost the results
            log.warning("warning: report.html failed: %s", first_line(exc, with_type=True))
