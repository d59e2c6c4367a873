"""Public facade kept for scripts outside the project (SPEC's layout: ``visualization_dataframe.py (charts)``).

Nothing inside the project imports this module: the charts are ``visualization/charts.py``, what they read from
the tables ``visualization/columns.py``, the figure plumbing ``visualization/figures.py``.
"""

from __future__ import annotations

from visualization.charts import (
    NOT_MEASURED,
    PLOT_JOBS,
    PlotJob,
    make_all_plots,
    plot_learning_curves,
    plot_modality_contributions,
    plot_model_comparison,
    plot_parameter_efficiency,
    plot_per_case_dice,
    plot_stage_wise_pam,
    write_interactive_3d_analysis,
)
from visualization.columns import (
    CI_SUFFIXES,
    LATENCY_COLUMNS,
    MODALITY_ORDER,
    PAM_COLUMNS,
    modality_weight_summary,
    region_columns,
    summarize_runs,
)
from visualization.figures import PathLike, drawing, model_palette, save_figure

__all__ = ["CI_SUFFIXES", "LATENCY_COLUMNS", "MODALITY_ORDER", "NOT_MEASURED", "PAM_COLUMNS", "PLOT_JOBS", "PathLike",
           "PlotJob", "drawing", "make_all_plots", "modality_weight_summary", "model_palette", "plot_learning_curves",
           "plot_modality_contributions", "plot_model_comparison", "plot_parameter_efficiency", "plot_per_case_dice",
           "plot_stage_wise_pam", "region_columns", "save_figure", "summarize_runs", "write_interactive_3d_analysis"]
