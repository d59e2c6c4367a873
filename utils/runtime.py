"""Seeding and mixed-precision contexts (no project imports: every package may use them)."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


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


# ----------------------------------------------------------------------------- speed options (GPU memory)
def memory_format(dim: str) -> torch.memory_format:
    return torch.channels_last_3d if dim == "3d" else torch.channels_last


def enable_grad_checkpoint(model: nn.Module) -> str:
    """Activation checkpointing: MONAI's ``use_checkpoint`` where the model has it, else every callable
    top-level stage recomputed in the backward pass (only its input is kept). Returns what was done."""
    flagged = [m for m in model.modules() if isinstance(getattr(m, "use_checkpoint", None), bool)]
    for m in flagged:
        m.use_checkpoint = True
    if flagged:
        return f"MONAI use_checkpoint on {len(flagged)} modules"
    stages = [(n, m) for n, m in model.named_children()
              if type(m).forward is not nn.Module.forward and any(p.requires_grad for p in m.parameters())]
    for _, stage in stages:
        stage.forward = functools.partial(_checkpointed, stage.forward)
    return f"{len(stages)} stages checkpointed"


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


# ----------------------------------------------------------------------------- cost measurement (hardware, memory)
GB = 1e9  # the cost columns give memory in GB (10^9 bytes)


def hardware_name(device: torch.device) -> str:
    """What the cost columns were measured on: the GPU's name on CUDA, else the CPU's model (``/proc/cpuinfo``)
    and its logical cores."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"CPU {name or platform.processor() or platform.machine() or 'unknown'} ({os.cpu_count()} logical cores)"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on the CPU this process's peak resident set (Linux:
    writing 5 to ``/proc/self/clear_refs`` resets VmHWM; where that fails, the peak stays the process's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_gb(device: torch.device) -> tuple[float, float, str]:
    """(peak, reserved peak, kind) since :func:`reset_peak_memory`, in GB. CUDA: ``max_memory_allocated`` and
    ``max_memory_reserved``, kind ``cuda``. CPU: this process's peak resident set (VmHWM; its loader workers are
    other processes), no reserved figure (NaN), kind ``cpu_rss``."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) / GB, torch.cuda.max_memory_reserved(device) / GB, "cuda")
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib * 1024 / GB, float("nan"), "cpu_rss"
    except (OSError, StopIteration, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        scale = 1 if sys.platform == "darwin" else 1024
        return peak * scale / GB, float("nan"), "cpu_rss_process"  # since the process started: not reset
