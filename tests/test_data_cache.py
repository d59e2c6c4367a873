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


def test_foreground_fraction_and_centring(cache: PreprocessedCache) -> None:
    ds = PatchDataset(cache, cache.case_ids, ("t1ce",), (9, 9, 9), samples_per_epoch=900, flips=False, seed=2)
    specs = [ds.sample(i) for i in range(len(ds))]
    fraction = np.mean([s.foreground for s in specs])
    assert abs(fraction - 1 / 3) < 5 * np.sqrt(2 / 9 / 900)  # binomial bound, 5 sigma
    for i in [i for i, s in enumerate(specs) if s.foreground][:20]:
        assert ds[i][1][4, 4, 4] > 0  # centred on a foreground voxel
    random_fg = np.mean([ds[i][1].any().item() for i, s in enumerate(specs[:60]) if not s.foreground])
    assert random_fg < 1.0


def test_padding_beyond_the_volume(cache: PreprocessedCache) -> None:
    cid = cache.case_ids[0]
    shape = cache.label(cid).shape
    patch = tuple(s + 10 for s in shape)
    ds = PatchDataset(cache, [cid], MODALITIES, patch, 8, fg_fraction=0.0, flips=False)
    for i in range(4):
        image, label = ds[i]
        start = ds.sample(i).start
        assert all(-10 <= s <= 0 for s in start)
        inner = tuple(slice(-s, -s + n) for s, n in zip(start, shape))
        np.testing.assert_array_equal(image[(slice(None), *inner)].numpy(),
                                      np.asarray(cache.image(cid)).astype(np.float32))
        assert label[inner].numpy().tolist() == np.asarray(cache.label(cid)).tolist()
        outside = torch.ones(patch, dtype=torch.bool)
        outside[inner] = False
        assert not image[:, outside].any() and not label[outside].any()
    # A foreground-centred patch at the border is padded too, never shifted.
    fg = PatchDataset(cache, [cid], ("t2",), (30, 30, 30), 50, fg_fraction=1.0, flips=False)
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
        if spec.foreground:
            assert ds[i][1][12, 14] > 0
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
