"""Training datasets over a :class:`PreprocessedCache`: random 3D patches and 2D axial slices.

Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)`` (``np.random.default_rng([seed, e, i])``) and, with
``sampling="nnunet"``, on its position in the (global) batch, which :class:`BatchPositionSampler` hands over
with the index; so samples are identical whatever the number of DataLoader workers or their order.

``sampling="nnunet"`` (the default; nnU-Net v2's ``nnUNetDataLoader``): the last ``round(B x 0.33)`` items of
every batch of ``B`` (``oversample_foreground_percent``; under DDP ``B`` is the global batch, each rank holding
its slice of it, as nnU-Net's ``_set_batch_size_and_oversample``) are forced to foreground: a class (or, in
region-based training, a region) is chosen uniformly among those present in the case, then one of its voxels;
the region is centred on it, clipped at nnU-Net's lower bound only (``get_bbox``). The others lie uniformly
between nnU-Net's bounds, which keep the untransformed patch (``final_patch``, cut from the region's centre)
inside the volume; a case without foreground is cropped at random.

``sampling="voxel"`` (the suite's sampling before nnU-Net's): each item independently with probability
``fg_fraction`` (1/3) is centred on a voxel drawn uniformly over all tumour voxels, otherwise placed uniformly
anywhere the region still overlaps the volume.

Regions reaching outside the volume are zero-padded (label 0; with ``brain_mask``, :data:`OUTSIDE_LABEL`).
Random flips (p = 0.5 per spatial axis) act on image and label alike.
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
SAMPLINGS = ("nnunet", "voxel")
NNUNET_FG_FRACTION = 0.33  # nnU-Net's oversample_foreground_percent
OUTSIDE_LABEL = 255  # brain_mask: background voxels outside the brain mask (nnU-Net's seg -1)


def modality_indices(modalities: Sequence[str]) -> list[int]:
    """Channel indices of ``modalities`` in the canonical order ``MODALITIES`` (sorted, no duplicates)."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities contain duplicates: {tuple(modalities)}")
    return sorted(MODALITIES.index(m) for m in modalities)


def forced_foreground(position: int, batch_size: int, fg_fraction: float = NNUNET_FG_FRACTION) -> bool:
    """nnU-Net's ``_oversample_last_XX_percent``: whether item ``position`` of a batch of ``batch_size`` must
    hold foreground (the last ``batch_size - round(batch_size x (1 - fg_fraction))`` items)."""
    return not position < round(batch_size * (1 - fg_fraction))


def nnunet_bounds(shape: Sequence[int], region: Sequence[int], final_patch: Sequence[int]
                  ) -> tuple[list[int], list[int]]:
    """nnU-Net's ``get_bbox`` bounds of a region's start corner: ``need = region - final_patch`` (more where the
    volume is smaller than the region), lower ``(-need) // 2``, upper ``shape + need // 2 + need % 2 - region``;
    the final patch cut from the region's centre then stays inside the volume."""
    lbs, ubs = [], []
    for s, r, p in zip(shape, region, final_patch):
        need = r - p
        if need + s < r:
            need = r - s
        lbs.append(-need // 2)
        ubs.append(s + need // 2 + need % 2 - r)
    return lbs, ubs


class BatchPositionSampler(torch.utils.data.Sampler):
    """Wraps a sampler (e.g. a ``DistributedSampler``) so that each index reaches the dataset with its position
    in the global batch: yields ``(index, rank * batch_size + k % batch_size)`` for the k-th index of this rank.

    The DataLoader groups consecutive indices into batches of ``batch_size``, so item k sits at position
    ``k % batch_size`` of this rank's batch, whichever worker loads it; rank r holds positions
    ``r * batch_size ...`` of the global batch of ``batch_size * world_size``."""

    def __init__(self, sampler: torch.utils.data.Sampler, batch_size: int, rank: int = 0):
        if batch_size < 1 or rank < 0:
            raise ValueError(f"batch_size must be >= 1 and rank >= 0, got {batch_size} and {rank}")
        self.sampler, self.batch_size, self.rank = sampler, int(batch_size), int(rank)

    def __iter__(self):
        offset = self.rank * self.batch_size
        for k, index in enumerate(self.sampler):
            yield int(index), offset + k % self.batch_size

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


@dataclass(frozen=True)
class RegionSample:
    """Where one item comes from: case, start corner (z, y, x; may be negative), flipped axes, fg-centred
    (the foreground voxel it is centred on, else None)."""

    case_id: str
    start: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    foreground: bool
    voxel: tuple[int, int, int] | None = None


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
        fg_fraction: ``nnunet``: the share of each batch forced to foreground (default 0.33, nnU-Net's);
            ``voxel``: the probability that a patch is centred on a foreground voxel (default 1/3).
        flips: random flips along each spatial axis.
        seed: base seed; call :meth:`set_epoch` before each epoch for new samples (the epoch lives
            in shared memory, so persistent DataLoader workers see it too).
        sampling: ``nnunet`` or ``voxel`` (module docstring).
        final_patch: ``nnunet``: the untransformed patch cut from the region's centre (an augmentation on the
            device cuts it); default ``patch_size``. Same number of sizes as ``patch_size``.
        batch_size: ``nnunet``: the global batch (per rank x ranks); an item given as a plain index takes
            position ``index % batch_size``, one given as ``(index, position)`` (:class:`BatchPositionSampler`)
            that position.
        fg_classes: ``nnunet``: the classes or regions to choose among, each a tuple of classes (default: every
            foreground class alone; region-based training: the regions' classes).
        brain_mask: label background voxels outside the cache's brain mask (and outside the volume)
            :data:`OUTSIDE_LABEL`, for an augmentation that zeroes the image there afterwards (nnU-Net's
            ``MaskImageTransform``).
    """

    _region_ndim = 3  # how many trailing sizes of the region the caller gives
    _flip_axes: tuple[int, ...] = (0, 1, 2)

    def __init__(self, cache: PreprocessedCache, case_ids: Sequence[str], modalities: Sequence[str],
                 patch_size: Sequence[int], samples_per_epoch: int, fg_fraction: float | None = None,
                 flips: bool = True, seed: int = 0, *, sampling: str = "nnunet",
                 final_patch: Sequence[int] | None = None, batch_size: int = 2,
                 fg_classes: Sequence[Sequence[int]] | None = None, brain_mask: bool = False):
        if not case_ids:
            raise ValueError("case_ids must not be empty")
        if len(patch_size) != self._region_ndim or any(int(p) < 1 for p in patch_size):
            raise ValueError(f"patch_size must be {self._region_ndim} positive sizes, got {tuple(patch_size)}")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if fg_fraction is None:
            fg_fraction = NNUNET_FG_FRACTION if sampling == "nnunet" else 1 / 3
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        final_patch = tuple(int(p) for p in (final_patch or patch_size))
        if len(final_patch) != len(patch_size) or any(not 1 <= f <= int(p) for f, p in zip(final_patch, patch_size)):
            raise ValueError(f"final_patch must be {len(patch_size)} sizes, each from 1 to the region's "
                             f"{tuple(patch_size)}, got {final_patch}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cache = cache
        self.case_ids = list(case_ids)
        self.channels = modality_indices(modalities)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.region = (1,) * (3 - self._region_ndim) + self.patch_size
        self.samples_per_epoch = int(samples_per_epoch)
        self.fg_fraction = float(fg_fraction)
        self.flips = flips
        self.seed = seed
        self.sampling = sampling
        self.final_patch = (1,) * (3 - self._region_ndim) + final_patch
        self.batch_size = int(batch_size)
        self.fg_classes = None if fg_classes is None else tuple(tuple(int(c) for c in g) for g in fg_classes)
        self.brain_mask = bool(brain_mask)
        # Shared memory, so that set_epoch() also reaches persistent DataLoader workers.
        self._epoch = multiprocessing.RawValue("q", 0)
        self._arrays: OrderedDict[str, tuple] = OrderedDict()

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

    def _case_arrays(self, case_id: str) -> tuple:
        """(image, label, foreground points, first point of each class, voxels of each class, brain mask or None)."""
        if case_id in self._arrays:
            self._arrays.move_to_end(case_id)
        else:
            while len(self._arrays) >= MAX_OPEN_CASES:
                self._arrays.popitem(last=False)  # the last reference: its files close now
            meta = self.cache.meta(case_id)
            points = [int(n) for n in meta["fg_points"]]
            self._arrays[case_id] = (self.cache.image(case_id), self.cache.label(case_id),
                                     self.cache.foreground(case_id), np.concatenate([[0], np.cumsum(points)]),
                                     [int(n) for n in meta["class_voxels"]],
                                     self.cache.mask(case_id) if self.brain_mask else None)
        return self._arrays[case_id]

    def _groups(self, num_classes: int) -> tuple[tuple[int, ...], ...]:
        if self.sampling == "voxel":
            return (tuple(range(1, num_classes)),)  # one group: all tumour voxels
        return self.fg_classes if self.fg_classes is not None else tuple((c,) for c in range(1, num_classes))

    def _foreground_voxel(self, rng: np.random.Generator, points: np.ndarray, first: np.ndarray,
                          voxels: list[int]) -> tuple[int, ...] | None:
        """A class or region drawn uniformly among those present, then a voxel uniformly in it (a class of the
        region with probability proportional to its voxels, one of its stored points uniformly); None if none."""
        eligible = [g for g in self._groups(len(voxels)) if sum(voxels[c] for c in g if c < len(voxels)) > 0]
        if not eligible:
            return None
        group = eligible[int(rng.integers(len(eligible)))]
        classes = [c for c in group if c < len(voxels) and voxels[c] > 0]
        weights = np.array([voxels[c] for c in classes], dtype=np.float64)
        cls = classes[int(rng.choice(len(classes), p=weights / weights.sum()))] if len(classes) > 1 else classes[0]
        return tuple(int(v) for v in points[first[cls] + int(rng.integers(first[cls + 1] - first[cls]))])

    def sample(self, index: int, position: int | None = None) -> RegionSample:
        """The random choices of item ``index`` in the current epoch, at ``position`` of its (global) batch
        (default ``index % batch_size``; only ``nnunet`` sampling uses it)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case_id = self.case_ids[index % len(self.case_ids)]
        _, label, points, first, voxels, _ = self._case_arrays(case_id)
        if self.sampling == "nnunet":
            position = index % self.batch_size if position is None else int(position)
            voxel = None
            if forced_foreground(position, self.batch_size, self.fg_fraction):
                voxel = self._foreground_voxel(rng, points, first, voxels)
            lbs, ubs = nnunet_bounds(label.shape, self.region, self.final_patch)
            if voxel is not None:
                start = tuple(max(lb, v - r // 2) for lb, v, r in zip(lbs, voxel, self.region))
            else:
                start = tuple(int(rng.integers(lb, ub + 1)) for lb, ub in zip(lbs, ubs))
        else:
            use_fg = bool(rng.random() < self.fg_fraction)
            voxel = self._foreground_voxel(rng, points, first, voxels) if use_fg else None
            if voxel is not None:
                start = tuple(v - r // 2 for v, r in zip(voxel, self.region))
            else:
                start = tuple(int(rng.integers(min(0, s - r), max(0, s - r) + 1))
                              for s, r in zip(label.shape, self.region))
        draws = rng.random(3) < 0.5
        flips = tuple(bool(self.flips and axis in self._flip_axes and draws[axis]) for axis in range(3))
        return RegionSample(case_id, start, flips, voxel is not None, voxel)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.sample(*index) if isinstance(index, (tuple, list)) else self.sample(index)
        image, label, _, _, _, mask = self._case_arrays(spec.case_id)
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
            if mask is not None:  # nnU-Net's seg -1: background outside the brain mask and outside the volume
                inside_mask = torch.zeros(self.region, dtype=torch.bool)
                inside_mask[dst].copy_(_flipped(torch.from_numpy(mask[src]), dims).bool())
                out_label[(out_label == 0) & ~inside_mask] = OUTSIDE_LABEL
        shape = self.region[3 - self._region_ndim:]
        return out_image.reshape((len(self.channels),) + shape), out_label.reshape(shape)


class SliceDataset(PatchDataset):
    """Random axial slices ``(image float32 (C, Y, X), label uint8 (Y, X))``: a patch of depth 1.

    Foreground items take the slice of a random foreground voxel, centred on it in-plane; flips act
    on Y and X.  ``patch_size`` is ``(Y, X)``; otherwise as :class:`PatchDataset`.
    """

    _region_ndim = 2
    _flip_axes = (1, 2)
