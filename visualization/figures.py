"""Figure plumbing shared by every static chart: an Agg canvas in a seaborn style, atomic saving, model colours.

Figures are built with the object-oriented matplotlib API on an explicit Agg canvas
(:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`), so no display and no global pyplot
state are involved; seaborn provides the styles and palettes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.io import atomic_output

PathLike = str | os.PathLike


def save_figure(fig: Figure, path: PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG when there is none)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


@contextmanager
def drawing(
    path: PathLike,
    nrows: int = 1,
    ncols: int = 1,
    figsize: tuple[float, float] = (8.0, 5.0),
    style: str = "whitegrid",
    **subplots_kw: object,
) -> Iterator[tuple[Figure, np.ndarray]]:
    """Yield ``(figure, 2-D array of axes)`` on an Agg canvas in a seaborn style; save on exit.

    The figure is only written when the body finishes without an exception.
    """
    with sns.axes_style(style), sns.plotting_context("notebook", font_scale=0.85):
        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False, **subplots_kw)
        yield fig, axes
        save_figure(fig, path)


def model_palette(models: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A fixed colour per model (tab10 up to 10 models, evenly spaced hues beyond)."""
    colors = sns.color_palette("tab10" if len(models) <= 10 else "husl", len(models))
    return dict(zip(models, colors))
