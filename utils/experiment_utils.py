"""Model front (registry), seeding, efficiency measurement and sliding-window inference.

Efficiency figures:
- ``params``: trainable parameters.
- ``flops``: forward FLOPs for one patch at batch 1, counted by thop (ultralytics-thop) on the
  ``meta`` device (no memory, no compute) and reported as 2 x thop's multiply-accumulates.
  thop does not count every op (e.g. attention matmuls inside MONAI transformers are partly missed).
- PAM (peak activation memory): on CUDA only, the peak of ``torch.cuda.max_memory_allocated`` above
  the memory held before the step (weights, optimizer state and the input already resident), for
  one training step (forward + backward) and for one inference forward, repeated 5 times: mean, std.
- Stage-wise PAM: the peak allocation increase while each top-level child module (a stage) runs
  its forward, in training mode (saved activations count) and in inference mode.
- Latency: wall time of one inference forward at batch 1 on the run's patch size (CUDA
  synchronised; bf16 autocast on CUDA when the run trains with it), after warm-up; mean and std.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference

from models.registry import ModelSpec, create_model
from models.registry import list_models as _list_models
from models.registry import model_spec as _model_spec

PAM_REPEATS = 5


# ----------------------------------------------------------------------------- registry front
def list_models(pattern: str | None = None) -> list[str]:
    """Every registered model name (sorted), optionally filtered by an fnmatch pattern."""
    return _list_models(pattern)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``: ``.modalities``, ``.dims``, ``.family``, ``.description``."""
    return _model_spec(name)


def get_model(name: str, dim: str = "3d", patch_size: Sequence[int] = (128, 128, 128)) -> nn.Module:
    """Build ``name`` for ``dim``; input ``(B, len(spec.modalities), *spatial)``, output ``(B, 4, *spatial)``."""
    return create_model(name, dim=dim, patch_size=patch_size)


# ----------------------------------------------------------------------------- seeding
def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; with ``deterministic`` also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def autocast_context(device: torch.device, amp: str) -> Callable[[], object]:
    """A factory of autocast contexts: ``bf16``/``fp16`` on CUDA, nothing otherwise."""
    if device.type != "cuda" or amp == "none":
        return nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type="cuda", dtype=dtype)


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


def measure_stage_pam(
    model: nn.Module, input_shape: Sequence[int], device: torch.device, amp: str = "bf16"
) -> list[dict[str, float | str]]:
    """Per top-level stage, the peak allocation increase (MiB) during its forward, train and inference."""
    if device.type != "cuda":
        return []
    model = model.to(device)
    stages = list(model.named_children())
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


# ----------------------------------------------------------------------------- sliding window
def cosine_weight_map(roi_size: Sequence[int], floor: float = 1e-3) -> torch.Tensor:
    """Separable raised-cosine (sine) window over the ROI: 1 in the centre, small but > 0 at the borders."""
    weights = None
    for n in roi_size:
        w = torch.sin(math.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n).clamp_min(floor)
        weights = w if weights is None else weights[..., None] * w
    return weights


def sliding_window_predict(
    model: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.1,
    sw_batch_size: int = 2,
    amp: str = "none",
    weight_map: torch.Tensor | None = None,
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
    ctx = autocast_context(image.device, amp)
    with torch.no_grad(), ctx():
        logits = sliding_window_inference(
            image, roi, sw_batch_size, model, overlap=overlap, roi_weight_map=weight_map.to(image.device)
        )
    logits = torch.as_tensor(logits).float()
    if any(pad):
        index = [slice(None), slice(None)] + [slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial)]
        logits = logits[tuple(index)]
    return logits
