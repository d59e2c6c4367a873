"""Seeding and mixed-precision contexts (no project imports: every package may use them)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch


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
