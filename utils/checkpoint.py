"""Checkpoints: tensors and plain Python values only, written atomically, loaded with
``torch.load(..., weights_only=True)`` so a file carrying a pickled object is refused, never run."""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.errors import first_line
from utils.io import atomic_write_bytes

BEST_KEYS = ("model_name", "state_dict", "config", "epoch", "best_val_dice")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded safely (or is missing keys)."""


_PLAIN = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``obj`` is built from tensors, plain scalars, lists, tuples and str-keyed dicts."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is not a str or int")
            check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} is not a tensor or plain value")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / DataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` atomically (temporary file + os.replace) after checking it holds plain values only."""
    check_plain(payload)
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, required: tuple[str, ...] = (), map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``; refuse anything that needs arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensors-and-values checkpoint "
            f"(weights_only load failed: {first_line(exc)})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks keys {missing}")
    return obj


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load weights from a local file into ``model`` where names and shapes match.

    Accepts a suite checkpoint (with ``state_dict``) or a bare state dict. Returns the lists of
    ``loaded``, ``skipped`` (shape mismatch) and ``missing`` (in the model, not in the file) keys.
    """
    obj = load_checkpoint(path)
    state = obj.get("state_dict", obj)
    own = model.state_dict()
    loaded = [k for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape]
    if not loaded:
        raise CheckpointError(f"{path}: no parameter name and shape matches the model; wrong file?")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    skipped = [k for k in state if k in own and k not in loaded]
    missing = [k for k in own if k not in state]
    return {"loaded": loaded, "skipped": skipped, "missing": missing}
