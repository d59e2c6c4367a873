"""Tests of the preprocessed cache and of the patch/slice datasets."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_loader import (
    MODALITIES,
    BadCaseError,
    PatchDataset,
    PreprocessedCache,
    SliceDataset,
    dataset_root,
    discover_cases,
    generate_synthetic_dataset,
    load_case,
    modality_indices,
)
from tests.test_data_helpers import write_case, write_nifti

SYN_SHAPE = (40, 44, 32)  # NIfTI (X, Y, Z)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    generate_synthetic_dataset(path, n_cases=3, seed=1, shape=SYN_SHAPE)
    return path


@pytest.fixture(scope="module")
def cache(data_path: Path, tmp_path_factory: pytest.TempPathFactory) -> PreprocessedCache:
    cache = PreprocessedCache(tmp_path_factory.mktemp("cache"), discover_cases(data_path, "synthetic"))
    assert cache.build(progress=False) == []
    return cache


# --------------------------------------------------------------------------- cache

def test_cache_round_trip(cache: PreprocessedCache) -> None:
    assert cache.case_ids == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    for cid in cache.case_ids:
        image, label, spacing = load_case(cache.cases[cid])
        meta = cache.meta(cid)
        box = tuple(slice(a, b) for a, b in meta["bbox"])
        cached = cache.image(cid)
        assert isinstance(cached, np.memmap) and cached.dtype == np.float16 and not cached.flags.writeable
        assert cached.shape == (4, *label[box].shape)
        # Normalising the crop equals cropping the normalised volume (everything outside is background).
        np.testing.assert_allclose(cached.astype(np.float32), image[(slice(None), *box)], atol=5e-3, rtol=1e-3)
        assert np.array_equal(cache.label(cid), label[box]) and cache.label(cid).dtype == np.uint8
        assert label[box].sum() == label.sum() and (label[box] > 0).sum() == (label > 0).sum()  # crop keeps labels
        assert np.all(image[(slice(None), *box)].any(0).sum() == image.any(0).sum())  # and the brain
        assert meta["original_shape"] == list(label.shape) and cache.spacing(cid) == spacing
        assert meta["case_id"] == cid and set(meta["source_files"]) == {*MODALITIES, "seg"}
        assert np.asarray(meta["affine"]).shape == (4, 4)
        fg = cache.foreground(cid)
        assert fg.dtype == np.int32 and fg.shape == ((cache.label(cid) > 0).sum(), 3)
        assert np.all(np.asarray(cache.label(cid))[tuple(fg.T)] > 0)
        assert label[box].shape[0] < SYN_SHAPE[2] or label[box].shape[1] < SYN_SHAPE[1]  # really cropped


def test_cache_rebuilds_only_stale_cases(data_path: Path, tmp_path: Path) -> None:
    cases = discover_cases(data_path, "synthetic")[:2]
    cache = PreprocessedCache(tmp_path / "c", cases)
    cache.build(progress=False)
    assert cache.built_case_ids == ["BraTS2021_00000", "BraTS2021_00001"]
    stamp = (tmp_path / "c/BraTS2021_00000/image.npy").stat().st_mtime_ns
    again = PreprocessedCache(tmp_path / "c", cases)
    assert again.is_fresh("BraTS2021_00000") and again.build(progress=False) == []
    assert again.built_case_ids == []  # unchanged sources: nothing rebuilt
    assert (tmp_path / "c/BraTS2021_00000/image.npy").stat().st_mtime_ns == stamp
    flair = cases[1].image_paths["flair"]
    original = flair.stat()
    try:
        os.utime(flair, ns=(original.st_atime_ns, original.st_mtime_ns + 10**9))  # "touch" a source file
        assert not again.is_fresh("BraTS2021_00001")
        again.build(progress=False)
        assert again.built_case_ids == ["BraTS2021_00001"]
    finally:
        os.utime(flair, ns=(original.st_atime_ns, original.st_mtime_ns))
    assert not list((tmp_path / "c").glob(".tmp-*")) and not list((tmp_path / "c").glob(".old-*"))


def _build_in_process(cache_dir: str, data_path: str) -> list[str]:
    cache = PreprocessedCache(cache_dir, discover_cases(data_path, "synthetic"))
    cache.build(progress=False)
    return cache.built_case_ids


def test_concurrent_builds_build_each_case_once(data_path: Path, tmp_path: Path) -> None:
    with ProcessPoolExecutor(2) as pool:
        futures = [pool.submit(_build_in_process, str(tmp_path / "c"), str(data_path)) for _ in range(2)]
        built = [f.result() for f in futures]
    assert sorted(built[0] + built[1]) == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    cached = sorted(p.name for p in (tmp_path / "c").iterdir() if not p.name.startswith("."))
    assert cached == sorted(built[0] + built[1])


def test_parallel_build_equals_serial(cache: PreprocessedCache, data_path: Path, tmp_path: Path) -> None:
    parallel = PreprocessedCache(tmp_path / "p", discover_cases(data_path, "synthetic"))
    assert parallel.build(num_workers=2, progress=False) == []
    for cid in cache.case_ids:
        assert np.array_equal(parallel.image(cid), cache.image(cid))
    with pytest.raises(ValueError, match="num_workers"):
        parallel.build(num_workers=0)


def _bad_dataset(tmp_path: Path) -> Path:
    root = dataset_root(tmp_path, "brats2021")
    for i in range(3):
        write_case(root, f"BraTS2021_{i:05d}", "brats2021", (16, 16, 16))
    seg = np.zeros((16, 16, 16), np.uint8)
    seg[5, 5, 5] = 7
    write_nifti(seg, root / "BraTS2021_00001/BraTS2021_00001_seg.nii.gz")  # data error (labels)
    (root / "BraTS2021_00002/BraTS2021_00002_t2.nii.gz").unlink()  # header error (missing file)
    return tmp_path


def test_skip_bad_cases(tmp_path: Path) -> None:
    data = _bad_dataset(tmp_path)
    cache = PreprocessedCache(tmp_path / "cache", discover_cases(data, "brats2021"))
    errors = cache.build(progress=False, skip_bad_cases=True)
    assert [(e.case_id, e.path.name) for e in errors] == [
        ("BraTS2021_00001", "BraTS2021_00001_seg.nii.gz"), ("BraTS2021_00002", "BraTS2021_00002_t2.nii.gz")]
    assert cache.case_ids == ["BraTS2021_00000"] and cache.image("BraTS2021_00000").shape[0] == 4
    with pytest.raises(FileNotFoundError, match="build"):
        cache.image("BraTS2021_00001")


def test_bad_case_raises_without_skip(tmp_path: Path) -> None:
    data = _bad_dataset(tmp_path)
    cases = discover_cases(data, "brats2021")
    with pytest.raises(BadCaseError, match="BraTS2021_00002_t2.nii.gz"):  # header errors first, before building
        PreprocessedCache(tmp_path / "c1", cases).build(progress=False)
    assert not (tmp_path / "c1/BraTS2021_00000").exists()
    with pytest.raises(BadCaseError, match=r"BraTS2021_00001_seg\.nii\.gz"):  # data errors after the build
        PreprocessedCache(tmp_path / "c2", cases[:2]).build(progress=False)
    assert (tmp_path / "c2/BraTS2021_00000/image.npy").is_file()


# --------------------------------------------------------------------------- datasets

def test_modality_indices() -> None:
    assert modality_indices(("flair", "t1ce")) == [1, 3]
    assert modality_indices(MODALITIES) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="subset"):
        modality_indices(("t1c",))
    with pytest.raises(ValueError, match="duplicates"):
        modality_indices(("t1", "t1"))


def test_patch_shapes_channels_and_determinism(cache: PreprocessedCache) -> None:
    ds = PatchDataset(cache, cache.case_ids, ("flair", "t1ce"), (16, 24, 20), samples_per_epoch=40, seed=5)
    image, label = ds[7]
    assert image.shape == (2, 16, 24, 20) and image.dtype == torch.float32
    assert label.shape == (16, 24, 20) and label.dtype == torch.uint8
    again = PatchDataset(cache, cache.case_ids, ("t1ce", "flair"), (16, 24, 20), samples_per_epoch=40, seed=5)
    assert torch.equal(again[7][0], image) and torch.equal(again[7][1], label)
    ds.set_epoch(1)
    assert not torch.equal(ds[7][0], image)
    ds.set_epoch(0)
    assert torch.equal(ds[7][0], image)
    assert ds.sample(7).case_id == cache.case_ids[7 % 3]
    # Channels are t1ce then flair (canonical order), values from the cache.
    plain = PatchDataset(cache, cache.case_ids, ("flair", "t1ce"), (4, 4, 4), 10, fg_fraction=0.0, flips=False)
    spec = plain.sample(0)
    z, y, x = spec.start
    expected = np.asarray(cache.image(spec.case_id))[[1, 3], z:z + 4, y:y + 4, x:x + 4].astype(np.float32)
    np.testing.assert_array_equal(plain[0][0].numpy(), expected)
    with pytest.raises(ValueError, match="patch_size"):
        PatchDataset(cache, cache.case_ids, ("t1ce",), (16, 16), 10)
    with pytest.raises(ValueError, match="fg_fraction"):
        PatchDataset(cache, cache.case_ids, ("t1ce",), (8, 8, 8), 10, fg_fraction=1.5)


def test_voxel_sampling_fraction_and_centring(cache: PreprocessedCache) -> None:
    ds = PatchDataset(cache, cache.case_ids, ("t1ce",), (9, 9, 9), samples_per_epoch=900, flips=False, seed=2,
                      sampling="voxel")
    specs = [ds.sample(i) for i in range(len(ds))]
    fraction = np.mean([s.foreground for s in specs])
    assert abs(fraction - 1 / 3) < 5 * np.sqrt(2 / 9 / 900)  # binomial bound, 5 sigma
    for i in [i for i, s in enumerate(specs) if s.foreground][:20]:
        assert ds[i][1][4, 4, 4] > 0  # centred on a foreground voxel
    random_fg = np.mean([ds[i][1].any().item() for i, s in enumerate(specs[:60]) if not s.foreground])
    assert random_fg < 1.0
    # uniform over all tumour voxels: each class in proportion to its voxels
    voxels = np.array([s.voxel for s in specs if s.foreground])
    cid = cache.case_ids[0]
    ds0 = PatchDataset(cache, [cid], ("t1ce",), (9, 9, 9), 3000, seed=2, sampling="voxel", fg_fraction=1.0)
    classes = np.array([cache.label(cid)[ds0.sample(i).voxel] for i in range(3000)])
    counts = np.array(cache.class_voxels(cid)[1:], dtype=float)
    expected = counts / counts.sum()
    for c, p in enumerate(expected, start=1):
        assert abs(np.mean(classes == c) - p) < 5 * np.sqrt(p * (1 - p) / 3000)
    assert len(voxels) > 0


def test_nnunet_bounds_are_nnunets_get_bbox() -> None:
    from brats_data.datasets import nnunet_bounds

    # nnU-Net: need = 205 - 128 = 77, lb = -77 // 2 = -39, ub = 140 + 38 + 1 - 205 = -26: the 128 patch cut at
    # (205 - 128) // 2 = 38 from the region's start lies in [-1, 140 + 0]
    assert nnunet_bounds((140,), (205,), (128,)) == ([-39], [-26])
    assert nnunet_bounds((100, 20), (64, 64), (64, 64)) == ([0, -22], [36, -22])  # no enlargement; centred pad
    assert nnunet_bounds((1,), (1,), (1,)) == ([0], [0])


def test_nnunet_sampling_forces_the_last_third_of_each_batch(cache: PreprocessedCache) -> None:
    from brats_data.datasets import forced_foreground, nnunet_bounds

    assert [forced_foreground(j, 2) for j in range(2)] == [False, True]  # round(2 x 0.67) = 1
    assert [forced_foreground(j, 3) for j in range(3)] == [False, False, True]
    assert sum(forced_foreground(j, 12) for j in range(12)) == 4 and forced_foreground(11, 12)
    region, final = (16, 18, 14), (10, 12, 8)
    ds = PatchDataset(cache, cache.case_ids, ("t1ce",), region, samples_per_epoch=600, flips=False, seed=3,
                      final_patch=final, batch_size=2)
    for i in range(600):
        spec = ds.sample(i)
        shape = cache.label(spec.case_id).shape
        lbs, ubs = nnunet_bounds(shape, region, final)
        assert spec.foreground == (i % 2 == 1)  # position i % 2 of a batch of 2
        if spec.foreground:
            assert cache.label(spec.case_id)[spec.voxel] > 0
            assert spec.start == tuple(max(lb, v - r // 2) for lb, v, r in zip(lbs, spec.voxel, region))
        else:
            assert all(lb <= st <= ub for lb, st, ub in zip(lbs, spec.start, ubs))
            centre = [st + (r - p) // 2 for st, r, p in zip(spec.start, region, final)]
            assert all(-1 <= c and c + p <= s + 1 for c, p, s in zip(centre, final, shape))  # patch inside
    # an explicit position overrides index % batch_size
    assert ds.sample(0, 1).foreground and not ds.sample(1, 0).foreground
    image, label = ds[(0, 1)]
    spec = ds.sample(0, 1)
    assert label[tuple(v - st for v, st in zip(spec.voxel, spec.start))] > 0


def test_nnunet_sampling_chooses_a_class_or_region_uniformly(cache: PreprocessedCache) -> None:
    cid = cache.case_ids[0]
    voxels = cache.class_voxels(cid)
    assert all(v > 0 for v in voxels[1:])
    n = 3000
    ds = PatchDataset(cache, [cid], ("t1ce",), (8, 8, 8), n, seed=1, fg_fraction=1.0)
    classes = np.array([cache.label(cid)[ds.sample(i).voxel] for i in range(n)])
    for c in (1, 2, 3):  # each present class 1/3 of the time, whatever its size
        assert abs(np.mean(classes == c) - 1 / 3) < 5 * np.sqrt(2 / 9 / n)
    regions = ((1, 2, 3), (2, 3), (3,))
    ds = PatchDataset(cache, [cid], ("t1ce",), (8, 8, 8), n, seed=1, fg_fraction=1.0, fg_classes=regions)
    classes = np.array([cache.label(cid)[ds.sample(i).voxel] for i in range(n)])
    v1, v2, v3 = voxels[1:4]
    p3 = (1 + v3 / (v2 + v3) + v3 / (v1 + v2 + v3)) / 3  # a region, then a voxel uniformly in it
    assert abs(np.mean(classes == 3) - p3) < 5 * np.sqrt(p3 * (1 - p3) / n)
    # a class absent from the case is never chosen: regions holding only absent classes are skipped
    ds = PatchDataset(cache, [cid], ("t1ce",), (8, 8, 8), 200, seed=1, fg_classes=((3,), (7,)), fg_fraction=1.0)
    assert all(cache.label(cid)[ds.sample(i).voxel] == 3 for i in range(200))


def test_foreground_points_per_class_and_brain_mask(cache: PreprocessedCache) -> None:
    from scipy.ndimage import binary_fill_holes

    for cid in cache.case_ids:
        label, points = np.asarray(cache.label(cid)), cache.foreground(cid)
        counts = cache.foreground_points(cid)
        first = np.cumsum([0] + counts)
        for c in range(1, len(counts)):
            block = points[first[c]:first[c + 1]]
            assert len(block) == (label == c).sum() and np.all(label[tuple(block.T)] == c)
        mask = np.asarray(cache.mask(cid))
        assert mask.dtype == np.uint8 and mask.shape == label.shape
        assert np.array_equal(mask.astype(bool), binary_fill_holes((np.asarray(cache.image(cid)) != 0).any(0)))
    # the loader marks background outside the mask and outside the volume, never tumour
    from brats_data import OUTSIDE_LABEL

    cid = cache.case_ids[0]
    shape = cache.label(cid).shape
    region = tuple(s + 6 for s in shape)
    plain = PatchDataset(cache, [cid], ("t1",), region, 2, flips=False, fg_fraction=0.0)
    masked = PatchDataset(cache, [cid], ("t1",), region, 2, flips=False, fg_fraction=0.0, brain_mask=True)
    (image, label), (image_m, label_m) = plain[0], masked[0]
    assert torch.equal(image, image_m)
    inner = tuple(slice(3, 3 + s) for s in shape)
    inside = torch.zeros(region, dtype=torch.bool)
    inside[inner] = torch.from_numpy(np.asarray(cache.mask(cid)).astype(bool))
    assert torch.equal(label_m == OUTSIDE_LABEL, (label == 0) & ~inside)
    assert torch.equal(torch.where(label_m == OUTSIDE_LABEL, 0, label_m), label)
    assert (label_m == OUTSIDE_LABEL).any() and (label_m[inner] == OUTSIDE_LABEL).any()


def test_padding_beyond_the_volume(cache: PreprocessedCache) -> None:
    cid = cache.case_ids[0]
    shape = cache.label(cid).shape
    patch = tuple(s + 10 for s in shape)
    for sampling in ("voxel", "nnunet"):
        ds = PatchDataset(cache, [cid], MODALITIES, patch, 8, fg_fraction=0.0, flips=False, sampling=sampling)
        for i in range(4):
            image, label = ds[i]
            start = ds.sample(i).start
            assert all(-10 <= s <= 0 for s in start)
            if sampling == "nnunet":  # nnU-Net pads a small volume evenly
                assert start == (-5, -5, -5)
            inner = tuple(slice(-s, -s + n) for s, n in zip(start, shape))
            np.testing.assert_array_equal(image[(slice(None), *inner)].numpy(),
                                          np.asarray(cache.image(cid)).astype(np.float32))
            assert label[inner].numpy().tolist() == np.asarray(cache.label(cid)).tolist()
            outside = torch.ones(patch, dtype=torch.bool)
            outside[inner] = False
            assert not image[:, outside].any() and not label[outside].any()
    # A foreground-centred patch at the border is padded too, never shifted (the suite's earlier sampling).
    fg = PatchDataset(cache, [cid], ("t2",), (30, 30, 30), 50, fg_fraction=1.0, flips=False, sampling="voxel")
    assert all(fg[i][1][15, 15, 15] > 0 for i in range(10))


def test_flips_keep_image_and_label_aligned(cache: PreprocessedCache) -> None:
    kwargs = {"cache": cache, "case_ids": cache.case_ids, "modalities": ("t1", "flair"), "patch_size": (12, 14, 10),
              "samples_per_epoch": 30, "seed": 9}
    flipped, plain = PatchDataset(flips=True, **kwargs), PatchDataset(flips=False, **kwargs)
    seen = set()
    for i in range(30):
        axes = tuple(a for a, f in enumerate(flipped.sample(i).flips) if f)
        seen.add(axes)
        image, label = flipped[i]
        ref_image, ref_label = plain[i]
        assert torch.equal(image, torch.flip(ref_image, [a + 1 for a in axes]))
        assert torch.equal(label, torch.flip(ref_label, list(axes)))
        assert image.is_contiguous() and label.is_contiguous()
    assert len(seen) >= 5  # several flip combinations were drawn


def test_slice_dataset(cache: PreprocessedCache) -> None:
    ds = SliceDataset(cache, cache.case_ids, MODALITIES, (24, 28), samples_per_epoch=60, flips=False, seed=1)
    image, label = ds[0]
    assert image.shape == (4, 24, 28) and image.dtype == torch.float32
    assert label.shape == (24, 28) and label.dtype == torch.uint8
    for i in range(60):
        spec = ds.sample(i)
        assert 0 <= spec.start[0] < cache.label(spec.case_id).shape[0]
        if spec.foreground:  # the slice of the chosen voxel, which the region holds
            assert spec.start[0] == spec.voxel[0]
            assert ds[i][1][spec.voxel[1] - spec.start[1], spec.voxel[2] - spec.start[2]] > 0
    assert not any(SliceDataset(cache, cache.case_ids, ("t1",), (8, 8), 40, seed=3).sample(i).flips[0]
                   for i in range(40))  # never flipped along Z
    with pytest.raises(ValueError, match="2 positive sizes"):
        SliceDataset(cache, cache.case_ids, ("t1",), (8, 8, 8), 10)


def test_dataloader_workers_give_the_same_samples(cache: PreprocessedCache) -> None:
    ds = PatchDataset(cache, cache.case_ids, ("t1ce", "flair"), (8, 8, 8), samples_per_epoch=6, seed=4)
    serial = [ds[i] for i in range(6)]
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert torch.equal(images, torch.stack([s[0] for s in serial]))
    assert torch.equal(labels, torch.stack([s[1] for s in serial]))


@pytest.mark.parametrize("world", [1, 2])
def test_batch_positions_hold_with_workers_and_ranks(cache: PreprocessedCache, world: int) -> None:
    from torch.utils.data import DistributedSampler

    from brats_data import BatchPositionSampler

    batch, n = 2, 24
    ds = PatchDataset(cache, cache.case_ids, ("t1ce",), (12, 12, 12), samples_per_epoch=n, seed=4, flips=False,
                      final_patch=(8, 8, 8), batch_size=batch * world)
    forced = {}
    for rank in range(world):
        shards = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=4)
        sampler = BatchPositionSampler(shards, batch, rank)
        sampler.set_epoch(1)
        ds.set_epoch(1)
        keys = list(sampler)
        assert [p for _, p in keys] == [rank * batch + k % batch for k in range(len(keys))]
        serial = [ds[k] for k in keys]
        loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=2)
        batches = list(loader)
        assert torch.equal(torch.cat([b[1] for b in batches]), torch.stack([s[1] for s in serial]))
        for b in batches:  # global position 2 x world - 1 (the last of round(B x 0.33)) holds foreground
            forced[rank] = forced.get(rank, []) + [bool(b[1][-1].any())]
        specs = [ds.sample(*k) for k in keys]
        assert [s.foreground for s in specs] == [p == batch * world - 1 for _, p in keys]
    assert all(forced[world - 1])


def test_foreground_subsampling_is_even() -> None:
    from brats_data.cache import _subsample

    points = np.arange(30, dtype=np.int32).reshape(10, 3)
    assert _subsample(points, 20) is points
    assert _subsample(points, 4)[:, 0].tolist() == [0, 9, 18, 27]  # rows 0, 3, 6, 9


def test_set_epoch_reaches_persistent_workers(cache: PreprocessedCache) -> None:
    # Checked with multiprocessing_context="spawn" too (passes, but costs ~13 s of worker start-up).
    ds = PatchDataset(cache, cache.case_ids, ("flair",), (6, 6, 6), samples_per_epoch=4, seed=8)
    expected = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        expected[epoch] = torch.stack([ds[i][0] for i in range(4)])
    assert not torch.equal(expected[0], expected[1])
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        assert torch.equal(next(iter(loader))[0], expected[epoch])
    copy = pickle.loads(pickle.dumps(ds))  # plain pickling works and keeps a private epoch
    copy.set_epoch(5)
    assert (copy.epoch, ds.epoch) == (5, 0)
