"""The one model registry: name -> factory, modalities, dims (importing it imports the package ``models`` first,
which registers every family).

Factories are registered with :func:`register_model` and built with :func:`create_model`.
A factory has the signature ``factory(dim, patch_size, in_channels, out_channels) -> nn.Module``;
``patch_size`` is already normalised to ``dim`` (3 values in 3D, 2 in 2D).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn as nn

from utils.labels import DEFAULT_MODALITIES, MODALITIES, NUM_CLASSES  # also re-exported from here

DIMS = ("2d", "3d")


@dataclass(frozen=True)
class Published:
    """A published network's parameter count, for the catalogue row beside the count of the model built here."""

    params: int
    source: str  # where the number comes from (paper, table, setting)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    modalities: tuple[str, ...]
    dims: tuple[str, ...]
    family: str = ""
    description: str = ""
    published: Published | None = None
    # The factory takes ``deep_supervision=True``: the model then returns, in training mode, a list of logits from
    # the full resolution down (nnU-Net's order, each scale half the previous one); in eval mode the full-resolution
    # logits only, so inference never sees the coarser outputs.
    deep_supervision: bool = False

    @property
    def in_channels(self) -> int:
        return len(self.modalities)


_REGISTRY: dict[str, ModelSpec] = {}


def _canonical_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)}")
    return tuple(m for m in MODALITIES if m in modalities)


def register_model(
    name: str,
    *,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    dims: Sequence[str] = DIMS,
    family: str = "",
    description: str = "",
    published: Published | None = None,
    deep_supervision: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory`` under ``name``."""
    bad_dims = [d for d in dims if d not in DIMS]
    if bad_dims or not dims:
        raise ValueError(f"dims must be a non-empty subset of {DIMS}, got {tuple(dims)}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            warnings.warn(f"model '{name}' registered twice; the later factory wins", stacklevel=2)
        _REGISTRY[name] = ModelSpec(
            name=name,
            factory=factory,
            modalities=_canonical_modalities(modalities),
            dims=tuple(d for d in DIMS if d in dims),
            family=family,
            description=description or (factory.__doc__ or "").strip().split("\n")[0],
            published=published,
            deep_supervision=deep_supervision,
        )
        return factory

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of every registered model, optionally filtered by an fnmatch pattern."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.split("_")[0] in n][:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ValueError(f"Unknown model '{name}'.{hint} Run with --list_models to see all names.") from None


def normalize_patch_size(patch_size: Sequence[int], dim: str) -> tuple[int, ...]:
    """3 values in 3D; in 2D, 2 values (Y, X) or 3 (Z, Y, X) of which the last two are used."""
    ps = tuple(int(p) for p in patch_size)
    if dim == "3d":
        if len(ps) != 3:
            raise ValueError(f"--dim 3d needs a patch size of 3 values (Z Y X), got {ps}")
    elif dim == "2d":
        if len(ps) not in (2, 3):
            raise ValueError(f"--dim 2d needs a patch size of 2 values (Y X) or 3 (Z Y X), got {ps}")
        ps = ps[-2:]
    else:
        raise ValueError(f"dim must be '2d' or '3d', got {dim!r}")
    if any(p <= 0 for p in ps):
        raise ValueError(f"patch size values must be positive, got {ps}")
    return ps


def check_divisible(name: str, patch_size: Sequence[int], divisor: int) -> None:
    """Raise a ValueError naming the first spatial dimension not divisible by ``divisor``.

    Also rejects a patch equal to ``divisor`` on every axis: the coarsest scale would hold a
    single voxel, which instance normalisation cannot normalise (PyTorch raises in training).
    """
    axes = ("Z", "Y", "X")[-len(patch_size):]
    for axis, p in zip(axes, patch_size):
        if p % divisor:
            raise ValueError(
                f"{name}: patch size {tuple(patch_size)} has {axis}={p}, which is not divisible by {divisor}; "
                f"use multiples of {divisor} (e.g. {max(divisor, (p // divisor) * divisor or divisor)})"
            )
    if all(p == divisor for p in patch_size):
        raise ValueError(
            f"{name}: patch size {tuple(patch_size)} leaves a single voxel after downsampling by {divisor}, "
            f"which instance normalisation cannot handle; use at least {2 * divisor} along one axis"
        )


def create_model(name: str, dim: str = "3d", patch_size: Sequence[int] = (128, 128, 128),
                 num_classes: int = NUM_CLASSES, deep_supervision: bool = False) -> nn.Module:
    """Build ``name`` for ``dim`` with ``num_classes`` output channels (the data set's; default the BraTS 4);
    ``deep_supervision`` only for a model whose spec has it (:attr:`ModelSpec.deep_supervision`)."""
    if int(num_classes) < 2:
        raise ValueError(f"model '{name}': num_classes must be >= 2 (background and a class), got {num_classes}")
    spec = model_spec(name)
    if dim not in spec.dims:
        raise ValueError(f"model '{name}' supports --dim {' or '.join(spec.dims)}, not {dim}")
    ps = normalize_patch_size(patch_size, dim)
    if deep_supervision:
        if not spec.deep_supervision:
            raise ValueError(f"model '{name}' has no decoder outputs at several scales: --deep_supervision is for "
                             f"{', '.join(n for n in list_models() if model_spec(n).deep_supervision) or 'none'}")
        return spec.factory(dim=dim, patch_size=ps, in_channels=spec.in_channels, out_channels=int(num_classes),
                            deep_supervision=True)
    return spec.factory(dim=dim, patch_size=ps, in_channels=spec.in_channels, out_channels=int(num_classes))


def get_model(name: str, dim: str = "3d", patch_size: Sequence[int] = (128, 128, 128),
              num_classes: int = NUM_CLASSES, deep_supervision: bool = False) -> nn.Module:
    """Build ``name`` for ``dim``: input ``(B, len(spec.modalities), *spatial)``, output logits
    ``(B, num_classes, *spatial)`` (the data set's classes with background; 4 for BraTS 2018-2023 GLI); the
    registry checks the name, the dim and the patch size."""
    return create_model(name, dim=dim, patch_size=patch_size, num_classes=num_classes,
                        deep_supervision=deep_supervision)


def deploy(model: nn.Module) -> int:
    """Re-parameterise ``model`` for inference, in place, through its own ``reparameterize()`` hook (e.g. the
    RepLK models fuse their large and small kernels, exact in eval mode); a model without the hook is left as
    it is. Returns the number of fused layers. Callers need not know which families fuse what."""
    hook = getattr(model, "reparameterize", None)
    return int(hook()) if callable(hook) else 0


def spatial_dims(dim: str) -> int:
    return {"2d": 2, "3d": 3}[dim]
