"""Training of one unit (model, seed, fold), as a short skeleton over named steps and hooks:

    trainer = trainer_class(cfg.trainer)(...)   build: model, DDP/compile wrapper, predictor, and the hooks
                                                build_loss(), build_optimizer(), build_scheduler()
    trainer.resume()                            continue from the unit's last checkpoint, if any
    trainer.fit()                               for each epoch:
        train_epoch(loader, epoch)                  one pass (train_step per batch; batch_transform on the device)
        validate()                                  whole validation volumes through the unit's Predictor
        end_epoch(...)                              best/last checkpoints, the epoch row, the log line

in the spirit of nnU-Net's trainer classes (``-tr``): ``--trainer NAME`` picks a class registered with
:func:`register_trainer` (or ``module:Class``); a subclass overrides a hook and nothing else
(``docs/TRAINERS.md`` shows one). Beside it: the stop flag set by SIGINT/SIGTERM, the RNG state kept in
checkpoints, and the weight fingerprint that tells whether DDP ranks stayed in sync.

GPU speed: a step never waits for the GPU. The loss is accumulated on the device; every
:data:`CHECK_EVERY` steps and at the end of the epoch one all-reduce of (non-finite steps, stop
request) is read on the host, so all ranks stop at the same step, and a non-finite loss fails the
unit before the epoch's checkpoints, which therefore never hold non-finite weights. cuDNN
autotuning is on unless ``--deterministic``; AdamW is fused on CUDA.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from evaluation.scoring import validation_dice
from experiment.config import ExperimentConfig
from experiment.data import build_train_loader
from experiment.run_folder import RunFolder, UnitKey, val_dice_keys
from inference.predictor import InferenceSettings, Predictor
from models import get_model, model_spec
from training.losses import make_loss
from utils import distributed as du
from utils.checkpoint import BEST_KEYS, load_checkpoint, load_pretrained, save_checkpoint, unwrap_model
from utils.runtime import (
    autocast_context,
    enable_grad_checkpoint,
    memory_format,
    peak_memory_gb,
    reset_peak_memory,
    set_seed,
)

log = logging.getLogger(__name__)

CHECK_EVERY = 16  # training steps between the (host-synchronising) non-finite-loss and stop checks


# ----------------------------------------------------------------------------- interruption
class StopFlag:
    """SIGINT/SIGTERM set a flag; training checks it between steps, so a checkpoint write always completes."""

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
        # print, not logging: a signal handler must not wait for a lock the interrupted code may hold
        print(f"\nreceived signal {signum}: stopping after the current step; resume with --resume",
              file=sys.stderr, flush=True)


STOP = StopFlag()


class Interrupted(Exception):
    """Raised inside a unit when a stop was requested; the unit stays resumable."""


class NonFiniteLoss(FloatingPointError):
    pass


# ----------------------------------------------------------------------------- state helpers
def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A hash of every tensor's name and bytes in a state dict: equal on all ranks when they hold the same state."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RanksOutOfSync(RuntimeError):
    """The ranks hold different weights or buffers where they must be identical."""


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's weights, copied to the CPU (what checkpoints hold)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap_model(model).state_dict().items()}


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float
    curves: list[dict[str, Any]] = field(default_factory=list)
    ranks_in_sync: bool = True
    steps_per_epoch: int = 0
    postprocess: dict[str, Any] = field(default_factory=dict)  # the rule and its validation Dice (--postprocess)


# ----------------------------------------------------------------------------- the trainer
class UnitTrainer:
    """The state of one unit's training, its named steps and its hooks (see the module docstring).

    Hooks a subclass may override (each is called once per unit, or per batch for ``batch_transform``):
    :meth:`build_loss`, :meth:`build_optimizer`, :meth:`build_scheduler`, :meth:`build_train_loader` and
    :meth:`batch_transform`. ``self.model`` is the bare model, ``self.cfg`` the run's configuration.
    """

    augment: Any = None  # the nnunet augmentation (--augmentation nnunet), built with the model
    loader_patch: tuple[int, ...] | None = None  # the larger region the loader crops for it
    step: int = 0  # the batch's index in the epoch (seeds the augmentation)

    def __init__(self, model_name: str, cfg: ExperimentConfig, cache: Any, split: dict[str, list[str]],
                 key: UnitKey, run: RunFolder, ctx: du.DistContext) -> None:
        self.model_name, self.cfg, self.cache, self.split, self.key, self.run, self.ctx = (
            model_name, cfg, cache, split, key, run, ctx)
        self.unit = run.unit(key)
        self.modalities = model_spec(model_name).modalities
        self.dataset = cfg.dataset_def()  # the data set's record: its classes are the model's output channels
        self.device, self.amp = ctx.device, cfg.resolved_amp(ctx.device)
        self.epoch, self.start_epoch, self.steps_per_epoch, self.step = 0, 0, 0, 0
        self.best = TrainResult({}, -1, -math.inf)
        self.on_progress: Callable[[int, int, float], None] | None = None  # (epoch, steps, mean loss), rank 0
        self._build()

    # ------------------------------------------------------------------ hooks
    def build_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss, called as ``loss(logits float32 (B, K, *spatial), label int64 (B, *spatial))``: Dice +
        cross-entropy over the classes, or with ``--region_based`` Dice + BCE over the regions; with
        ``--deep_supervision`` ``logits`` is the model's list of scales (``training.deep_supervision``)."""
        return make_loss(self.cfg.loss, self.cfg.region_based, self.dataset.scheme, batch_dice=self.cfg.batch_dice,
                         deep_supervision=self.cfg.deep_supervision)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW (fused on CUDA), or with ``--optimizer sgd`` nnU-Net's SGD: Nesterov, momentum 0.99."""
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=0.99, nesterov=True,
                                   weight_decay=self.cfg.weight_decay)
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                 fused=self.device.type == "cuda")

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule, stepped once per epoch: polynomial decay (power 0.9) over the epochs."""
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=self.cfg.epochs, power=0.9)

    def build_train_loader(self) -> Any:
        """The loader of training patches (3D) or slices (2D) of this unit (``experiment.data``): with the
        ``nnunet`` augmentation a larger region without flips (the augmentation cuts the patch from its centre), its
        background outside the brain mask labelled so that the augmentation zeroes the image there afterwards."""
        options = {}
        if self.augment is not None:
            options = {"patch": self.loader_patch, "flips": False, "brain_mask": self.augment.outside_label is not None}
        loader, _, _ = build_train_loader(self.cfg, self.cache, self.split["train"], self.modalities, self.key.seed,
                                          self.ctx, **options)
        return loader

    def batch_transform(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Applied to every training batch on the device, after the host-to-device copy and before the forward
        pass (image float32 (B, C, *spatial), label int64 (B, *spatial)): the ``nnunet`` augmentation, seeded by
        (seed, epoch, step, rank); identity with ``flips`` (the loader flipped the patch)."""
        if self.augment is None:
            return image, label
        return self.augment(image, label, epoch=self.epoch, step=self.step, rank=self.ctx.rank)

    # ------------------------------------------------------------------ build
    def _build(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        set_seed(self.key.seed, cfg.deterministic)  # identical initial weights on every rank
        self.model = get_model(self.model_name, cfg.dim, cfg.spatial_patch, cfg.output_channels(),
                               deep_supervision=cfg.deep_supervision)
        if cfg.use_pretrained:
            path = Path(cfg.pretrained_dir) / f"{self.model_name}.pth"
            report = load_pretrained(self.model, path)
            log.info("[%s] pretrained weights from %s: %d tensors loaded, %d skipped (shape), %d not in the file",
                     self.unit, path, len(report["loaded"]), len(report["skipped"]), len(report["missing"]))
        self.model = self._sync_batchnorm(self.model)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=memory_format(cfg.dim))
        if cfg.grad_checkpoint:
            log.info("[%s] activation checkpointing: %s", self.unit, enable_grad_checkpoint(self.model))
        torch.manual_seed(self.key.seed + ctx.rank)  # per-rank offset for everything random after initialisation
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic  # autotuned 3D convolutions
        self.train_module: nn.Module = self.model
        if ctx.distributed:
            # a model with heads at several scales leaves some unused in a step (all but the full resolution
            # without deep supervision; the lowest, weighted 0, with it): DDP must be told
            self.train_module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=model_spec(self.model_name).deep_supervision)
        if cfg.compile:
            self.train_module = torch.compile(self.train_module)
        # validation predicts as the test does (same settings; the live weights, compiled with --compile)
        self.predictor = Predictor.from_model(self.model, self.modalities,
                                              InferenceSettings.from_config(cfg, self.device), self.unit,
                                              regions=self.dataset.scheme if cfg.region_based else None)
        self.augment, self.loader_patch = None, None
        if cfg.augmentation == "nnunet":
            from brats_data import OUTSIDE_LABEL
            from training.augmentation import NNUNET_PARAMS, BatchAugmentation, loader_patch_size

            params = cfg.augmentation_params or NNUNET_PARAMS
            # the image is set to 0 outside the brain mask after augmentation, as nnU-Net does
            self.augment = BatchAugmentation(cfg.spatial_patch, params, seed=self.key.seed, outside_label=OUTSIDE_LABEL)
            # nnU-Net's larger region (its get_patch_size): 205^3 for a 128^3 patch; covering every extreme draw
            # would take (304, 310, 304), 14 times the voxels, to load and copy for rare corner cases
            self.loader_patch = loader_patch_size(cfg.spatial_patch, params, cover="nnunet")
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler(self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.loss_fn = self.build_loss()
        self.autocast = autocast_context(self.device, self.amp)

    def _sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """Under torchrun on GPUs, BatchNorm becomes SyncBatchNorm (statistics over the global batch)
        unless ``--no_sync_bn``; torch has no SyncBatchNorm on the CPU, where each rank keeps its own
        statistics (rank 0's are broadcast before every validation)."""
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if not (has_bn and self.ctx.distributed and self.cfg.sync_bn):
            return model
        if self.device.type != "cuda":
            log.info("[%s] SyncBatchNorm needs GPUs: BatchNorm statistics stay per rank on %s", self.unit,
                     self.device.type)
            return model
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        """Continue from the unit's last checkpoint (weights, optimizer, schedule, scaler, RNG, curves)."""
        last_path = self.run.last_checkpoint(self.key)
        if not last_path.exists():
            return
        state = load_checkpoint(last_path, map_location="cpu")
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch = state["epoch"] + 1
        self.best = TrainResult({}, state["best_epoch"], state["best_val_dice"], list(state["curves"]))
        best_path = self.run.best_checkpoint(self.key)
        if best_path.exists():
            self.best.best_state = load_checkpoint(best_path, BEST_KEYS)["state_dict"]
        log.info("[%s] resuming at epoch %d (best val Dice %.4f at epoch %d)", self.unit, self.start_epoch,
                 self.best.best_val_dice, self.best.best_epoch)

    # ------------------------------------------------------------------ one epoch
    def compute_loss(self, logits: torch.Tensor | list[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (list, tuple)):  # deep supervision: the scales from full resolution down
            return self.loss_fn([x.float() for x in logits], label)
        return self.loss_fn(logits.float(), label)

    def train_step(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the loss (detached, on the device: nothing waits for the GPU)."""
        fmt = memory_format(self.cfg.dim) if self.cfg.channels_last else torch.contiguous_format
        image = image.to(self.device, non_blocking=True, memory_format=fmt)
        label = label.to(self.device, non_blocking=True).long()  # uint8 from the loader
        image, label = self.batch_transform(image, label)
        image = image.contiguous(memory_format=fmt)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.train_module(image)
        loss = self.compute_loss(logits, label)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:  # on the true gradients: unscale first (a no-op without fp16)
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def check(self, stats: torch.Tensor, steps: int) -> None:
        """All ranks agree, at the same step, whether to stop: one all-reduce of (loss sum, non-finite steps,
        stop request), read on the host. ``stats`` holds this rank's (loss sum, non-finite steps). The mean
        loss so far goes to ``on_progress(epoch, steps, loss)`` on rank 0 (trackers), at no extra sync."""
        stop = torch.tensor(float(STOP.requested), dtype=torch.float64, device=self.device)
        loss_sum, bad, stop = du.all_reduce_sum(torch.stack([stats[0], stats[1], stop])).tolist()
        if self.on_progress is not None and self.ctx.is_main and steps > 0:
            self.on_progress(self.epoch, steps, loss_sum / self.ctx.world_size / steps)
        if stop > 0:
            raise Interrupted(f"stopped during epoch {self.epoch}")
        if bad > 0:
            raise NonFiniteLoss(f"non-finite training loss in {int(bad)} step(s) up to step {steps} "
                                f"of epoch {self.epoch}")

    def train_epoch(self, loader: Any, epoch: int) -> float:
        """One pass over ``loader``; returns the mean training loss over steps and ranks."""
        self.epoch = epoch
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        self.train_module.train()
        stats = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, non-finite steps
        count = 0
        desc = f"{self.unit} epoch {epoch + 1}/{self.cfg.epochs}"
        for image, label in tqdm(loader, desc=desc, leave=False, disable=not self.ctx.is_main):
            self.step = count  # the batch's index in the epoch (seeds the augmentation)
            loss = self.train_step(image, label).double()
            stats += torch.stack([loss, (~torch.isfinite(loss)).double()])
            count += 1
            if count % CHECK_EVERY == 0:
                self.check(stats, count)
        self.check(stats, count)
        self.steps_per_epoch = count
        total = du.all_reduce_sum(stats[:1].clone()).item()
        return total / self.ctx.world_size / max(count, 1)

    def validates(self, epoch: int) -> bool:
        """Every ``--val_every`` epochs, and always the last epoch."""
        return (epoch + 1) % self.cfg.val_every == 0 or epoch == self.cfg.epochs - 1

    def validate(self) -> dict[str, float]:
        """Validation Dice of rank 0's weights and buffers on every rank (what rank 0 checkpoints)."""
        du.broadcast_module_state(self.model)
        return validation_dice(self.predictor, self.cache, self.split["val"], self.dataset.scheme)

    # ------------------------------------------------------------------ end of an epoch
    def epoch_costs(self, train_seconds: float) -> dict[str, Any]:
        """The epoch's cost columns (experiment/run_folder.py EPOCH_COST_KEYS): its training pass (s) and steps,
        and the peak memory since the unit's training started in this session, the max over ranks."""
        peaks = du.all_gather_objects(peak_memory_gb(self.device))
        return {"train_time_s": train_seconds, "steps": self.steps_per_epoch,
                "peak_mem_gb": max(p[0] for p in peaks), "peak_mem_reserved_gb": max(p[1] for p in peaks),
                "peak_mem_kind": "+".join(sorted({p[2] for p in peaks}))}

    def end_epoch(self, epoch: int, train_loss: float, lr: float, val: dict[str, float], seconds: float,
                  costs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keep the best weights, write the best/last checkpoints (rank 0), log; return the epoch row (with the
        epoch's ``costs``, which the last checkpoint keeps for a resumed unit's totals)."""
        row = {"epoch": epoch, "train_loss": train_loss, **val, "lr": lr, "epoch_time_s": seconds, **(costs or {})}
        self.best.curves.append(row)
        improved = val["val_dice_mean"] > self.best.best_val_dice  # False for an unvalidated epoch (NaN)
        if improved:
            self.best.best_state, self.best.best_epoch = state_dict_cpu(self.model), epoch
            self.best.best_val_dice = val["val_dice_mean"]
        if self.ctx.is_main:
            if improved:
                self._save_best(epoch)
            self._save_last(epoch)
            log.info("[%s] epoch %d/%d loss %.4f val Dice WT/TC/ET %.3f/%.3f/%.3f (%.1fs, %d steps)", self.unit,
                     epoch + 1, self.cfg.epochs, train_loss, val["val_dice_wt"], val["val_dice_tc"],
                     val["val_dice_et"], seconds, self.steps_per_epoch)
        return row

    def _config_record(self) -> dict[str, Any]:
        """The configuration saved in the checkpoints, with the data set's record (``dataset``) the unit trains on."""
        record = self.cfg.to_dict()
        if record["dataset"] is None:
            record["dataset"] = self.dataset.to_dict()
        return record

    def _save_best(self, epoch: int) -> None:
        save_checkpoint(self.run.best_checkpoint(self.key), {
            "model_name": self.model_name, "state_dict": self.best.best_state, "config": self._config_record(),
            "epoch": epoch, "best_val_dice": self.best.best_val_dice, "seed": self.key.seed, "fold": self.key.fold,
            "dim": self.cfg.dim, "patch_size": list(self.cfg.spatial_patch), "modalities": list(self.modalities),
            "num_classes": self.cfg.output_channels(), "dataset": self.dataset.to_dict(),
            "region_based": bool(self.cfg.region_based),
        })

    def _save_last(self, epoch: int) -> None:
        save_checkpoint(self.run.last_checkpoint(self.key), {
            "model_name": self.model_name, "state_dict": state_dict_cpu(self.model),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "epoch": epoch, "curves": self.best.curves,
            "best_epoch": self.best.best_epoch, "best_val_dice": self.best.best_val_dice,
            "config": self._config_record(),
        })

    def finish(self) -> TrainResult:
        """The best weights and the curves, after checking that every rank holds the very state rank 0
        checkpointed (the test runs sharded over the ranks with it); a difference fails the unit."""
        fingerprint = weights_fingerprint(self.best.best_state)
        self.best.ranks_in_sync = len(set(du.all_gather_objects(fingerprint))) == 1
        self.best.steps_per_epoch = self.steps_per_epoch
        if not self.best.ranks_in_sync:
            raise RanksOutOfSync(f"[{self.unit}] the best weights differ between ranks; no checkpoint would "
                                 "reproduce the test metrics")
        return self.best


    # ------------------------------------------------------------------ the epochs
    def fit(self, on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Train from ``start_epoch`` to the last epoch; ``on_epoch_end(row)`` runs on rank 0 after each."""
        loader = self.build_train_loader()
        reset_peak_memory(self.device)  # the unit's peak, not an earlier unit's (max over sessions: the rows)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            t0 = time.perf_counter()
            train_loss = self.train_epoch(loader, epoch)  # ends on a host read of the loss: the GPU is done
            costs = self.epoch_costs(time.perf_counter() - t0)
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            val = self.validate() if self.validates(epoch) else dict.fromkeys(val_dice_keys(self.dataset.scheme),
                                                                                 math.nan)
            row = self.end_epoch(epoch, train_loss, lr, val, time.perf_counter() - t0, costs)
            if self.ctx.is_main and on_epoch_end:
                on_epoch_end(row)
            if du.any_rank_true(STOP.requested, self.ctx.device):
                raise Interrupted(f"stopped after epoch {epoch}")
        return self.finish()


# ----------------------------------------------------------------------------- trainer registry
DEFAULT_TRAINER = "UnitTrainer"
TRAINERS: dict[str, type[UnitTrainer]] = {DEFAULT_TRAINER: UnitTrainer}


def register_trainer(name: str) -> Callable[[type[UnitTrainer]], type[UnitTrainer]]:
    """Class decorator: ``--trainer NAME`` selects the class (a subclass of :class:`UnitTrainer`)."""

    def decorator(cls: type[UnitTrainer]) -> type[UnitTrainer]:
        if not (isinstance(cls, type) and issubclass(cls, UnitTrainer)):
            raise TypeError(f"trainer {name!r} must be a subclass of UnitTrainer, got {cls!r}")
        if name in TRAINERS and TRAINERS[name] is not cls:
            log.warning("trainer %r registered twice; the later class wins", name)
        TRAINERS[name] = cls
        return cls

    return decorator


def trainer_class(name: str) -> type[UnitTrainer]:
    """The class of ``--trainer``: a registered name, or ``package.module:Class`` (imported; importing the
    module also registers what it decorates). Raises ``ValueError`` naming the choices."""
    if name in TRAINERS:
        return TRAINERS[name]
    module_name, sep, attr = name.partition(":")
    if sep and module_name and attr:
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"--trainer {name}: cannot import {attr} from {module_name} ({exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, UnitTrainer)):
            raise ValueError(f"--trainer {name}: {attr} is not a subclass of training.trainer.UnitTrainer")
        return cls
    raise ValueError(f"unknown --trainer {name!r}; registered: {', '.join(sorted(TRAINERS))}, "
                     "or give module:Class of an importable subclass of UnitTrainer")


def train_model(
    model_name: str, cfg: ExperimentConfig, cache: Any, split: dict[str, list[str]], seed: int, fold: int,
    run: RunFolder | str | Path, ctx: du.DistContext, *,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train one unit with the trainer class of ``cfg.trainer``; validate each epoch; keep the best weights (by
    validation mean Dice).

    Every epoch a ``last`` checkpoint (model, optimizer, scheduler, scaler, RNG, curves, best score) is
    written atomically to ``run/last/``; the best weights go to ``{unit}_best.pth``. When a last
    checkpoint exists, training continues from the epoch after it. ``on_epoch_end(row)`` runs on rank 0 after
    each epoch, ``on_progress(epoch, steps, mean loss)`` on rank 0 every ``CHECK_EVERY`` steps.
    """
    run = run if isinstance(run, RunFolder) else RunFolder(run, cfg.use_5fold, cfg.dataset_def().scheme)
    cls = trainer_class(cfg.trainer)
    trainer = cls(model_name, cfg, cache, split, UnitKey(model_name, seed, fold), run, ctx)
    log.info("[%s] trainer %s.%s", trainer.unit, cls.__module__, cls.__qualname__)
    trainer.on_progress = on_progress
    trainer.resume()
    return trainer.fit(on_epoch_end)
