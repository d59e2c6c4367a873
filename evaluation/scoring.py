"""Scoring: per-case BraTS metrics of a :class:`~inference.predictor.Predictor` over cached cases,
validation Dice, and :func:`evaluate_checkpoint`, shared by the runner and ``evaluate_experiment.py``.

Cases are sharded over the ranks under torchrun and the results gathered
(:func:`shard_and_gather`), so every rank returns the same result as one process would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from experiment.run_folder import INFERENCE_TIME_KEY
from inference.postprocess import PostprocessRule, case_table, checkpoint_rule, choose_rule, rule_hook
from inference.predictor import InferenceSettings, Predictor
from metrics import (
    brats_region_metrics,
    confusion_matrix,
    dice_from_counts,
    mean_region_dice,
    precision_recall_from_confusion,
    region_dice_counts,
)
from utils import distributed as du
from utils.labels import CLASSIC, LabelScheme

T = TypeVar("T")


def predict_volume(
    model: nn.Module, image: np.ndarray, dim: str, patch: Sequence[int], overlap: float, device: torch.device,
    amp: str = "none", sw_batch_size: int = 2,
) -> np.ndarray:
    """Label map (Z, Y, X) of a whole volume ``image`` holding exactly the model's channels (C, Z, Y, X):
    :meth:`Predictor.labels` of a one-model predictor (kept as a function for scripts using the facade)."""
    settings = InferenceSettings(dim, tuple(patch), overlap, sw_batch_size, amp, device)
    return Predictor.from_model(model, None, settings).labels(image)


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
    scheme: LabelScheme = CLASSIC
    case_seconds: list[float] = field(default_factory=list)  # each case's prediction time (s), in case-id order

    def summary(self) -> dict[str, float]:
        df = pd.DataFrame(self.per_case)
        out = {f"test_{k}": float(df[k].mean()) for k in self.scheme.metric_keys}
        out["test_dice_mean"] = float(mean_region_dice(df, scheme=self.scheme).mean())
        pr = precision_recall_from_confusion(self.confusion)
        out.update({f"test_{k}": v for k, v in pr.items()})
        out["n_test_cases"] = len(df)
        return out

    def costs(self) -> dict[str, float]:
        """The test's cost column (experiment/run_folder.py): the mean prediction time per case, in seconds. Apart
        from :meth:`summary`, whose metrics a re-evaluation reproduces exactly."""
        return {INFERENCE_TIME_KEY: float(np.mean(self.case_seconds)) if self.case_seconds else float("nan")}


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


def evaluate_model(predictor: Predictor, cache: Any, case_ids: Sequence[str], *, nsd_tolerance: float = 1.0,
                   scheme: LabelScheme = CLASSIC, keep_first_prediction: bool = False, progress: bool = True,
                   desc: str = "test") -> EvaluationResult:
    """Per-case metrics of ``predictor`` over ``case_ids``: Dice, HD95 and NSD (at ``nsd_tolerance`` mm) of every
    region of ``scheme`` at the case's spacing, and per-class Dice (``scheme.metric_keys``).

    Every rank returns the same, complete result (per-case rows sorted by case id). The modality weights
    of a gated model are averaged over every forward of a case.
    """
    case_ids, k = list(case_ids), scheme.num_classes

    def one_case(case_id: str) -> tuple[dict[str, Any], np.ndarray, dict[str, float], np.ndarray | None, float]:
        label, image = np.asarray(cache.label(case_id)), cache.image(case_id)
        start = time.perf_counter()  # the prediction alone: a label map on the host, so the device is done
        pred, weights = _predict_with_weights(predictor.model, image, predictor.labels)
        seconds = time.perf_counter() - start
        row = {"case_id": case_id, **brats_region_metrics(pred, label, spacing=cache.spacing(case_id),
                                                          nsd_tolerance=nsd_tolerance, scheme=scheme)}
        keep = keep_first_prediction and case_id == case_ids[0]
        return row, confusion_matrix(pred, label, num_classes=k), weights, pred if keep else None, seconds

    results = shard_and_gather(case_ids, one_case, progress=progress, desc=desc)
    order = sorted(range(len(results)), key=lambda i: results[i][0]["case_id"])
    by_modality: dict[str, list[float]] = {}
    for i in order:
        for modality, w in results[i][2].items():
            by_modality.setdefault(modality, []).append(w)
    first = next(((case_ids[0], r[3]) for r in results if r[3] is not None), None)
    cm = sum((r[1] for r in results), np.zeros((k, k), dtype=np.int64))
    return EvaluationResult([results[i][0] for i in order], cm, by_modality, first, scheme,
                            [results[i][4] for i in order])


def validation_dice(predictor: Predictor, cache: Any, case_ids: Sequence[str], scheme: LabelScheme = CLASSIC
                    ) -> dict[str, float]:
    """Mean over validation cases of the per-case Dice of every region (whole volumes, the run's prediction),
    and ``val_dice_mean``, the mean over the scheme's selection regions (model selection)."""

    def one_case(case_id: str) -> list[float]:
        pred = predictor.labels(cache.image(case_id))
        label = torch.from_numpy(np.asarray(cache.label(case_id)).astype(np.int64))
        counts = region_dice_counts(torch.from_numpy(pred.astype(np.int64))[None], label[None], reduce_batch=False,
                                    scheme=scheme)
        return dice_from_counts(counts)[0].double().tolist()

    per_case = shard_and_gather(case_ids, one_case)
    regions = list(scheme.region_classes)
    means = (np.sum(per_case, axis=0, dtype=np.float64) / len(per_case)).tolist() if per_case else [0.0] * len(regions)
    out = {f"val_dice_{region}": value for region, value in zip(regions, means)}
    return {**out, "val_dice_mean": mean_region_dice(out, prefix="val_dice_", scheme=scheme)}


def evaluate_checkpoint(checkpoint: Mapping[str, Any], cfg: Any, cache: Any, case_ids: Sequence[str],
                        device: torch.device, *, keep_first_prediction: bool = False, postprocess: bool = True,
                        desc: str | None = None) -> EvaluationResult:
    """Score the network of ``checkpoint`` (``model_name`` + ``state_dict``; ``num_classes``, ``region_based``,
    ``postprocess`` where saved) on ``case_ids`` with the run's prediction settings and data set (``cfg``:
    ExperimentConfig); the checkpoint's post-processing rule is applied unless ``postprocess`` is False."""
    scheme = cfg.dataset_def().scheme
    rule = checkpoint_rule([dict(checkpoint)]) if postprocess else None
    predictor = Predictor.from_checkpoints([checkpoint], InferenceSettings.from_config(cfg, device),
                                           postprocess=rule_hook(rule, scheme))
    return evaluate_model(predictor, cache, case_ids, nsd_tolerance=cfg.nsd_tolerance, scheme=scheme,
                          keep_first_prediction=keep_first_prediction,
                          desc=desc or f"test {checkpoint['model_name']}")


def choose_postprocess(checkpoint: Mapping[str, Any], cfg: Any, cache: Any, case_ids: Sequence[str],
                       device: torch.device) -> tuple[PostprocessRule, float, float]:
    """``--postprocess``: the rule chosen on ``case_ids`` (a unit's validation cases) for the network of
    ``checkpoint``: (rule, mean validation Dice with it, without it). Every rank scores its share of the cases
    and returns the same rule (inference/postprocess.py)."""
    scheme = cfg.dataset_def().scheme
    predictor = Predictor.from_checkpoints([checkpoint], InferenceSettings.from_config(cfg, device))

    def one_case(case_id: str) -> list[tuple[float, float, int]]:
        return case_table(predictor.labels(cache.image(case_id)), np.asarray(cache.label(case_id)), scheme)

    return choose_rule(shard_and_gather(list(case_ids), one_case), scheme)
