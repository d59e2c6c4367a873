"""Efficiency of a model: parameters, FLOPs, peak activation memory (PAM), stage-wise PAM, latency.

- ``params``: trainable parameters.
- ``flops``: forward FLOPs for one patch at batch 1, counted by thop (ultralytics-thop) on the
  ``meta`` device (no memory, no compute) and reported as 2 x thop's multiply-accumulates.
  thop does not count every op (e.g. attention matmuls inside MONAI transformers are partly missed).
- PAM: on CUDA only, the peak of ``torch.cuda.max_memory_allocated`` above the memory held before
  the step (weights, optimizer state and the input already resident), for one training step
  (forward + backward) and for one inference forward, repeated 5 times: mean, std.
- Stage-wise PAM: the peak allocation increase while each top-level child module (a stage) runs
  its forward, in training mode (saved activations count) and in inference mode.
- Latency: wall time of one inference forward at batch 1 on the run's patch size (CUDA
  synchronised; bf16 autocast on CUDA when the run trains with it), after warm-up; mean and std.

:func:`measure_efficiency` measures one registered model for a run's configuration; a failure
(out of memory, an op the counter cannot follow) leaves that figure empty with a note.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from experiment.run_folder import EFFICIENCY_KEYS
from models import deploy, get_model, model_spec
from utils.errors import first_line
from utils.runtime import autocast_context, enable_grad_checkpoint

PAM_REPEATS = 5


# ----------------------------------------------------------------------------- counting
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Forward FLOPs (2 x MACs) for one input of ``input_shape`` (batch included), counted on ``meta``."""
    import thop

    probe = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(*input_shape, device="meta")
    with torch.no_grad():
        macs, _ = thop.profile(probe, inputs=(x,), verbose=False)
    return float(2 * macs)


# ----------------------------------------------------------------------------- GPU memory
def _cuda_peak_above(fn: Callable[[], None], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _train_step_fn(model: nn.Module, x: torch.Tensor, amp: str) -> Callable[[], None]:
    ctx = autocast_context(x.device, amp)

    def step() -> None:
        model.zero_grad(set_to_none=False)
        with ctx():
            out = model(x)
        out.float().mean().backward()

    return step


def _inference_fn(model: nn.Module, x: torch.Tensor, amp: str) -> Callable[[], None]:
    ctx = autocast_context(x.device, amp)

    def forward() -> None:
        with torch.no_grad(), ctx():
            model(x)

    return forward


def measure_pam(
    model: nn.Module, input_shape: Sequence[int], device: torch.device, amp: str = "bf16", repeats: int = PAM_REPEATS
) -> dict[str, float]:
    """Peak activation memory (MiB) of a training step and of an inference forward, mean and std over repeats.

    Returns an empty dict on a non-CUDA device (PAM is a GPU measurement).
    """
    if device.type != "cuda":
        return {}
    model = model.to(device)
    x = torch.randn(*input_shape, device=device)
    model.train()
    train_step = _train_step_fn(model, x, amp)
    train_step()  # allocate .grad buffers once so they count as resident, not as activations
    train = [_cuda_peak_above(train_step, device) for _ in range(repeats)]
    model.zero_grad(set_to_none=True)
    model.eval()
    infer = [_cuda_peak_above(_inference_fn(model, x, amp), device) for _ in range(repeats)]
    return {
        "pam_train_mb": float(np.mean(train)),
        "pam_train_mb_std": float(np.std(train)),
        "pam_inference_mb": float(np.mean(infer)),
        "pam_inference_mb_std": float(np.std(infer)),
    }


def named_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stages of a model in forward order: its top-level children, except that a child holding a
    ``stages`` list (a branch encoder of the multi-branch models) counts as its stages, so every
    encoder stage of every branch is its own row (``branch_flair.stage1`` ... ``stage4``)."""
    out = []
    for name, child in model.named_children():
        inner = getattr(child, "stages", None)
        if isinstance(inner, nn.ModuleList) and len(inner):
            out += [(f"{name}.stage{i + 1}", stage) for i, stage in enumerate(inner)]
        else:
            out.append((name, child))
    return out


def inference_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy re-parameterised as it would be deployed (``models.deploy``: e.g. every RepLK branch
    pair fused into one kernel, exact in eval mode); returns the copy and the number of fused layers (0 for
    models without re-parameterisation)."""
    deployed = copy.deepcopy(model).eval()
    return deployed, deploy(deployed)


def measure_stage_pam(
    model: nn.Module, input_shape: Sequence[int], device: torch.device, amp: str = "bf16"
) -> list[dict[str, float | str]]:
    """Per stage (:func:`named_stages`), the peak allocation increase (MiB) during its forward, train and inference."""
    if device.type != "cuda":
        return []
    model = model.to(device)
    stages = named_stages(model)
    x = torch.randn(*input_shape, device=device)
    results: dict[str, dict[str, float]] = {name: {} for name, _ in stages}

    def run(mode: str) -> None:
        start: dict[str, int] = {}
        handles = []
        for name, module in stages:
            def pre(_m, _i, name=name):
                torch.cuda.synchronize(device)
                start[name] = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)

            def post(_m, _i, _o, name=name):
                torch.cuda.synchronize(device)
                peak = (torch.cuda.max_memory_allocated(device) - start[name]) / 2**20
                results[name][mode] = max(results[name].get(mode, 0.0), peak)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        try:
            if mode == "train":
                model.train()
                _train_step_fn(model, x, amp)()
                model.zero_grad(set_to_none=True)
            else:
                model.eval()
                _inference_fn(model, x, amp)()
        finally:
            for h in handles:
                h.remove()

    run("train")
    run("inference")
    return [
        {"stage": name, "pam_train_mb": r.get("train", math.nan), "pam_inference_mb": r.get("inference", math.nan)}
        for name, r in results.items()
    ]


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    device: torch.device,
    amp: str = "bf16",
    warmup: int | None = None,
    repeats: int | None = None,
) -> dict[str, float]:
    """Inference latency (ms) at the given input shape: mean and std after warm-up."""
    on_gpu = device.type == "cuda"
    warmup = warmup if warmup is not None else (10 if on_gpu else 1)
    repeats = repeats if repeats is not None else (50 if on_gpu else 3)
    model = model.to(device).eval()
    x = torch.randn(*input_shape, device=device)
    forward = _inference_fn(model, x, amp)
    for _ in range(warmup):
        forward()
    times = []
    for _ in range(repeats):
        if on_gpu:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        forward()
        if on_gpu:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"latency_ms": float(np.mean(times)), "latency_ms_std": float(np.std(times))}


# ----------------------------------------------------------------------------- one model of a run
def measure_efficiency(model_name: str, cfg: Any, device: torch.device) -> tuple[dict, list[dict], str]:
    """(row values, stage-wise PAM rows, notes) of ``model_name`` at the run's patch (``cfg``: ExperimentConfig).

    Failures (e.g. out of memory) leave NaN and a note; nothing here stops the run.
    """
    shape = (1, len(model_spec(model_name).modalities), *cfg.spatial_patch)
    amp = cfg.resolved_amp(device)
    values: dict[str, float] = {k: math.nan for k in EFFICIENCY_KEYS}
    notes, stages = [], []
    model = get_model(model_name, cfg.dim, cfg.spatial_patch, cfg.output_channels())
    values["params"] = count_parameters(model)
    deployed, n_fused = inference_copy(model)
    if cfg.grad_checkpoint:  # the training PAM of the run as configured
        notes.append(f"PAM with activation checkpointing ({enable_grad_checkpoint(model)})")
    if n_fused:
        notes.append(f"latency with {n_fused} RepLK convolutions re-parameterised")
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("flops", lambda: {"flops": count_flops(model, shape)}),
        ("pam", lambda: measure_pam(model, shape, device, amp)),
        ("latency", lambda: measure_latency(deployed, shape, device, amp)),
    ]
    for name, step in steps:
        try:
            values.update(step())
        except Exception as exc:  # OOM or an op the counter cannot follow: record, go on
            notes.append(f"{name}: {first_line(exc, with_type=True)}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    try:
        stages = [{"model": model_name, **r} for r in measure_stage_pam(model, shape, device, amp)]
    except Exception as exc:
        notes.append(f"stage_pam: {type(exc).__name__}")
    if device.type == "cuda":
        model.cpu()
        deployed.cpu()
        torch.cuda.empty_cache()
    else:
        notes.append("PAM not measured (no CUDA device)")
    return values, stages, "; ".join(notes)
