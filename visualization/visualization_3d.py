"""Public facade kept for scripts outside the project (SPEC's layout: ``visualization_3d.py (slices, many
models)``). Nothing inside the project imports this module: the slice figures are ``visualization/slices.py``."""

from __future__ import annotations

from visualization.slices import (
    CLASS_COLORS,
    KEY_COLORS,
    class_colors,
    display_channel,
    plot_segmentation_slices,
    tumour_slices,
)

__all__ = ["CLASS_COLORS", "KEY_COLORS", "class_colors", "display_channel", "plot_segmentation_slices",
           "tumour_slices"]
