"""Training datasets over a :class:`PreprocessedCache`: random 3D patches and 2D axial slices.

Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)`` (``np.random.default_rng([seed, e, i])``),
so samples are identical whatever the number of DataLoader workers or their order.  With probability
``fg_fraction`` a region is centred on a random foreground voxel (class 1, 2 or 3; a random region if
the case has none), otherwise its position is uniformly random; regions reaching outside the volume
are zero-padded (label 0).  Random flips (p = 0.5 per spatial axis) act on image and label alike.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.context import get_spawning_popen

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.labels import MODALITIES

from .cache import PreprocessedCache

# Memory maps kept open per dataset copy (each DataLoader worker has its own): three files a case, so
# a worker holds at most 3 x MAX_OPEN_CASES files whatever the number of cases (BraTS 2021: 1,251).
MAX_OPEN_CASES = 16


def modality_indices(modalities: Sequence[str]) -> list[int]:
    """Channel indices of ``modalities`` in the canonical order ``MODALITIES`` (sorted, no duplicates)."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities contain duplicates: {tuple(modalities)}")
    return sorted(MODALITIES.index(m) for m in modalities)


@dataclass(frozen=True)
class RegionSample:
    """Where one item comes from: case, start corner (z, y, x; may be negative), flipped axes, fg-centred."""

    case_id: str
    start: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    foreground: bool


def _flipped(tensor: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """``tensor`` reversed along ``dims`` (itself if none); float16 is flipped through an int16 view,
    which torch's vectorised flip handles several times faster."""
    if not dims:
        return tensor
    if tensor.dtype == torch.float16:
        return tensor.view(torch.int16).flip(dims).view(torch.float16)
    return tensor.flip(dims)


class PatchDataset(Dataset):
    """Random 3D patches ``(image float32 (C, Z, Y, X), label uint8 (Z, Y, X))`` from the cache.

    Labels stay uint8 through the loader (an eighth of int64's bytes in worker queues and host-to-device
    copies); the trainer makes them int64 on the device. At most :data:`MAX_OPEN_CASES` cases are kept
    memory-mapped at a time (least recently used first out), so open files stay bounded.

    Args:
        cache: a built :class:`PreprocessedCache`.
        case_ids: cases to draw from; item i uses ``case_ids[i % len(case_ids)]``.
        modalities: input modalities; channels follow the canonical order.
        patch_size: (Z, Y, X).
        samples_per_epoch: length of the dataset.
        fg_fraction: probability that a patch is centred on a foreground voxel.
        flips: random flips along each spatial axis.
        seed: base seed; call :meth:`set_epoch` before each epoch for new samples (the epoch lives
            in shared memory, so persistent DataLoader workers see it too).
    """

    _region_ndim = 3  # how many trailing sizes of the region the caller gives
    _flip_axes: tuple[int, ...] = (0, 1, 2)

    def __init__(self, cache: PreprocessedCache, case_ids: Sequence[str], modalities: Sequence[str],
                 patch_size: Sequence[int], samples_per_epoch: int, fg_fraction: float = 1 / 3,
                 flips: bool = True, seed: int = 0):
        if not case_ids:
            raise ValueError("case_ids must not be empty")
        if len(patch_size) != self._region_ndim or any(int(p) < 1 for p in patch_size):
            raise ValueError(f"patch_size must be {self._region_ndim} positive sizes, got {tuple(patch_size)}")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        self.cache = cache
        self.case_ids = list(case_ids)
        self.channels = modality_indices(modalities)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.region = (1,) * (3 - self._region_ndim) + self.patch_size
        self.samples_per_epoch = int(samples_per_epoch)
        self.fg_fraction = float(fg_fraction)
        self.flips = flips
        self.seed = seed
        # Shared memory, so that set_epoch() also reaches persistent DataLoader workers.
        self._epoch = multiprocessing.RawValue("q", 0)
        self._arrays: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = OrderedDict()  # never pickle memory maps into DataLoader workers
        if get_spawning_popen() is None:  # plain pickling, not starting a worker: a private epoch copy
            state["_epoch"] = self.epoch
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["_epoch"], int):
            state["_epoch"] = multiprocessing.RawValue("q", state["_epoch"])
        self.__dict__.update(state)

    @property
    def epoch(self) -> int:
        """The current epoch (shared with this dataset's DataLoader workers, persistent ones included)."""
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Select the samples of ``epoch``; call it before iterating the DataLoader of that epoch."""
        self._epoch.value = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _case_arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if case_id in self._arrays:
            self._arrays.move_to_end(case_id)
        else:
            while len(self._arrays) >= MAX_OPEN_CASES:
                self._arrays.popitem(last=False)  # the last reference: its files close now
            self._arrays[case_id] = (self.cache.image(case_id), self.cache.label(case_id),
                                     self.cache.foreground(case_id))
        return self._arrays[case_id]

    def sample(self, index: int) -> RegionSample:
        """The random choices of item ``index`` in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case_id = self.case_ids[index % len(self.case_ids)]
        _, label, foreground = self._case_arrays(case_id)
        use_fg = bool(rng.random() < self.fg_fraction) and len(foreground) > 0
        if use_fg:
            centre = foreground[rng.integers(len(foreground))]
            start = tuple(int(c) - r // 2 for c, r in zip(centre, self.region))
        else:
            start = tuple(int(rng.integers(min(0, s - r), max(0, s - r) + 1)) for s, r in zip(label.shape, self.region))
        draws = rng.random(3) < 0.5
        flips = tuple(bool(self.flips and axis in self._flip_axes and draws[axis]) for axis in range(3))
        return RegionSample(case_id, start, flips, use_fg)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.sample(index)
        image, label, _ = self._case_arrays(spec.case_id)
        src, dst = [], []
        for begin, size, dim, flip in zip(spec.start, self.region, label.shape, spec.flips):
            lo, hi = max(begin, 0), max(min(begin + size, dim), max(begin, 0))
            first, last = lo - begin, hi - begin  # where the volume's part lands in the region
            src.append(slice(lo, hi))
            dst.append(slice(size - last, size - first) if flip else slice(first, last))
        src, dst = tuple(src), tuple(dst)
        inside = all(d.start == 0 and d.stop == r for d, r in zip(dst, self.region))
        alloc = torch.empty if inside else torch.zeros  # zero padding outside the volume
        out_image = alloc((len(self.channels),) + self.region, dtype=torch.float32)
        out_label = alloc(self.region, dtype=torch.uint8)
        dims = [axis for axis, flip in enumerate(spec.flips) if flip]
        # Read the memory-mapped crop (only the needed channels), flip it in the stored dtype and cast
        # it into the output: at most two vectorised passes, no Python per voxel.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch warns about read-only arrays; we only read
            for k, channel in enumerate(self.channels):
                out_image[k][dst].copy_(_flipped(torch.from_numpy(image[channel][src]), dims))
            out_label[dst].copy_(_flipped(torch.from_numpy(label[src]), dims))
        shape = self.region[3 - self._region_ndim:]
        return out_image.reshape((len(self.channels),) + shape), out_label.reshape(shape)


class SliceDataset(PatchDataset):
    """Random axial slices ``(image float32 (C, Y, X), label uint8 (Y, X))``: a patch of depth 1.

    Foreground items take the slice of a random foreground voxel, centred on it in-plane; flips act
    on Y and X.  ``patch_size`` is ``(Y, X)``; otherwise as :class:`PatchDataset`.
    """

    _region_ndim = 2
    _flip_axes = (1, 2)
