"""Slice-by-slice figures of one case: image, ground truth and the segmentations of many models.

Arrays follow the suite's axis order (Z, Y, X); an axial slice is ``volume[z]`` and is drawn with
``origin="lower"`` (Y upwards), the usual orientation of BraTS axial views. Classes are the model
classes of the data set's scheme (BraTS 2018-2023: 0 background, 1 NCR/NET, 2 ED, 3 ET), each kind of tissue
with one fixed colour in every figure (:data:`KEY_COLORS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch

from utils.labels import CLASSIC, LabelScheme
from visualization.figures import PathLike, drawing

# One colour per kind of tissue, whatever its class number in a data set (PED's ET is class 1, CLASSIC's 3).
KEY_COLORS: dict[str, str] = {"ncr": "#e41a1c", "netc": "#e41a1c", "ed": "#4daf4a", "snfh": "#4daf4a",
                              "et": "#ffd92f", "rc": "#377eb8", "cc": "#984ea3"}
_SPARE_COLORS = ("#ff7f00", "#a65628", "#f781bf", "#999999")
CLASS_COLORS: dict[int, str] = {k: KEY_COLORS[c.key] for k, c in enumerate(CLASSIC.classes, start=1)}


def class_colors(scheme: LabelScheme = CLASSIC) -> dict[int, str]:
    """Model class -> colour: by the class's key (edema is green in every data set), spare colours otherwise."""
    spare = iter(_SPARE_COLORS * 4)
    return {k: KEY_COLORS.get(c.key) or next(spare) for k, c in enumerate(scheme.classes, start=1)}


def _label_colormap(scheme: LabelScheme) -> tuple[ListedColormap, BoundaryNorm]:
    colors = class_colors(scheme)
    n = scheme.num_classes
    return (ListedColormap([(0.0, 0.0, 0.0, 0.0), *(colors[k] for k in range(1, n))]),
            BoundaryNorm(np.arange(n + 1) - 0.5, n))
OVERLAY_ALPHA = 0.55


def tumour_slices(label: np.ndarray, quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> list[int]:
    """Axial slices through the tumour: the given quantiles of the z indices holding foreground.

    Returns sorted, distinct indices of slices that contain foreground; the middle slice when
    the label has no foreground at all.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be a (Z, Y, X) volume, got shape {label.shape}")
    if any(not 0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {tuple(quantiles)}")
    fg_z = np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1))
    if fg_z.size == 0:
        return [label.shape[0] // 2]
    picks = np.quantile(fg_z, quantiles, method="nearest")
    return sorted({int(z) for z in picks})


def _check_classes(volume: np.ndarray, what: str, num_classes: int) -> np.ndarray:
    """``volume`` as int array after checking it holds integer classes 0..3."""
    if volume.dtype == bool or not np.issubdtype(volume.dtype, np.number):
        raise ValueError(f"{what} must hold integer classes 0..{num_classes - 1}, got dtype {volume.dtype}")
    if not np.issubdtype(volume.dtype, np.integer) and not np.array_equal(volume, np.round(volume)):
        raise ValueError(f"{what} must hold integer classes 0..{num_classes - 1}, got non-integer values")
    if volume.size and (volume.min() < 0 or volume.max() >= num_classes):
        raise ValueError(
            f"{what} holds values {int(volume.min())}..{int(volume.max())}; expected model classes "
            f"0..{num_classes - 1} (map BraTS label 4 to 3 first)"
        )
    return volume.astype(np.int64, copy=False)


def display_channel(modalities: Sequence[str], prefer: Sequence[str] = ("flair", "t1ce")) -> int:
    """Index of the channel to draw: the first of ``prefer`` among ``modalities`` (case-insensitive), else 0.
    The one choice of a displayed modality (slice figures: FLAIR first; Grad-CAM of ET: T1ce first)."""
    names = [str(m).lower() for m in modalities]
    return next((names.index(p) for p in prefer if p in names), 0)


def _checked_segmentations(image: np.ndarray, label: np.ndarray, predictions: Mapping[str, np.ndarray],
                           scheme: LabelScheme) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The label and every model's prediction as int arrays, after checking their shapes against the image
    ``(C, Z, Y, X)`` and their values against the scheme's classes."""
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {image.shape}")
    if label.shape != image.shape[1:]:
        raise ValueError(f"label has shape {label.shape}; expected {image.shape[1:]} (Z, Y, X) of the image")
    label = _check_classes(label, "label", scheme.num_classes)
    preds: dict[str, np.ndarray] = {}
    for name, pred in predictions.items():
        pred = np.asarray(pred)
        if pred.shape != label.shape:
            raise ValueError(
                f"prediction of model '{name}' has shape {pred.shape}; expected {label.shape} (Z, Y, X) like the label"
            )
        preds[str(name)] = _check_classes(pred, f"prediction of model '{name}'", scheme.num_classes)
    return label, preds


def _slice_rows(label: np.ndarray, slices: Sequence[int] | None) -> list[int]:
    """The axial indices to draw: ``slices`` (checked against the volume), else :func:`tumour_slices`."""
    n_z = label.shape[0]
    rows = tumour_slices(label) if slices is None else [int(z) for z in slices]
    if not rows:
        raise ValueError("slices is empty; pass at least one axial index or None for the default")
    bad = [z for z in rows if not 0 <= z < n_z]
    if bad:
        raise ValueError(f"slice indices {bad} are outside [0, {n_z}) of the (Z, Y, X) volume")
    return rows


def _background_channel(image: np.ndarray, modality_names: Sequence[str] | None
                        ) -> tuple[np.ndarray, str, float, float]:
    """The channel drawn under the segmentations (:func:`display_channel`, channel 0 without names), its column
    title, and its grey range: the 1st-99th percentiles of the brain (non-zero) voxels."""
    if modality_names is None:
        channel, channel_title = 0, "image (channel 0)"
    else:
        if len(modality_names) != image.shape[0]:
            raise ValueError(f"modality_names has {len(modality_names)} names {list(modality_names)} but the image "
                             f"has {image.shape[0]} channels")
        channel = display_channel(modality_names)
        channel_title = str(modality_names[channel]).upper()
    volume = image[channel].astype(np.float32)
    brain = volume[volume != 0]
    vmin, vmax = np.nanpercentile(brain if brain.size else volume, [1.0, 99.0])
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        vmin, vmax = 0.0, 1.0
    if vmax <= vmin:
        vmax = vmin + 1.0
    return volume, channel_title, vmin, vmax


def _draw_slice(ax: Axes, background: np.ndarray, vmin: float, vmax: float, seg: np.ndarray | None,
                colormap: tuple[ListedColormap, BoundaryNorm]) -> None:
    """One panel: the grey background slice, with ``seg``'s classes over it (background class transparent)."""
    ax.imshow(background, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
    if seg is not None:
        cmap, norm = colormap
        ax.imshow(
            np.ma.masked_equal(seg, 0),
            cmap=cmap,
            norm=norm,
            alpha=OVERLAY_ALPHA,
            origin="lower",
            interpolation="nearest",
        )
    ax.set_xticks([])
    ax.set_yticks([])


def plot_segmentation_slices(
    image: np.ndarray,
    label: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    path: PathLike,
    slices: Sequence[int] | None = None,
    modality_names: Sequence[str] | None = None,
    title: str | None = None,
    scheme: LabelScheme = CLASSIC,
) -> Path:
    """Grid of axial slices: rows = slices, columns = image, ground truth, one column per model.

    Args:
        image: ``(C, Z, Y, X)`` intensities (e.g. the normalised modalities of a case).
        label: ``(Z, Y, X)`` ground truth, model classes 0..3.
        predictions: model name -> ``(Z, Y, X)`` predicted classes 0..3.
        path: output image file (PNG unless the suffix says otherwise).
        slices: axial indices to show; default :func:`tumour_slices` of the label.
        modality_names: names of the image channels; the FLAIR channel is shown when named,
            else channel 0.
        title: optional figure title (e.g. the case id).
        scheme: the data set's classes (their number, names and colours).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    label, preds = _checked_segmentations(np.asarray(image), np.asarray(label), predictions, scheme)
    rows = _slice_rows(label, slices)
    volume, channel_title, vmin, vmax = _background_channel(np.asarray(image), modality_names)
    overlays: dict[str, np.ndarray] = {"Ground truth": label, **preds}
    columns = [(channel_title, None), *overlays.items()]
    colormap = _label_colormap(scheme)
    figsize = (2.6 * len(columns), 2.6 * len(rows) + 0.9)
    with drawing(path, len(rows), len(columns), figsize=figsize, style="white") as (fig, axes):
        for r, z in enumerate(rows):
            axes[r, 0].set_ylabel(f"z = {z}")
            for c, (name, seg) in enumerate(columns):
                _draw_slice(axes[r, c], volume[z], vmin, vmax, None if seg is None else seg[z], colormap)
                if r == 0:
                    axes[r, c].set_title(name, fontsize="medium")
        colors = class_colors(scheme)
        handles = [Patch(color=colors[k], label=name) for k, name in scheme.class_names.items()]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
        if title:
            fig.suptitle(title)
    return Path(path)
