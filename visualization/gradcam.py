"""Grad-CAM overlays of one test case (``--gradcam``): where a trained model looks when it segments ET or WT.

Grad-CAM is MONAI's :class:`monai.visualize.GradCAM` (Selvaraju et al. 2017) with a segmentation class
score in the manner of Seg-Grad-CAM (Vinogradova et al. 2020): the score is the sum, over the voxels
the model predicts as the target region, of the region's logit (ET: the class-3 logit; WT: the tumour
log-odds ``logsumexp(logits[1:4]) - logits[0]``); over all voxels when the model predicts none. The
target is ET when the ground truth of the crop holds ET, else WT.

Target layer, chosen generically: one forward pass with hooks records the order in which the model's
top-level stages finish and which convolution runs last. The head is the top-level stage holding that
last convolution (``head``, ``out``); the target layer is the stage that finished last before it with a
spatial output: the last decoder stage (``decoder1`` of the U-Nets and dual-branch models, ``decoder2``
of UNETR). A model without such a stage falls back to the convolution executed just before the head's.

The model sees a patch of the training patch size centred on the tumour (zero-padded where the volume
is smaller), in float32 with gradients, on a copy of the model (MONAI's hooks stay on the copy). 2D
models get the chosen axial slices as a batch. The figure (rows = a few axial slices through the
tumour) shows the image with the ground-truth outline, and the normalised Grad-CAM map over it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models import model_spec
from utils.labels import CLASSIC, LabelScheme
from visualization.figures import PathLike, drawing
from visualization.slices import display_channel, tumour_slices

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CAM_ALPHA = 0.45


def find_target_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name (as in ``model.named_modules()``) of the last stage before the head; see the module docstring."""
    finished: list[str] = []
    convs: list[str] = []
    hooks = []

    def stage_hook(name: str):
        def hook(_m: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == x.ndim:
                finished.append(name)
        return hook

    def conv_hook(name: str):
        def hook(_m: nn.Module, _inputs: Any, _output: Any) -> None:
            convs.append(name)
        return hook

    for name, child in model.named_children():
        hooks.append(child.register_forward_hook(stage_hook(name)))
    for name, module in model.named_modules():
        if isinstance(module, _CONVS):
            hooks.append(module.register_forward_hook(conv_hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not convs:
        raise ValueError(f"{type(model).__name__} runs no convolution; no Grad-CAM target layer to pick")
    head = convs[-1].split(".")[0]
    stages = [n for n in finished if n != head]
    if stages:
        return stages[-1]
    earlier = [n for n in convs if n != convs[-1]]
    if not earlier:
        raise ValueError(f"{type(model).__name__} has a single convolution; no layer before the head")
    return earlier[-1]


class _RegionScore(nn.Module):
    """(B, 1) Seg-Grad-CAM score of a region, from a segmentation network's logits (B, K, *spatial): the logit of
    a one-class region (ET), else the region's log-odds against background (WT)."""

    def __init__(self, net: nn.Module, region: str, scheme: LabelScheme = CLASSIC) -> None:
        super().__init__()
        self.net, self.region, self.classes = net, region, scheme.region_classes[region]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x).float()
        if len(self.classes) == 1:
            voxel_score = logits[:, self.classes[0]]
        else:
            voxel_score = torch.logsumexp(logits[:, list(self.classes)], dim=1) - logits[:, 0]
        with torch.no_grad():
            classes = torch.tensor(self.classes, device=logits.device)
            mask = torch.isin(logits.argmax(1), classes).float()
            empty = mask.flatten(1).sum(1) == 0
            mask[empty] = 1.0  # nothing predicted: the whole patch
        return (voxel_score * mask).flatten(1).sum(1, keepdim=True)


def _crop_box(label: np.ndarray, patch: Sequence[int]) -> list[tuple[int, int]]:
    """Per axis of ``label``'s last len(patch) axes: (start, stop) of a window of the patch size centred
    on the tumour (the centre of its bounding box), kept inside the volume where the volume allows."""
    axes = range(label.ndim - len(patch), label.ndim)
    fg = np.argwhere(label > 0)
    box = []
    for a, size in zip(axes, patch):
        n = label.shape[a]
        centre = (fg[:, a].min() + fg[:, a].max()) // 2 if fg.size else n // 2
        start = int(min(max(centre - size // 2, 0), max(n - size, 0)))
        box.append((start, start + int(size)))
    return box


def _take(array: np.ndarray, box: Sequence[tuple[int, int]]) -> np.ndarray:
    """``array[..., box]`` with zero padding where the window leaves the array (last len(box) axes)."""
    lead = array.ndim - len(box)
    out = np.zeros(array.shape[:lead] + tuple(b - a for a, b in box), dtype=array.dtype)
    src = tuple(slice(a, min(b, array.shape[lead + i])) for i, (a, b) in enumerate(box))
    dst = tuple(slice(0, s.stop - s.start) for s in src)
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def _normalise(cam: np.ndarray) -> np.ndarray:
    top = float(cam.max()) if cam.size else 0.0
    return cam / top if top > 0 else np.zeros_like(cam)


def _tumour_crop(image: np.ndarray, label: np.ndarray, dim: str, patch: tuple[int, ...]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The image and label on the window of the patch size centred on the tumour (2D: every slice, the window in
    Y and X), zero-padded where the volume is smaller."""
    if image.ndim != 4 or label.shape != image.shape[1:]:
        raise ValueError(f"image must be (C, Z, Y, X) and label (Z, Y, X) of the same size, got {image.shape} "
                         f"and {label.shape}")
    box = _crop_box(label, patch if dim == "3d" else patch[-2:])
    if dim == "2d":
        box = [(0, label.shape[0]), *box]
    return _take(image, box), _take(label, box)


def _target_region(crop_label: np.ndarray, region: str | None, scheme: LabelScheme) -> str:
    """``region`` checked against the scheme; by default ET when the crop's ground truth holds ET, else WT."""
    regions = scheme.region_classes
    if region is None:
        region = "et" if np.isin(crop_label, regions["et"]).any() else "wt"
    if region not in regions:
        raise ValueError(f"region must be one of {', '.join(regions)}, got {region!r}")
    return region


def _cam_and_prediction(net: nn.Module, x: torch.Tensor, layer: str, region: str, scheme: LabelScheme
                        ) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's Grad-CAM of the region score at ``net.{layer}`` (B, *spatial) and the network's classes for ``x``.

    Under deterministic algorithms, only warn for the backward kernels that have no deterministic version
    (trilinear upsampling on CUDA); the caller's setting is restored."""
    from monai.visualize import GradCAM  # MONAI's implementation

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        with torch.enable_grad():
            cam_maker = GradCAM(nn_module=_RegionScore(net, region, scheme), target_layers=f"net.{layer}",
                                postprocessing=lambda m: m)
            cam = cam_maker(x.requires_grad_(True), class_idx=0)[:, 0].detach().float().cpu().numpy()
        with torch.no_grad():
            pred = net(x.detach()).argmax(1).cpu().numpy().astype(np.uint8)
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)
    return cam, pred


def compute_gradcam(model: nn.Module, image: np.ndarray, label: np.ndarray, *, dim: str, patch: Sequence[int],
                    device: torch.device | str = "cpu", slices: Sequence[int] | None = None,
                    region: str | None = None, scheme: LabelScheme = CLASSIC) -> dict[str, Any]:
    """Grad-CAM of ``model`` on one case, on the patch centred on the tumour.

    Args:
        model: a suite model (``(B, C, *spatial) -> (B, K, *spatial)``); not modified (a copy gets the hooks).
        image: ``(C, Z, Y, X)`` model input channels; label: ``(Z, Y, X)`` classes of ``scheme``.
        dim: ``"3d"`` (one forward on a ``patch`` crop) or ``"2d"`` (the slices as a batch, ``patch`` = (Y, X)).
        slices: axial indices of the crop to compute (2D) and show; default :func:`tumour_slices`.
        region: ``"et"`` or ``"wt"``; default ET when the crop's ground truth holds ET, else WT.

    Returns:
        dict with ``image`` and ``label`` (the crop), ``cam`` (Z, Y, X) in [0, 1] (2D: only the shown
        slices are filled), ``pred`` (the model's classes), ``slices``, ``region``, ``layer``.
    """
    image, label = np.asarray(image, dtype=np.float32), np.asarray(label)
    crop_image, crop_label = _tumour_crop(image, label, dim, tuple(int(p) for p in patch))
    rows = list(slices) if slices is not None else tumour_slices(crop_label)
    region = _target_region(crop_label, region, scheme)
    device = torch.device(device)
    net = copy.deepcopy(model).to(device).float().eval()
    x = torch.from_numpy(crop_image).to(device)
    x = x[None] if dim == "3d" else x.permute(1, 0, 2, 3)[rows]  # 2D: (slices, C, Y, X)
    layer = find_target_layer(net, x)
    cam, pred = _cam_and_prediction(net, x, layer, region, scheme)
    if dim == "3d":
        cam_volume, pred_volume = _normalise(cam[0]), pred[0]
    else:
        cam_volume = np.zeros(crop_label.shape, np.float32)
        pred_volume = np.zeros(crop_label.shape, np.uint8)
        cam_volume[rows], pred_volume[rows] = _normalise(cam), pred
    return {"image": crop_image, "label": crop_label, "cam": cam_volume, "pred": pred_volume, "slices": rows,
            "region": region, "layer": layer, "classes": scheme.region_classes[region]}


def plot_gradcam(result: dict[str, Any], path: PathLike, channel: int = 0, channel_name: str = "image",
                 title: str | None = None) -> Path:
    """Rows = the slices of ``result`` (:func:`compute_gradcam`); columns: the image with the ground-truth
    outline of the target region, and the Grad-CAM map over it with the predicted region's outline."""
    image, label, cam, pred = (result[k] for k in ("image", "label", "cam", "pred"))
    classes = result["classes"]
    volume = image[channel]
    brain = volume[volume != 0]
    vmin, vmax = np.percentile(brain if brain.size else volume, [1.0, 99.0])
    vmax = vmax if vmax > vmin else vmin + 1.0
    rows = result["slices"]
    name = result["region"].upper()
    with drawing(path, len(rows), 2, figsize=(6.0, 2.9 * len(rows) + 0.8), style="white") as (fig, axes):
        for r, z in enumerate(rows):
            for c in range(2):
                ax = axes[r, c]
                ax.imshow(volume[z], cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
                if c == 1:
                    ax.imshow(cam[z], cmap="jet", vmin=0.0, vmax=1.0, alpha=CAM_ALPHA, origin="lower",
                              interpolation="bilinear")
                outline = np.isin(pred[z] if c == 1 else label[z], classes)
                if outline.any() and not outline.all():
                    ax.contour(outline.astype(float), levels=[0.5], colors="white" if c == 1 else "yellow",
                               linewidths=0.8, origin="lower")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{channel_name}, true {name}" if c == 0 else f"Grad-CAM ({name}), predicted {name}",
                                 fontsize="medium")
            axes[r, 0].set_ylabel(f"z = {z}")
        fig.suptitle(f"{title + ': ' if title else ''}Grad-CAM of the {name} score at '{result['layer']}'",
                     fontsize="medium")
    return Path(path)


def write_unit_gradcam(model_name: str, state_dict: dict[str, torch.Tensor], cfg: Any, cache: Any, case_id: str,
                       path: PathLike, device: torch.device | str = "cpu", scheme: LabelScheme = CLASSIC) -> Path:
    """``gradcam_{unit}.png`` of a trained unit: its network, built by the unit's predictor for the run's dim
    and patch (``cfg``) and the data set's classes (``scheme``), and :func:`compute_gradcam` of the case
    ``case_id`` of the cache."""
    from brats_data import modality_indices
    from inference.predictor import InferenceSettings, Predictor

    settings = InferenceSettings(cfg.dim, tuple(cfg.spatial_patch), device=torch.device(device))
    checkpoint = {"model_name": model_name, "state_dict": state_dict, "num_classes": scheme.num_classes}
    model = Predictor.from_checkpoints([checkpoint], settings).model
    modalities = list(model_spec(model_name).modalities)
    image = np.asarray(cache.image(case_id)[modality_indices(modalities)], dtype=np.float32)
    result = compute_gradcam(model, image, np.asarray(cache.label(case_id)), dim=cfg.dim,
                             patch=cfg.spatial_patch, device=device, scheme=scheme)
    # ET shows on T1ce, the whole tumour (edema) on FLAIR
    channel = display_channel(modalities, ("t1ce", "flair") if result["region"] == "et" else ("flair", "t1ce"))
    return plot_gradcam(result, path, channel, modalities[channel].upper(), title=f"{model_name}, {case_id}")
