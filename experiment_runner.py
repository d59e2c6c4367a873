"""The experiment loop: seeds x folds x models -> train, evaluate, measure, write results.

This is the only module that knows about the loop over units (model, seed, fold). Training,
evaluation and measurement are plain functions with explicit arguments:

- :func:`train_model` trains one unit, validating every epoch, and keeps the best weights;
- :func:`evaluate_model` runs sliding-window inference over cases and returns per-case metrics;
- :func:`measure_efficiency` gives parameters, FLOPs, PAM and latency;
- :func:`run_integrated_experiment` ties them together and owns every file of the run folder.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

import data_loader as dl
from losses import make_loss
from metrics import (
    REGION_METRIC_KEYS,
    brats_region_metrics,
    confusion_matrix,
    dice_from_counts,
    precision_recall_from_confusion,
    region_dice_counts,
)
from utils import distributed as du
from utils.checkpoint import BEST_KEYS, load_checkpoint, load_pretrained, save_checkpoint, unwrap_model
from utils.experiment_utils import (
    autocast_context,
    cosine_weight_map,
    count_flops,
    count_parameters,
    get_model,
    list_models,
    measure_latency,
    measure_pam,
    measure_stage_pam,
    model_spec,
    set_seed,
    sliding_window_predict,
)
from utils.io import append_rows, read_csv, read_json, replace_rows, write_csv, write_json

# ----------------------------------------------------------------------------- file and column contract
RESULTS_CSV = "integrated_experiment_results.csv"
EPOCHS_CSV = "all_epochs_results.csv"
PER_CASE_CSV = "per_case_results.csv"
COMPARISON_CSV = "model_comparison.csv"
STAGE_PAM_CSV = "stage_wise_pam_results.csv"
FAILED_CSV = "failed_runs.csv"
SKIPPED_CSV = "skipped_cases.csv"
MODALITY_CSV = "modality_contributions.csv"

UNIT_COLUMNS = ["model", "seed", "fold"]
RESULT_COLUMNS = UNIT_COLUMNS + [
    "test_dice_wt", "test_dice_tc", "test_dice_et", "test_dice_mean",
    "test_hd95_wt", "test_hd95_tc", "test_hd95_et",
    "params", "flops",
    "pam_train_mb", "pam_train_mb_std", "pam_inference_mb", "pam_inference_mb_std",
    "latency_ms", "latency_ms_std", "best_epoch", "best_val_dice",
]
EPOCH_COLUMNS = UNIT_COLUMNS + [
    "epoch", "train_loss", "val_dice_wt", "val_dice_tc", "val_dice_et", "val_dice_mean", "lr", "epoch_time_s",
]
PER_CASE_COLUMNS = UNIT_COLUMNS + ["case_id", *REGION_METRIC_KEYS]
STAGE_PAM_COLUMNS = ["model", "stage", "pam_train_mb", "pam_inference_mb"]
FAILED_COLUMNS = UNIT_COLUMNS + ["epoch", "reason", "time"]
SKIPPED_COLUMNS = ["case_id", "path", "reason"]
MODALITY_COLUMNS = UNIT_COLUMNS + ["modality", "weight_mean", "weight_std"]
EFFICIENCY_KEYS = ["params", "flops", "pam_train_mb", "pam_train_mb_std", "pam_inference_mb",
                   "pam_inference_mb_std", "latency_ms", "latency_ms_std"]

EXIT_OK, EXIT_BAD_DATA, EXIT_UNITS_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130


# ----------------------------------------------------------------------------- configuration
@dataclass
class ExperimentConfig:
    """Everything a run depends on; written to ``config.json`` of the run folder."""

    data_path: str = "./data"
    dataset_version: str = "brats2018"
    epochs: int = 10
    batch_size: int = 1
    seeds: list[int] = field(default_factory=lambda: [24])
    models: list[str] | None = None
    dim: str = "2d"
    use_pretrained: bool = False
    pretrained_dir: str = "pretrained"
    loss: str = "nnunet"
    num_workers: int = 8
    sharing_strategy: str = "file_descriptor"
    use_5fold: bool = False
    max_samples: int | None = None
    synthetic_cases: int = 20
    synthetic_shape: list[int] | None = None  # (X, Y, Z) of the synthetic volumes; None = generator default
    results_dir: str = "baseline_results"
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    overlap: float = 0.1
    device: str = "auto"
    resume: str | None = None
    skip_bad_cases: bool = False
    deterministic: bool = False
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patches_per_case: int | None = None
    amp: str = "auto"
    compile: bool = False
    cache_dir: str | None = None
    measure_efficiency: bool = True
    sw_batch_size: int = 2

    def __post_init__(self) -> None:
        if self.dim not in ("2d", "3d"):
            raise ValueError(f"--dim must be 2d or 3d, got {self.dim!r}")
        if self.dataset_version not in dl.DATASET_VERSIONS:
            raise ValueError(f"--dataset_version must be one of {', '.join(dl.DATASET_VERSIONS)}, "
                             f"got {self.dataset_version!r}")
        if self.loss not in ("nnunet", "standard"):
            raise ValueError(f"loss must be 'nnunet' or 'standard', got {self.loss!r}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"--amp must be auto, bf16, fp16 or none, got {self.amp!r}")
        if self.sharing_strategy not in ("file_descriptor", "file_system"):
            raise ValueError(f"--sharing_strategy must be file_descriptor or file_system, got {self.sharing_strategy!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"--overlap must be in [0, 1), got {self.overlap}")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        self.seeds = [int(s) for s in self.seeds]
        self.patch_size = [int(p) for p in self.patch_size]

    @property
    def spatial_patch(self) -> tuple[int, ...]:
        """The patch for ``dim``: (Z, Y, X) in 3D, (Y, X) in 2D."""
        return tuple(self.patch_size[-2:]) if self.dim == "2d" else tuple(self.patch_size)

    @property
    def model_names(self) -> list[str]:
        names = self.models or [m for m in list_models() if self.dim in model_spec(m).dims]
        return list(dict.fromkeys(names))

    def resolved_patches_per_case(self) -> int:
        return self.patches_per_case or (1 if self.dim == "3d" else 8)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_path) / "preprocessed" / self.dataset_version

    def resolved_amp(self, device: torch.device) -> str:
        if device.type != "cuda":
            return "none"
        return "bf16" if self.amp == "auto" else self.amp

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def unit_name(model: str, seed: int, fold: int, use_5fold: bool) -> str:
    return f"{model}_seed_{seed}_fold_{fold}" if use_5fold else f"{model}_seed_{seed}"


# ----------------------------------------------------------------------------- interruption
class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checks it between steps, so a checkpoint write always completes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nreceived signal {signum}: stopping after the current step; resume with --resume",
              file=sys.stderr, flush=True)


STOP = _StopFlag()


class Interrupted(Exception):
    """Raised inside a unit when a stop was requested; the unit stays resumable."""


class NonFiniteLoss(FloatingPointError):
    pass


# ----------------------------------------------------------------------------- data
class DataError(RuntimeError):
    """Raised on the other ranks when the main rank could not prepare the data (it raised the original)."""


def prepare_data(cfg: ExperimentConfig, ctx: du.DistContext) -> tuple[Any, list[Any]]:
    """Discover, validate and cache the cases: rank 0 builds, the others wait, then open the same cache.

    Returns ``(cache, skipped)``; ``skipped`` lists the bad cases (dicts: case_id, path, reason)
    left out under ``--skip_bad_cases``.
    A bad case without that flag raises ``BadCaseError`` (naming the case and the file) on every rank.
    """
    data_path = Path(cfg.data_path)
    outcome: tuple[str, Any] = ("ok", [])
    if ctx.is_main:
        try:
            if cfg.dataset_version == "synthetic":
                shape = {"shape": tuple(cfg.synthetic_shape)} if cfg.synthetic_shape else {}
                dl.generate_synthetic_dataset(data_path, n_cases=cfg.synthetic_cases, seed=0, **shape)
            cases = dl.discover_cases(data_path, cfg.dataset_version, max_samples=cfg.max_samples)
            cache = dl.PreprocessedCache(cfg.resolved_cache_dir(), cases)
            workers = max(1, min(cfg.num_workers, os.cpu_count() or 1))
            errors = cache.build(num_workers=workers, progress=True, skip_bad_cases=cfg.skip_bad_cases)
            outcome = ("ok", [{"case_id": e.case_id, "path": str(e.path), "reason": e.reason} for e in errors])
        except Exception as exc:
            du.broadcast_object(("error", str(exc)))
            raise
    status, payload = du.broadcast_object(outcome)
    if status == "error":
        raise DataError(payload)
    if not ctx.is_main:  # the cache is complete now: open it, excluding the same bad cases
        cases = dl.discover_cases(data_path, cfg.dataset_version, max_samples=cfg.max_samples)
        cache = dl.PreprocessedCache(cfg.resolved_cache_dir(), cases)
        cache.build(num_workers=1, progress=False, skip_bad_cases=True)
    return cache, payload


def make_all_splits(cfg: ExperimentConfig, case_ids: Sequence[str]) -> dict[str, Any]:
    return {str(s): dl.make_splits(list(case_ids), seed=s, use_5fold=cfg.use_5fold) for s in cfg.seeds}


def build_train_loader(
    cfg: ExperimentConfig, cache: Any, case_ids: Sequence[str], modalities: Sequence[str], seed: int,
    ctx: du.DistContext,
) -> tuple[DataLoader, DistributedSampler, Any]:
    n_samples = cfg.resolved_patches_per_case() * len(case_ids)
    cls = dl.SliceDataset if cfg.dim == "2d" else dl.PatchDataset
    dataset = cls(cache, list(case_ids), list(modalities), cfg.spatial_patch, samples_per_epoch=n_samples,
                  seed=seed)
    # One code path for 1 and N processes: a DistributedSampler over world_size replicas.
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    workers = cfg.num_workers
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, drop_last=False,
    )
    return loader, sampler, dataset


# ----------------------------------------------------------------------------- inference
def predict_volume(
    model: nn.Module, image: np.ndarray, dim: str, patch: Sequence[int], overlap: float, device: torch.device,
    amp: str = "none", sw_batch_size: int = 2, weight_map: torch.Tensor | None = None,
) -> np.ndarray:
    """Label map (Z, Y, X) for a whole volume ``image`` (C, Z, Y, X): 3D sliding window, or 2D slice by slice."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    if dim == "3d":
        logits = sliding_window_predict(model, x[None], patch, overlap, sw_batch_size, amp, weight_map)
        return logits[0].argmax(0).to(torch.uint8).cpu().numpy()
    slices = x.permute(1, 0, 2, 3)  # (Z, C, Y, X): axial slices as a batch
    out = []
    for start in range(0, slices.shape[0], 32):
        logits = sliding_window_predict(model, slices[start:start + 32], patch, overlap, sw_batch_size, amp, weight_map)
        out.append(logits.argmax(1).to(torch.uint8).cpu())
    return torch.cat(out).numpy()


@dataclass
class EvaluationResult:
    per_case: list[dict[str, Any]]
    confusion: np.ndarray
    modality_weights: dict[str, list[float]] = field(default_factory=dict)  # modality -> per-case means
    first_prediction: tuple[str, np.ndarray] | None = None

    def summary(self) -> dict[str, float]:
        df = pd.DataFrame(self.per_case)
        out = {f"test_{k}": float(df[k].mean()) for k in REGION_METRIC_KEYS}
        out["test_dice_mean"] = float(df[["dice_wt", "dice_tc", "dice_et"]].mean(axis=1).mean())
        pr = precision_recall_from_confusion(self.confusion)
        out.update({f"test_{k}": v for k, v in pr.items()})
        out["n_test_cases"] = len(df)
        return out


def evaluate_model(
    model: nn.Module, cache: Any, case_ids: Sequence[str], modalities: Sequence[str], *, dim: str,
    patch: Sequence[int], overlap: float, device: torch.device, amp: str = "none", sw_batch_size: int = 2,
    keep_first_prediction: bool = False, progress: bool = True, desc: str = "test",
) -> EvaluationResult:
    """Per-case BraTS region metrics (Dice, HD95 at the case's spacing) of ``model`` over ``case_ids``.

    Under torchrun each rank takes every world_size-th case and the results are gathered, so every
    rank returns the same, complete result (sorted by case id).
    """
    rank, world = du.get_rank(), du.get_world_size()
    mine = list(case_ids)[rank::world]
    idx = dl.modality_indices(modalities)
    weight_map = cosine_weight_map(patch)
    per_case, weights = [], {}
    cm = np.zeros((4, 4), dtype=np.int64)
    first = None
    bare = unwrap_model(model)
    collect = hasattr(bare, "modality_weights")  # multi-branch models; set (not None) with an attention gate
    for case_id in tqdm(mine, desc=desc, leave=False, disable=not (progress and rank == 0)):
        image = cache.image(case_id)[idx]
        label = np.asarray(cache.label(case_id))
        batches: list[torch.Tensor] = []  # modality weights of every forward (every window/slice batch)

        def keep_weights(m: nn.Module, _inputs: Any, _output: Any, out: list[torch.Tensor] = batches) -> None:
            if m.modality_weights is not None:
                out.append(m.modality_weights.float().mean(0).cpu())

        hook = bare.register_forward_hook(keep_weights) if collect else None
        try:
            pred = predict_volume(bare, image, dim, patch, overlap, device, amp, sw_batch_size, weight_map)
        finally:
            if hook is not None:
                hook.remove()
        row = {"case_id": case_id, **brats_region_metrics(pred, label, spacing=cache.spacing(case_id))}
        per_case.append(row)
        cm += confusion_matrix(pred, label, num_classes=4)
        if collect and batches:
            w = torch.stack(batches).mean(0).tolist()
            weights[case_id] = dict(zip(bare.modality_names, w))
        if keep_first_prediction and first is None:
            first = (case_id, pred)
    gathered = du.all_gather_objects((per_case, cm, weights, first))
    per_case = sorted((r for g in gathered for r in g[0]), key=lambda r: r["case_id"])
    cm = sum(g[1] for g in gathered)
    all_weights: dict[str, dict[str, float]] = {}
    for g in gathered:
        all_weights.update(g[2])
    by_modality: dict[str, list[float]] = {}
    for case_id in sorted(all_weights):
        for mod, w in all_weights[case_id].items():
            by_modality.setdefault(mod, []).append(w)
    firsts = [g[3] for g in gathered if g[3] is not None]
    first = min(firsts, key=lambda t: t[0]) if firsts else None
    return EvaluationResult(per_case, cm, by_modality, first)


def validation_dice(
    model: nn.Module, cache: Any, case_ids: Sequence[str], modalities: Sequence[str], cfg: ExperimentConfig,
    device: torch.device, amp: str,
) -> dict[str, float]:
    """Mean over validation cases of the per-case region Dice (whole volumes, sliding window)."""
    rank, world = du.get_rank(), du.get_world_size()
    idx = dl.modality_indices(modalities)
    weight_map = cosine_weight_map(cfg.spatial_patch)
    sums = torch.zeros(4, dtype=torch.float64)  # wt, tc, et, n_cases
    for case_id in list(case_ids)[rank::world]:
        pred = predict_volume(unwrap_model(model), cache.image(case_id)[idx], cfg.dim, cfg.spatial_patch,
                              cfg.overlap, device, amp, cfg.sw_batch_size, weight_map)
        label = torch.from_numpy(np.asarray(cache.label(case_id)).astype(np.int64))
        dice = dice_from_counts(region_dice_counts(torch.from_numpy(pred.astype(np.int64))[None], label[None],
                                                   reduce_batch=False))[0]
        sums[:3] += dice.double()
        sums[3] += 1
    if du.get_world_size() > 1:
        sums = du.all_reduce_sum(sums.to(device)).cpu()
    n = max(sums[3].item(), 1.0)
    wt, tc, et = (sums[:3] / n).tolist()
    return {"val_dice_wt": wt, "val_dice_tc": tc, "val_dice_et": et, "val_dice_mean": (wt + tc + et) / 3}


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float
    curves: list[dict[str, Any]]
    ranks_in_sync: bool = True


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer's bytes: equal on all ranks when DDP kept them in sync."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(unwrap_model(model).state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap_model(model).state_dict().items()}


def train_model(
    model_name: str, cfg: ExperimentConfig, cache: Any, split: dict[str, list[str]], seed: int, fold: int,
    run_dir: Path, ctx: du.DistContext, *, on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    fail_hook: Callable[[int, float], float] | None = None,
) -> TrainResult:
    """Train one unit; validate each epoch; keep the best weights (by validation mean Dice).

    Every epoch a ``last`` checkpoint (model, optimizer, scheduler, scaler, RNG, curves, best score) is
    written atomically to ``run_dir/last/``; the best weights go to ``{unit}_best.pth``. When a last
    checkpoint exists, training continues from the epoch after it. ``fail_hook(epoch, loss) -> loss``
    lets tests inject failures.
    """
    spec = model_spec(model_name)
    unit = unit_name(model_name, seed, fold, cfg.use_5fold)
    device, amp = ctx.device, cfg.resolved_amp(ctx.device)
    set_seed(seed, cfg.deterministic)  # identical initial weights on every rank
    model = get_model(model_name, cfg.dim, cfg.spatial_patch)
    if cfg.use_pretrained:
        path = Path(cfg.pretrained_dir) / f"{model_name}.pth"
        report = load_pretrained(model, path)
        if ctx.is_main:
            print(f"[{unit}] pretrained weights from {path}: {len(report['loaded'])} tensors loaded, "
                  f"{len(report['skipped'])} skipped (shape), {len(report['missing'])} not in the file")
    model.to(device)
    torch.manual_seed(seed + ctx.rank)  # per-rank offset for everything random after initialisation
    train_model_ = model
    if ctx.distributed:
        train_model_ = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model_ = torch.compile(train_model_)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=cfg.epochs, power=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    loss_fn = make_loss(cfg.loss)
    autocast = autocast_context(device, amp)

    best_path = run_dir / f"{unit}_best.pth"
    last_path = run_dir / "last" / f"{unit}_last.pth"
    start_epoch, curves = 0, []
    best = TrainResult({}, -1, -math.inf, curves)
    if last_path.exists():
        state = load_checkpoint(last_path, map_location="cpu")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, curves = state["epoch"] + 1, list(state["curves"])
        best = TrainResult({}, state["best_epoch"], state["best_val_dice"], curves)
        if best_path.exists():
            best.best_state = load_checkpoint(best_path, BEST_KEYS)["state_dict"]
        if ctx.is_main:
            print(f"[{unit}] resuming at epoch {start_epoch} (best val Dice {best.best_val_dice:.4f} "
                  f"at epoch {best.best_epoch})")

    loader, sampler, dataset = build_train_loader(cfg, cache, split["train"], spec.modalities, seed, ctx)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        train_model_.train()
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        bar = tqdm(loader, desc=f"{unit} epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not ctx.is_main)
        for image, label in bar:
            image = image.to(device, non_blocking=True)
            label = label.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = train_model_(image)
            loss = loss_fn(logits.float(), label)
            if fail_hook is not None:
                loss = fail_hook(epoch, loss)
            # Loss and stop request are summed over ranks every step, so all ranks see a non-finite
            # loss or a signal received by any of them at the same step, and stop together.
            stats = torch.stack([loss.detach().double(), torch.tensor(float(STOP.requested), dtype=torch.float64,
                                                                      device=device)])
            stats = du.all_reduce_sum(stats)
            if stats[1].item() > 0:
                raise Interrupted(f"stopped during epoch {epoch}")
            step_loss = stats[0] / ctx.world_size
            if not torch.isfinite(step_loss):
                raise NonFiniteLoss(f"non-finite training loss ({step_loss.item()}) at epoch {epoch}")
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += step_loss
            count += 1
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        val = validation_dice(model, cache, split["val"], spec.modalities, cfg, device, amp)
        row = {"epoch": epoch, "train_loss": float(total.item() / max(count, 1)), **val, "lr": lr,
               "epoch_time_s": time.perf_counter() - t0}
        curves.append(row)
        improved = val["val_dice_mean"] > best.best_val_dice
        if improved:
            best.best_state, best.best_epoch, best.best_val_dice = _state_dict_cpu(model), epoch, val["val_dice_mean"]
        if ctx.is_main:
            if improved:
                save_checkpoint(best_path, {
                    "model_name": model_name, "state_dict": best.best_state, "config": asdict(cfg),
                    "epoch": epoch, "best_val_dice": best.best_val_dice, "seed": seed, "fold": fold,
                    "dim": cfg.dim, "patch_size": list(cfg.spatial_patch), "modalities": list(spec.modalities),
                })
            save_checkpoint(last_path, {
                "model_name": model_name, "state_dict": _state_dict_cpu(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                "epoch": epoch, "curves": curves, "best_epoch": best.best_epoch,
                "best_val_dice": best.best_val_dice, "config": asdict(cfg),
            })
            if on_epoch_end:
                on_epoch_end(row)
            print(f"[{unit}] epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
                  f"val Dice WT/TC/ET {val['val_dice_wt']:.3f}/{val['val_dice_tc']:.3f}/{val['val_dice_et']:.3f} "
                  f"({row['epoch_time_s']:.1f}s)", flush=True)
        if du.any_rank_true(STOP.requested, device):
            raise Interrupted(f"stopped after epoch {epoch}")
    best.curves = curves
    best.ranks_in_sync = len(set(du.all_gather_objects(weights_fingerprint(model)))) == 1
    if not best.ranks_in_sync and ctx.is_main:
        print(f"[{unit}] warning: model weights differ between ranks after training", file=sys.stderr)
    return best


# ----------------------------------------------------------------------------- efficiency
def measure_efficiency(model_name: str, cfg: ExperimentConfig, device: torch.device) -> tuple[dict, list[dict], str]:
    """(row values, stage-wise PAM rows, notes). Failures (e.g. out of memory) leave NaN and a note."""
    spec = model_spec(model_name)
    shape = (1, len(spec.modalities), *cfg.spatial_patch)
    amp = cfg.resolved_amp(device)
    values: dict[str, float] = {k: math.nan for k in EFFICIENCY_KEYS}
    notes, stages = [], []
    model = get_model(model_name, cfg.dim, cfg.spatial_patch)
    values["params"] = count_parameters(model)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("flops", lambda: {"flops": count_flops(model, shape)}),
        ("pam", lambda: measure_pam(model, shape, device, amp)),
        ("latency", lambda: measure_latency(model, shape, device, amp)),
    ]
    for name, step in steps:
        try:
            values.update(step())
        except Exception as exc:  # OOM or an op the counter cannot follow: record, go on
            notes.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    try:
        stages = [{"model": model_name, **r} for r in measure_stage_pam(model, shape, device, amp)]
    except Exception as exc:
        notes.append(f"stage_pam: {type(exc).__name__}")
    if device.type != "cuda":
        notes.append("PAM not measured (no CUDA device)")
    if device.type == "cuda":
        model.cpu()
        torch.cuda.empty_cache()
    return values, stages, "; ".join(notes)


# ----------------------------------------------------------------------------- run folder
def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import monai

    return {"python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "cuda": str(torch.version.cuda)}


def create_run_dir(results_dir: str | Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    base = Path(results_dir) / f"integrated_experiment_results_{stamp}"
    path, i = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            path, i = Path(f"{base}_{i}"), i + 1


def write_comparison(run_dir: Path) -> pd.DataFrame:
    """``model_comparison.csv``: per model, mean and std over seeds/folds of every numeric column, ``n_runs``."""
    from visualization.visualization_dataframe import summarize_runs

    df = read_csv(run_dir / RESULTS_CSV, RESULT_COLUMNS)
    if df.empty:
        return df
    out = summarize_runs(df).rename_axis("model").reset_index()
    write_csv(run_dir / COMPARISON_CSV, out)
    return out


def _draw(run_dir: Path, predictions: dict[str, Any]) -> None:
    """Charts from the run folder's CSVs, and slice figures of the saved test predictions."""
    try:
        from visualization.visualization_dataframe import make_all_plots

        make_all_plots(run_dir)
    except Exception as exc:  # a chart must never cost the results
        print(f"warning: charts failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        from visualization.visualization_3d import plot_segmentation_slices

        for (seed, fold, case_id), item in predictions.items():
            name = f"segmentation_slices_seed_{seed}" + (f"_fold_{fold}" if fold else "") + f"_{case_id}.png"
            plot_segmentation_slices(item["image"], item["label"], item["preds"], run_dir / name,
                                     modality_names=item["modalities"])
    except Exception as exc:
        print(f"warning: slice figures failed: {type(exc).__name__}: {exc}", file=sys.stderr)


# ----------------------------------------------------------------------------- the whole experiment
@dataclass
class RunSummary:
    run_dir: Path
    exit_code: int
    failed: list[dict[str, Any]]


def _load_resume_config(cfg: ExperimentConfig) -> ExperimentConfig:
    run_dir = Path(cfg.resume)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.json there; is it a run folder?")
    saved = read_json(run_dir / "config.json")["config"]
    # Keep what describes the experiment; take where it runs (device, workers, paths) from this command.
    runtime = {k: getattr(cfg, k) for k in ("device", "num_workers", "sharing_strategy", "resume")}
    if cfg.data_path != ExperimentConfig.data_path and cfg.data_path:
        runtime["data_path"] = cfg.data_path
    merged = ExperimentConfig.from_dict({**saved, **runtime})
    return merged


def run_integrated_experiment(
    cfg: ExperimentConfig, *, fail_hook: Callable[[str, int, int, float], float] | None = None
) -> RunSummary:
    """Run every (seed, fold, model) unit of ``cfg`` and write the run folder. See DESIGN.md for its contract."""
    torch.multiprocessing.set_sharing_strategy(cfg.sharing_strategy)
    ctx = du.init_distributed(cfg.device)
    STOP.install()
    try:
        return _run(cfg, ctx, fail_hook)
    finally:
        STOP.restore()
        du.cleanup()


def _run(cfg: ExperimentConfig, ctx: du.DistContext, fail_hook: Any) -> RunSummary:
    resuming = cfg.resume is not None
    if resuming:
        cfg = _load_resume_config(cfg)
    for name in cfg.model_names:  # unknown names and unsupported dims fail before any work
        spec = model_spec(name)
        if cfg.dim not in spec.dims:
            raise ValueError(f"model '{name}' supports --dim {' or '.join(spec.dims)}, not {cfg.dim}")
        get_model(name, cfg.dim, cfg.spatial_patch)  # checks the patch size against the model
        if cfg.use_pretrained and not (Path(cfg.pretrained_dir) / f"{name}.pth").is_file():
            raise FileNotFoundError(
                f"--use_pretrained: no weights for '{name}' at {Path(cfg.pretrained_dir) / f'{name}.pth'} "
                "(nothing is downloaded; put a checkpoint or state dict there)")

    run_dir = Path(cfg.resume) if resuming else None
    if ctx.is_main and run_dir is None:
        run_dir = create_run_dir(cfg.results_dir)
    run_dir = Path(du.broadcast_object(str(run_dir) if run_dir else None))

    cache, errors = prepare_data(cfg, ctx)
    case_ids = list(cache.case_ids)
    if ctx.is_main and (errors or (run_dir / SKIPPED_CSV).exists()):
        write_csv(run_dir / SKIPPED_CSV, pd.DataFrame(errors, columns=SKIPPED_COLUMNS))
        for e in errors:
            print(f"skipped case {e['case_id']}: {e['reason']} ({e['path']})", file=sys.stderr)
    if resuming and (run_dir / "splits.json").exists():
        splits = read_json(run_dir / "splits.json")
    else:
        splits = make_all_splits(cfg, case_ids)
    if ctx.is_main:
        world = ctx.world_size
        write_json(run_dir / "config.json", {
            "config": asdict(cfg), "world_size": world, "global_batch_size": cfg.batch_size * world,
            "device": str(ctx.device), "amp": cfg.resolved_amp(ctx.device), "versions": _versions(),
            "git_commit": _git_commit(), "n_cases": len(case_ids), "command": sys.argv,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
        })
        write_json(run_dir / "splits.json", splits)
        print(f"run folder: {run_dir}", flush=True)

    done = set()
    if resuming:
        finished = read_csv(run_dir / RESULTS_CSV, RESULT_COLUMNS)
        done = {(r.model, int(r.seed), int(r.fold)) for r in finished.itertuples()}
    efficiency: dict[str, tuple[dict, str]] = {}
    failed: list[dict[str, Any]] = []
    predictions: dict[tuple[int, int, str], dict[str, Any]] = {}
    units = [(seed, fold["fold"], name) for seed in cfg.seeds for fold in splits[str(seed)]["folds"]
             for name in cfg.model_names]
    for seed, fold, name in units:
        if (name, seed, fold) in done:
            continue
        split = next(f for f in splits[str(seed)]["folds"] if f["fold"] == fold)
        unit = unit_name(name, seed, fold, cfg.use_5fold)
        key = {"model": name, "seed": seed, "fold": fold}
        if ctx.is_main and resuming:  # epoch rows of an unfinished unit are re-written from its checkpoint
            _reset_epoch_rows(run_dir, key, cfg.use_5fold)
        epoch_box = {"epoch": -1}

        def log_epoch(row: dict[str, Any], key=key, box=epoch_box) -> None:
            box["epoch"] = row["epoch"]
            append_rows(run_dir / EPOCHS_CSV, [{**key, **row}], EPOCH_COLUMNS)

        hook = (lambda e, loss, name=name, seed=seed, fold=fold: fail_hook(name, seed, fold, e, loss)) \
            if fail_hook else None
        try:
            result = train_model(name, cfg, cache, split, seed, fold, run_dir, ctx, on_epoch_end=log_epoch,
                                 fail_hook=hook)
            evaluation = _evaluate_best(name, cfg, cache, split, result, ctx)
            if name not in efficiency:
                efficiency[name] = _efficiency_on_main(name, cfg, ctx, run_dir)
        except Interrupted:
            if ctx.is_main:
                print(f"interrupted during {unit}; continue with: python integrated_experiment.py --resume {run_dir}",
                      file=sys.stderr)
            return RunSummary(run_dir, EXIT_INTERRUPTED, failed)
        except Exception as exc:  # NaN loss, out of memory, a bug in one model: contain it to this unit
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            failed.append({**key, "epoch": epoch_box["epoch"] + 1, "reason": reason})
            if ctx.is_main:
                traceback.print_exc()
                append_rows(run_dir / FAILED_CSV, [{**failed[-1], "time": _dt.datetime.now().isoformat(
                    timespec="seconds")}], FAILED_COLUMNS)
                print(f"unit {unit} failed ({reason}); going on with the next unit", file=sys.stderr)
            du.barrier()
            continue
        if ctx.is_main:
            _write_unit_results(run_dir, key, result, evaluation, efficiency[name], cfg)
            if evaluation.first_prediction is not None and seed == cfg.seeds[0]:
                case_id, pred = evaluation.first_prediction
                slot = predictions.setdefault((seed, fold, case_id), {
                    "image": np.asarray(cache.image(case_id)[dl.modality_indices(["t1ce", "flair"])], np.float32),
                    "label": np.asarray(cache.label(case_id)), "preds": {}, "modalities": ["t1ce", "flair"]})
                slot["preds"][name] = pred
            (run_dir / "last" / f"{unit}_last.pth").unlink(missing_ok=True)
        du.barrier()

    if ctx.is_main:
        last_dir = run_dir / "last"
        if last_dir.is_dir() and not any(last_dir.iterdir()):
            last_dir.rmdir()  # every unit finished: no resume state left
        write_comparison(run_dir)
        _draw(run_dir, predictions)
        print(f"results: {run_dir / RESULTS_CSV}")
    exit_code = EXIT_UNITS_FAILED if failed else EXIT_OK
    return RunSummary(run_dir, exit_code, failed)


def _reset_epoch_rows(run_dir: Path, key: dict[str, Any], use_5fold: bool) -> None:
    """Drop a unit's epoch rows, then re-add those its last checkpoint recorded (no loss, no duplicates)."""
    path = run_dir / EPOCHS_CSV
    df = read_csv(path, EPOCH_COLUMNS)
    if not df.empty:
        mask = (df["model"] == key["model"]) & (df["seed"] == key["seed"]) & (df["fold"] == key["fold"])
        if mask.any():
            write_csv(path, df[~mask])
    last = run_dir / "last" / f"{unit_name(key['model'], key['seed'], key['fold'], use_5fold)}_last.pth"
    if last.exists():
        append_rows(path, [{**key, **row} for row in load_checkpoint(last)["curves"]], EPOCH_COLUMNS)


def _evaluate_best(name: str, cfg: ExperimentConfig, cache: Any, split: dict, result: TrainResult,
                   ctx: du.DistContext) -> EvaluationResult:
    model = get_model(name, cfg.dim, cfg.spatial_patch)
    model.load_state_dict(result.best_state)
    model.to(ctx.device)
    return evaluate_model(model, cache, split["test"], model_spec(name).modalities, dim=cfg.dim,
                          patch=cfg.spatial_patch, overlap=cfg.overlap, device=ctx.device,
                          amp=cfg.resolved_amp(ctx.device), sw_batch_size=cfg.sw_batch_size,
                          keep_first_prediction=True, desc=f"test {name}")


def _efficiency_on_main(name: str, cfg: ExperimentConfig, ctx: du.DistContext, run_dir: Path) -> tuple[dict, str]:
    """Efficiency is measured once per model, on rank 0 alone; the others wait."""
    values, notes = {}, ""
    if ctx.is_main:
        if cfg.measure_efficiency:
            values, stages, notes = measure_efficiency(name, cfg, ctx.device)
            if stages:
                replace_rows(run_dir / STAGE_PAM_CSV, {"model": name}, stages, STAGE_PAM_COLUMNS)
            elif not (run_dir / STAGE_PAM_CSV).exists():
                write_csv(run_dir / STAGE_PAM_CSV, pd.DataFrame(columns=STAGE_PAM_COLUMNS))
        else:
            values = {"params": count_parameters(get_model(name, cfg.dim, cfg.spatial_patch))}
            notes = "efficiency measurement disabled"
    du.barrier()
    return values, notes


def _write_unit_results(run_dir: Path, key: dict[str, Any], result: TrainResult, evaluation: EvaluationResult,
                        efficiency: tuple[dict, str], cfg: ExperimentConfig) -> None:
    values, notes = efficiency
    row = {**key, **evaluation.summary(), **{k: values.get(k, math.nan) for k in EFFICIENCY_KEYS},
           "best_epoch": result.best_epoch, "best_val_dice": result.best_val_dice,
           "world_size": du.get_world_size(), "ranks_in_sync": result.ranks_in_sync, "efficiency_notes": notes}
    # Rows of a unit that crashed after writing them and is re-run on --resume are replaced, not repeated.
    replace_rows(run_dir / PER_CASE_CSV, key, [{**key, **r} for r in evaluation.per_case], PER_CASE_COLUMNS)
    if evaluation.modality_weights:
        replace_rows(run_dir / MODALITY_CSV, key, [
            {**key, "modality": m, "weight_mean": float(np.mean(w)), "weight_std": float(np.std(w))}
            for m, w in evaluation.modality_weights.items()], MODALITY_COLUMNS)
    cm_path = run_dir / "confusion_matrices.json"
    cms = read_json(cm_path) if cm_path.exists() else {}
    cms[unit_name(key["model"], key["seed"], key["fold"], cfg.use_5fold)] = evaluation.confusion.tolist()
    write_json(cm_path, cms)
    append_rows(run_dir / RESULTS_CSV, [row], RESULT_COLUMNS)  # last: its presence marks the unit finished
    print(f"[{key['model']} seed {key['seed']} fold {key['fold']}] test Dice WT/TC/ET "
          f"{row['test_dice_wt']:.3f}/{row['test_dice_tc']:.3f}/{row['test_dice_et']:.3f}", flush=True)
