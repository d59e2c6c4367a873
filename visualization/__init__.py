"""Charts of a run folder's CSVs and slice figures of segmentations (never trains)."""

from visualization.visualization_3d import plot_segmentation_slices, tumour_slices
from visualization.visualization_dataframe import (
    make_all_plots,
    modality_weight_summary,
    plot_learning_curves,
    plot_modality_contributions,
    plot_model_comparison,
    plot_parameter_efficiency,
    plot_per_case_dice,
    plot_stage_wise_pam,
    summarize_runs,
    write_interactive_3d_analysis,
)

__all__ = [
    "make_all_plots",
    "modality_weight_summary",
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
]
