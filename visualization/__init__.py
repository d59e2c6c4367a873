"""Charts of a run folder's CSVs, slice figures of segmentations, Grad-CAM overlays, merged runs (never trains).

``ChartCallbacks`` hooks the drawing into a run (``run.loop.RunCallbacks``); this package reads the run
folder (``experiment.run_folder``), never the other way round.
"""

from visualization.callbacks import ChartCallbacks
from visualization.charts import (
    make_all_plots,
    plot_learning_curves,
    plot_modality_contributions,
    plot_model_comparison,
    plot_parameter_efficiency,
    plot_per_case_dice,
    plot_stage_wise_pam,
    write_interactive_3d_analysis,
)
from visualization.columns import modality_weight_summary, summarize_runs
from visualization.gradcam import compute_gradcam, find_target_layer, plot_gradcam, write_unit_gradcam
from visualization.merge import MergeError, merge_runs
from visualization.slices import plot_segmentation_slices, tumour_slices

__all__ = [
    "ChartCallbacks",
    "MergeError",
    "compute_gradcam",
    "find_target_layer",
    "make_all_plots",
    "merge_runs",
    "modality_weight_summary",
    "plot_gradcam",
    "plot_learning_curves",
    "plot_model_comparison",
    "plot_parameter_efficiency",
    "plot_per_case_dice",
    "plot_modality_contributions",
    "plot_segmentation_slices",
    "plot_stage_wise_pam",
    "summarize_runs",
    "tumour_slices",
    "write_interactive_3d_analysis",
    "write_unit_gradcam",
]
