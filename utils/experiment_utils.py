"""Model front (the registry's public face), seeding and mixed-precision contexts.

Efficiency measurement lives in ``experiment/efficiency.py``, sliding-window inference in
``experiment/evaluation.py``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn

from models.registry import ModelSpec, create_model
from models.registry import list_models as _list_models
from models.registry import model_spec as _model_spec


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
