"""Parity with nnU-Net v2's own code (``nnunetv2==2.8.1``, run in its environment: ``tests/nnunet_ref.py``).

- sampling: the share of training patches that hold each class, per batch position, equals that of
  ``nnUNetDataLoader`` over the same label arrays (class- and region-based), within a binomial interval;
- preprocessing: nnU-Net's crop to the non-zero region and z-scoring within its mask against the cache;
- inference: ``nnUNetPredictor`` and the suite's :class:`Predictor` with the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from brats_data import PatchDataset, PreprocessedCache, discover_cases, generate_synthetic_dataset
from tests.nnunet_ref import requires_nnunet, run_in_nnunet

pytestmark = requires_nnunet

SYN_SHAPE = (40, 44, 32)  # NIfTI (X, Y, Z)
REGION, FINAL, BATCH, N_BATCHES = (14, 12, 13), (8, 8, 8), 2, 2000
REGIONS = ((1, 2, 3), (2, 3), (3,))  # BraTS's WT, TC, ET in the suite's classes


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PreprocessedCache:
    root = tmp_path_factory.mktemp("parity")
    generate_synthetic_dataset(root / "data", n_cases=3, seed=1, shape=SYN_SHAPE)
    cache = PreprocessedCache(root / "cache", discover_cases(root / "data", "synthetic"))
    assert cache.build(progress=False) == []
    return cache


# --------------------------------------------------------------------------------------------- sampling
NNUNET_SAMPLING = """
import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.label_handling.label_handling import LabelManager

arrays = np.load(ARGS["labels"])
lo = [(r - p) // 2 for r, p in zip(ARGS["region"], ARGS["final"])]
centre = tuple(slice(a, a + p) for a, p in zip(lo, ARGS["final"]))
out = {}
for mode, groups in ARGS["groups"].items():
    groups = [tuple(g) if len(g) > 1 else g[0] for g in groups]
    if mode == "regions":
        labels = {"background": 0, **{f"r{i}": g for i, g in enumerate(groups)}}
        manager = LabelManager(labels, regions_class_order=[g if isinstance(g, int) else g[-1] for g in groups])
    else:
        manager = LabelManager({"background": 0, **{f"c{g}": g for g in groups}}, regions_class_order=None)

    class Cases:  # nnUNetBaseDataset's interface over the same label arrays the suite cached
        def __init__(self):
            self.identifiers = sorted(arrays.files)
            self.props = {k: {"class_locations": DefaultPreprocessor._sample_foreground_locations(
                arrays[k][None], groups, seed=1234)} for k in self.identifiers}
        def load_case(self, key):
            seg = arrays[key][None].astype(np.int16)
            return seg.astype(np.float32), seg, None, self.props[key]

    np.random.seed(ARGS["seed"])
    loader = nnUNetDataLoader(Cases(), ARGS["batch"], ARGS["region"], ARGS["final"], manager,
                              oversample_foreground_percent=0.33)
    counts = np.zeros((ARGS["batch"], len(ARGS["classes"])), dtype=int)
    for _ in range(ARGS["n_batches"]):
        seg = loader.generate_train_batch()["target"].numpy()[:, 0]
        for j in range(ARGS["batch"]):
            patch = seg[j][centre]
            counts[j] += [bool((patch == c).any()) for c in ARGS["classes"]]
    out[mode] = counts.tolist()
print(json.dumps(out))
"""


def suite_counts(cache: PreprocessedCache, sampling: str, fg_classes, classes) -> np.ndarray:
    """Patches (of N_BATCHES batches) holding each class, per batch position: the suite's dataset, the final
    patch cut from the centre of the loader's region as the augmentation does."""
    n = N_BATCHES * BATCH
    ds = PatchDataset(cache, cache.case_ids, ("t1",), REGION, n, flips=False, seed=0, sampling=sampling,
                      final_patch=FINAL, batch_size=BATCH, fg_classes=fg_classes)
    order = np.random.default_rng(0).permutation(n)  # as a shuffling sampler hands the indices out
    lo = [(r - p) // 2 for r, p in zip(REGION, FINAL)]
    centre = tuple(slice(a, a + p) for a, p in zip(lo, FINAL))
    counts = np.zeros((BATCH, len(classes)), dtype=int)
    for k, index in enumerate(order):
        position = k % BATCH
        patch = ds[(int(index), position)][1].numpy()[centre]
        counts[position] += [bool((patch == c).any()) for c in classes]
    return counts


def outside_interval(ours: np.ndarray, theirs: np.ndarray, n: int, family_alpha: float = 0.01) -> list:
    """The (position, class) cells whose shares differ by more than the two-sample binomial interval
    (normal approximation, pooled share, Bonferroni over the cells)."""
    z = norm.ppf(1 - family_alpha / (2 * ours.size))
    bad = []
    for cell in np.ndindex(ours.shape):
        p1, p2 = ours[cell] / n, theirs[cell] / n
        pooled = (p1 + p2) / 2
        half = z * np.sqrt(max(pooled * (1 - pooled), 1 / n) * 2 / n)
        if abs(p1 - p2) > half:
            bad.append((cell, round(p1, 4), round(p2, 4), round(half, 4)))
    return bad


CLASSES = (1, 2, 3)
GROUPS = {"classes": tuple((c,) for c in CLASSES), "regions": REGIONS}


@pytest.fixture(scope="module")
def nnunet_counts(cache: PreprocessedCache, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """nnUNetDataLoader's patches holding each class, per batch position, class- and region-based (one run)."""
    labels = tmp_path_factory.mktemp("labels") / "labels.npz"
    np.savez(labels, **{cid: np.asarray(cache.label(cid)) for cid in cache.case_ids})
    out = run_in_nnunet(NNUNET_SAMPLING, {
        "labels": str(labels), "groups": {k: [list(g) for g in v] for k, v in GROUPS.items()}, "seed": 0,
        "batch": BATCH, "region": list(REGION), "final": list(FINAL), "n_batches": N_BATCHES,
        "classes": list(CLASSES)})
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("mode", ["classes", "regions"])
def test_sampling_matches_nnunets_data_loader(cache: PreprocessedCache, nnunet_counts: dict, mode: str) -> None:
    theirs = nnunet_counts[mode]
    ours = suite_counts(cache, "nnunet", GROUPS[mode] if mode == "regions" else None, CLASSES)
    assert outside_interval(ours, theirs, N_BATCHES) == [], (ours.tolist(), theirs.tolist())
    if mode == "classes":  # the test has the power to see a different sampling:
        # the suite's earlier sampling (per-patch 1/3, a voxel over all tumour voxels, its bounds) fails it ...
        earlier = suite_counts(cache, "voxel", None, CLASSES)
        assert len(outside_interval(earlier, theirs, N_BATCHES)) >= 4, (earlier.tolist(), theirs.tolist())
        # ... and so does nnU-Net's batch rule with a voxel drawn over all tumour voxels instead of a class first
        by_voxel = suite_counts(cache, "nnunet", (CLASSES,), CLASSES)
        assert outside_interval(by_voxel, theirs, N_BATCHES), (by_voxel.tolist(), theirs.tolist())


# --------------------------------------------------------------------------------------------- preprocessing
NNUNET_PREPROCESSING = """
import numpy as np
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

raw = np.load(ARGS["raw"])
out, boxes = {}, {}
for key in ARGS["cases"]:
    # DefaultPreprocessor.run_case_npy: float32, crop to the non-zero region, then each channel z-scored within
    # seg >= 0 (use_mask_for_norm, as nnU-Net plans BraTS); resampling is the identity at BraTS's 1 mm
    data, seg, bbox = crop_to_nonzero(raw[key + "_img"].astype(np.float32), raw[key + "_seg"][None].astype(np.int16))
    for c in range(data.shape[0]):
        data[c] = ZScoreNormalization(use_mask_for_norm=True, intensityproperties={}).run(data[c], seg[0])
    out[key + "_img"], out[key + "_seg"] = data, seg
    boxes[key] = [[int(a), int(b)] for a, b in bbox]
np.savez(ARGS["out"], **out)
print(json.dumps(boxes))
"""


def nnunet_preprocessed(cache: PreprocessedCache, folder: Path) -> tuple[dict, dict]:
    """nnU-Net's preprocessing of the cache's cases from their source files: (boxes, arrays)."""
    from brats_data.cases import read_case

    raw = {}
    for cid in cache.case_ids:
        case = read_case(cache.cases[cid])
        raw[cid + "_img"], raw[cid + "_seg"] = case.image, case.label
    np.savez(folder / "raw.npz", **raw)
    boxes = run_in_nnunet(NNUNET_PREPROCESSING, {"raw": str(folder / "raw.npz"), "out": str(folder / "out.npz"),
                                                 "cases": cache.case_ids})
    return boxes, dict(np.load(folder / "out.npz"))


def test_preprocessing_matches_nnunets_crop_and_zscore(cache: PreprocessedCache, tmp_path: Path) -> None:
    """Same crop box and brain mask; the suite's z-scoring without its percentile clipping equals nnU-Net's to
    1e-5; the cache (clipped at the 0.5/99.5 percentiles, float16) differs by a measured, bounded amount."""
    from brats_data.cases import normalize_modality, read_case

    boxes, theirs = nnunet_preprocessed(cache, tmp_path)
    for cid in cache.case_ids:
        box = tuple(slice(a, b) for a, b in boxes[cid])
        assert [list(b) for b in cache.meta(cid)["bbox"]] == boxes[cid]
        ref, seg = theirs[cid + "_img"], theirs[cid + "_seg"][0]
        inside = seg >= 0
        assert np.array_equal(np.asarray(cache.mask(cid)).astype(bool), inside)  # no tumour outside the brain here
        raw = read_case(cache.cases[cid]).image[(slice(None), *box)]
        unclipped = np.stack([normalize_modality(v, percentiles=(0.0, 100.0)) for v in raw])
        np.testing.assert_allclose(unclipped, ref, rtol=0, atol=1e-5)
        cached = np.asarray(cache.image(cid)).astype(np.float32)
        diff = np.abs(cached - ref)
        assert not diff[:, ~inside].any()  # both 0 outside the brain
        clipped = np.stack([normalize_modality(v) for v in raw])
        # what remains is float16 rounding (half a unit in the last place, 2^-11 relative) ...
        assert np.all(np.abs(cached - clipped) <= np.abs(clipped) * 2.0 ** -11 + 2.0 ** -25)
        # ... and the clipping: voxels inside the percentiles get the affine map of nnU-Net's value given by the
        # clipped mean and std (a residual of float32 rounding), the tails are clipped
        for c in range(len(raw)):
            values = raw[c][inside]
            lo, hi = np.percentile(values[values != 0], [0.5, 99.5])
            within = inside & (raw[c] >= lo) & (raw[c] <= hi)
            a, b = np.polyfit(ref[c][within], clipped[c][within], 1)
            assert np.abs(a * ref[c][within] + b - clipped[c][within]).max() < 1e-4
            assert abs(a - 1) > 1e-3  # a real difference: the clipped std is smaller
            assert np.all(np.abs(clipped[c][inside & ~within]) < np.abs(ref[c][inside & ~within]) * a + abs(b) + 1e-4)


# --------------------------------------------------------------------------------------------- inference
NET_SOURCE = """
import torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet

def build_net(num_classes=4):
    # a small nnU-Net-style network, built the same way in both environments (same package version)
    return PlainConvUNet(4, 3, [8, 16, 32], nn.Conv3d, 3, [1, 2, 2], 2, num_classes, 2, conv_bias=True,
                         norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}).eval()
"""

NNUNET_INFERENCE = NET_SOURCE + """
import time
import types
from types import SimpleNamespace
import numpy as np
import nnunetv2.inference.predict_from_raw_data as pfr
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import LabelManager

torch.set_num_threads(1)
if ARGS.get("float32"):  # diagnosis only: nnU-Net's accumulators and Gaussian in float32 instead of float16
    class _Torch(types.ModuleType):
        half = torch.float32
        def __getattr__(self, name):
            return getattr(torch, name)
    pfr.torch = _Torch("torch")
    _gaussian = pfr.compute_gaussian
    pfr.compute_gaussian = lambda *a, **k: _gaussian(*a, **{**k, "dtype": torch.float32})
net = build_net()
state = torch.load(ARGS["weights"])
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                            perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
predictor.network, predictor.list_of_parameters = net, [state]
predictor.configuration_manager = SimpleNamespace(patch_size=list(ARGS["patch"]))
predictor.label_manager = LabelManager({"background": 0, "a": 1, "b": 2, "c": 3}, regions_class_order=None)
predictor.allowed_mirroring_axes = (0, 1, 2)
images = np.load(ARGS["images"])
out, seconds = {}, []
for rep in range(ARGS.get("repeats", 1)):
    for key in images.files:
        t0 = time.perf_counter()
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(images[key]))
        probs = predictor.label_manager.apply_inference_nonlin(logits)
        seconds.append(time.perf_counter() - t0)
        out[key] = probs.numpy()
np.savez(ARGS["out"], **out)
print(json.dumps({"seconds": seconds}))
"""


def build_net():
    namespace: dict = {}
    exec(NET_SOURCE, namespace)
    return namespace["build_net"]()


def parity_weights(path: Path) -> None:
    """Seeded weights with a sharpened last layer (logits of several units, so that the probabilities are not
    all near 1/4 and a difference shows)."""
    import torch

    torch.manual_seed(0)
    net = build_net()
    with torch.no_grad():
        last = net.decoder.seg_layers[-1]
        last.weight.mul_(30.0)
        last.bias.copy_(torch.tensor([0.5, -0.5, 0.2, -0.2]))
    torch.save(net.state_dict(), path)


def suite_probabilities(images: dict, weights: Path, patch, blending: str = "nnunet") -> tuple[dict, list]:
    import time

    import torch

    from inference.predictor import InferenceSettings, Predictor

    net = build_net()
    net.load_state_dict(torch.load(weights))
    settings = InferenceSettings("3d", tuple(patch), overlap=0.5, sw_batch_size=1, blending=blending, mirror=True)
    predictor = Predictor.from_model(net, None, settings)
    out, seconds = {}, []
    for key, image in images.items():
        t0 = time.perf_counter()
        out[key] = predictor.probabilities(image).numpy()
        seconds.append(time.perf_counter() - t0)
    return out, seconds


INFER_PATCH = (32, 24, 24)  # Z larger than the cases' crops (25-28): padding; several tiles along Y and X


def test_inference_matches_nnunet_predictor(cache: PreprocessedCache, tmp_path: Path) -> None:
    """Same weights, sliding window with step 0.5, Gaussian, mirroring on all axes, 3 cases: the suite's Predictor
    with ``blending="nnunet"`` equals nnUNetPredictor's probabilities to 1e-4 when nnU-Net's float16 accumulators
    (logits, Gaussian weights) are float32, the only change. As nnU-Net ships them, their float16 rounding (weighted
    logits in float16 subnormals where the summed Gaussian weight is small: tile borders, padded axes) differs by a
    measured amount; the suite's MONAI-based Gaussian mode differs more."""
    weights, images_file = tmp_path / "net.pt", tmp_path / "images.npz"
    parity_weights(weights)
    images = {cid: np.asarray(cache.image(cid)).astype(np.float32) for cid in cache.case_ids}
    np.savez(images_file, **images)
    ours, _ = suite_probabilities(images, weights, INFER_PATCH)
    diffs = {}
    for label, fp32 in (("float32", True), ("shipped", False)):
        run_in_nnunet(NNUNET_INFERENCE, {"weights": str(weights), "images": str(images_file), "patch": INFER_PATCH,
                                         "out": str(tmp_path / f"{label}.npz"), "float32": fp32})
        theirs = np.load(tmp_path / f"{label}.npz")
        diffs[label] = np.concatenate([np.abs(ours[k] - theirs[k]).max(0).ravel() for k in images])
    spread = max(float(np.ptp(p, axis=0).max()) for p in ours.values())
    assert spread > 0.5, spread  # the probabilities really vary across classes
    assert diffs["float32"].max() < 1e-4, diffs["float32"].max()
    shipped = diffs["shipped"]
    assert shipped.max() < 0.25 and np.mean(shipped > 1e-3) < 0.05, (shipped.max(), np.mean(shipped > 1e-3))
    theirs = np.load(tmp_path / "shipped.npz")
    monai, _ = suite_probabilities(images, weights, INFER_PATCH, blending="gaussian")
    monai_diff = np.concatenate([np.abs(monai[k] - theirs[k]).max(0).ravel() for k in images])
    assert np.mean(monai_diff > 1e-3) > 2 * np.mean(shipped > 1e-3)
