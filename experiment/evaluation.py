"""Inference and scoring: sliding-window prediction of whole volumes, per-case BraTS metrics,
validation Dice, and :func:`evaluate_checkpoint`, shared by the runner and ``evaluate_experiment.py``.

Cases are sharded over the ranks under torchrun and the results gathered
(:func:`shard_and_gather`), so every rank returns the same result as one process would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

import data_loader as dl
from metrics import (
    REGION_METRIC_KEYS,
    brats_region_metrics,
    confusion_matrix,
    dice_from_counts,
    precision_recall_from_confusion,
    region_dice_counts,
)
from utils import distributed as du
from utils.checkpoint import unwrap_model
from utils.experiment_utils import autocast_context, get_model, model_spec
from utils.labels import NUM_CLASSES

T = TypeVar("T")
SLICES_PER_FORWARD = 32  # 2D: axial slices handed to the sliding window at once


# ----------------------------------------------------------------------------- sliding window
def cosine_weight_map(roi_size: Sequence[int], floor: float = 1e-3) -> torch.Tensor:
    """Separable raised-cosine (sine) window over the ROI: 1 in the centre, small but > 0 at the borders."""
    weights = None
    for n in roi_size:
        w = torch.sin(math.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n).clamp_min(floor)
        weights = w if weights is None else weights[..., None] * w
    return weights


def sliding_window_predict(
    model: nn.Module, image: torch.Tensor, roi_size: Sequence[int], overlap: float = 0.1, sw_batch_size: int = 2,
    amp: str = "none", weight_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits for a whole image ``(B, C, *spatial)`` by MONAI sliding-window inference with cosine blending.

    The image is zero-padded up to ``roi_size`` where smaller, so the cosine map always applies, and the
    result is cropped back to the input size.
    """
    roi = tuple(int(r) for r in roi_size)
    spatial = image.shape[2:]
    pad = [max(r - s, 0) for r, s in zip(roi, spatial)]
    if any(pad):
        flat = []
        for p in reversed(pad):
            flat += [p // 2, p - p // 2]
        image = torch.nn.functional.pad(image, flat)
    if weight_map is None:
        weight_map = cosine_weight_map(roi)
    with torch.no_grad(), autocast_context(image.device, amp)():
        logits = sliding_window_inference(
            image, roi, sw_batch_size, model, overlap=overlap, roi_weight_map=weight_map.to(image.device)
        )
    logits = torch.as_tensor(logits).float()
    if any(pad):
        index = [slice(None), slice(None)] + [slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial)]
        logits = logits[tuple(index)]
    return logits


def volume_logits(model: nn.Module, x: torch.Tensor, dim: str, patch: Sequence[int], overlap: float,
                  sw_batch_size: int, amp: str, weight_map: torch.Tensor) -> torch.Tensor:
    """Logits (K, Z, Y, X) of a volume ``x`` (C, Z, Y, X) already on the device: 3D sliding window, or 2D
    windows over batches of axial slices (at least :data:`SLICES_PER_FORWARD` slices at once)."""
    if dim == "3d":
        return sliding_window_predict(model, x[None], patch, overlap, sw_batch_size, amp, weight_map)[0]
    slices, chunk = x.permute(1, 0, 2, 3), max(SLICES_PER_FORWARD, sw_batch_size)  # (Z, C, Y, X)
    out = [sliding_window_predict(model, slices[s:s + chunk], patch, overlap, sw_batch_size, amp, weight_map)
           for s in range(0, slices.shape[0], chunk)]
    return torch.cat(out).permute(1, 0, 2, 3)


def predict_volume(
    model: nn.Module, image: np.ndarray, dim: str, patch: Sequence[int], overlap: float, device: torch.device,
    amp: str = "none", sw_batch_size: int = 2, weight_map: torch.Tensor | None = None,
) -> np.ndarray:
    """Label map (Z, Y, X) for a whole volume ``image`` (C, Z, Y, X): the argmax of :func:`volume_logits`."""
    model.eval()
    weight_map = cosine_weight_map(patch).to(device) if weight_map is None else weight_map
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    logits = volume_logits(model, x, dim, patch, overlap, sw_batch_size, amp, weight_map)
    return logits.argmax(0).to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------- sharding
def shard_and_gather(items: Sequence[Any], fn: Callable[[Any], T], *, progress: bool = False,
                     desc: str = "") -> list[T]:
    """``[fn(item) for item in items]``, with the items sharded over the ranks (rank r takes every
    world_size-th item from r) and the results gathered: every rank returns the full list, in order."""
    rank, world = du.get_rank(), du.get_world_size()
    mine = [fn(item) for item in tqdm(list(items)[rank::world], desc=desc, leave=False,
                                      disable=not (progress and rank == 0))]
    if world == 1:
        return mine
    gathered = du.all_gather_objects(mine)
    out: list[T] = [None] * len(items)  # type: ignore[list-item]
    for r, results in enumerate(gathered):
        out[r::world] = results
    return out


# ----------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationResult:
    per_case: list[dict[str, Any]]
    confusion: np.ndarray
    modality_weights: dict[str, list[float]] = field(default_factory=dict)  # modality -> per-case means
    first_prediction: tuple[str, np.ndarray] | None = None  # (case id, label map) of the first case, rank 0

    def summary(self) -> dict[str, float]:
        df = pd.DataFrame(self.per_case)
        out = {f"test_{k}": float(df[k].mean()) for k in REGION_METRIC_KEYS}
        out["test_dice_mean"] = float(df[["dice_wt", "dice_tc", "dice_et"]].mean(axis=1).mean())
        pr = precision_recall_from_confusion(self.confusion)
        out.update({f"test_{k}": v for k, v in pr.items()})
        out["n_test_cases"] = len(df)
        return out


def _predict_with_weights(model: nn.Module, image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]
                          ) -> tuple[np.ndarray, dict[str, float]]:
    """The prediction, and the modality weights of a gated multi-branch model averaged over every
    forward (every window or slice batch) of the case; ``{}`` for models without a gate."""
    batches: list[torch.Tensor] = []

    def keep(m: nn.Module, _inputs: Any, _output: Any) -> None:
        if m.modality_weights is not None:
            batches.append(m.modality_weights.float().mean(0).cpu())

    hook = model.register_forward_hook(keep) if hasattr(model, "modality_weights") else None
    try:
        pred = predict(image)
    finally:
        if hook is not None:
            hook.remove()
    if not batches:
        return pred, {}
    return pred, dict(zip(model.modality_names, torch.stack(batches).mean(0).tolist()))


def evaluate_model(
    model: nn.Module, cache: Any, case_ids: Sequence[str], modalities: Sequence[str], *, dim: str,
    patch: Sequence[int], overlap: float, device: torch.device, amp: str = "none", sw_batch_size: int = 2,
    keep_first_prediction: bool = False, progress: bool = True, desc: str = "test", compile: bool = False,
    nsd_tolerance: float = 1.0,
) -> EvaluationResult:
    """Per-case BraTS metrics of ``model`` over ``case_ids``: region Dice, HD95 and NSD (at
    ``nsd_tolerance`` mm) at the case's spacing, and per-class Dice (``metrics.REGION_METRIC_KEYS``).

    Every rank returns the same, complete result (per-case rows sorted by case id). ``compile``
    runs the windows through ``torch.compile`` (not for gated models, whose modality weights are
    read by a forward hook).
    """
    idx = dl.modality_indices(modalities)
    weight_map = cosine_weight_map(patch).to(device)  # once, not one host-to-device copy per case
    bare = unwrap_model(model)
    net = torch.compile(bare) if compile and not hasattr(bare, "modality_weights") else bare
    case_ids = list(case_ids)

    def one_case(case_id: str) -> tuple[dict[str, Any], np.ndarray, dict[str, float], np.ndarray | None]:
        label = np.asarray(cache.label(case_id))
        pred, weights = _predict_with_weights(bare, cache.image(case_id)[idx], lambda image: predict_volume(
            net, image, dim, patch, overlap, device, amp, sw_batch_size, weight_map))
        row = {"case_id": case_id, **brats_region_metrics(pred, label, spacing=cache.spacing(case_id),
                                                          nsd_tolerance=nsd_tolerance)}
        keep = keep_first_prediction and case_id == case_ids[0]
        return row, confusion_matrix(pred, label, num_classes=NUM_CLASSES), weights, pred if keep else None

    results = shard_and_gather(case_ids, one_case, progress=progress, desc=desc)
    order = sorted(range(len(results)), key=lambda i: results[i][0]["case_id"])
    by_modality: dict[str, list[float]] = {}
    for i in order:
        for modality, w in results[i][2].items():
            by_modality.setdefault(modality, []).append(w)
    first = next(((case_ids[0], r[3]) for r in results if r[3] is not None), None)
    cm = sum((r[1] for r in results), np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64))
    return EvaluationResult([results[i][0] for i in order], cm, by_modality, first)


def validation_dice(model: nn.Module, cache: Any, case_ids: Sequence[str], modalities: Sequence[str], *,
                    dim: str, patch: Sequence[int], overlap: float, device: torch.device, amp: str = "none",
                    sw_batch_size: int = 2) -> dict[str, float]:
    """Mean over validation cases of the per-case region Dice (whole volumes, sliding window).

    ``model`` runs as given (a compiled module stays compiled), never through a DDP wrapper.
    """
    idx = dl.modality_indices(modalities)
    weight_map = cosine_weight_map(patch).to(device)  # once, not one host-to-device copy per case
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def one_case(case_id: str) -> list[float]:
        pred = predict_volume(net, cache.image(case_id)[idx], dim, patch, overlap, device, amp, sw_batch_size,
                              weight_map)
        label = torch.from_numpy(np.asarray(cache.label(case_id)).astype(np.int64))
        counts = region_dice_counts(torch.from_numpy(pred.astype(np.int64))[None], label[None], reduce_batch=False)
        return dice_from_counts(counts)[0].double().tolist()

    per_case = shard_and_gather(case_ids, one_case)
    wt, tc, et = (np.sum(per_case, axis=0, dtype=np.float64) / max(len(per_case), 1)).tolist() \
        if per_case else (0.0, 0.0, 0.0)
    return {"val_dice_wt": wt, "val_dice_tc": tc, "val_dice_et": et, "val_dice_mean": (wt + tc + et) / 3}


def evaluate_checkpoint(checkpoint: Mapping[str, Any], cfg: Any, cache: Any, case_ids: Sequence[str],
                        device: torch.device, *, keep_first_prediction: bool = False,
                        desc: str | None = None) -> EvaluationResult:
    """Build ``checkpoint["model_name"]`` for the run's dim and patch, load ``checkpoint["state_dict"]``
    and score it on ``case_ids`` with the run's sliding-window settings (``cfg``: ExperimentConfig)."""
    name = checkpoint["model_name"]
    model = get_model(name, cfg.dim, cfg.spatial_patch)
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device)
    return evaluate_model(model, cache, case_ids, model_spec(name).modalities, dim=cfg.dim,
                          patch=cfg.spatial_patch, overlap=cfg.overlap, device=device,
                          amp=cfg.resolved_amp(device), sw_batch_size=cfg.resolved_sw_batch_size(),
                          keep_first_prediction=keep_first_prediction, desc=desc or f"test {name}",
                          compile=cfg.compile, nsd_tolerance=cfg.nsd_tolerance)
