"""The ``nnunet`` augmentation (training.augmentation): geometry, alignment, intensity statistics, seeding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.augmentation import (
    NNUNET_PARAMS,
    BatchAugmentation,
    _blur_kernel,
    contrast_,
    gamma_,
    gaussian_blur_,
    loader_patch_size,
    low_resolution_,
    make_params,
    rotation_matrix,
    sampling_grid,
    spatial_transform,
)

PATCH = (16, 16, 16)
OFF = {key: 0.0 for key in NNUNET_PARAMS if key.startswith("p_")}  # every per-sample probability


def params(**overrides) -> dict:
    """Everything off, then ``overrides``."""
    return make_params({**OFF, **overrides})


def centre_crop(x: torch.Tensor, patch) -> torch.Tensor:
    dims = len(patch)
    sl = tuple(slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(x.shape[-dims:], patch))
    return x[(Ellipsis, *sl)]


def smooth_field(shape, seed: int = 0, sigma: float = 2.0) -> torch.Tensor:
    """A smooth random field (blurred white noise), so that a threshold of it has large regions."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    for b in range(shape[0]):
        for c in range(shape[1]):
            gaussian_blur_(x[b, c], [sigma] * (len(shape) - 2))
    return x / x.std()


def batch(shape=(2, 2, 24, 24, 24), seed: int = 0, labels=(0, 1, 2, 3)):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(shape, generator=gen)
    label = torch.as_tensor(labels)[torch.randint(0, len(labels), (shape[0], *shape[2:]), generator=gen)]
    return image, label


# ------------------------------------------------------------------------------------------------ parameters
def test_params_are_nnunet_v2_defaults_and_json():
    p = NNUNET_PARAMS
    assert (p["p_rotation"], p["rotation_deg"], p["p_scaling"], p["scaling"]) == (0.2, [-30.0, 30.0], 0.2, [0.7, 1.4])
    assert (p["p_noise"], p["noise_std"], p["p_blur"], p["blur_p_per_channel"], p["blur_sigma"]) == \
        (0.1, [0.0, 0.1], 0.2, 0.5, [0.5, 1.0])
    assert (p["p_brightness"], p["brightness"], p["p_contrast"], p["contrast"]) == (0.15, [0.75, 1.25], 0.15,
                                                                                    [0.75, 1.25])
    assert (p["p_lowres"], p["lowres_p_per_channel"], p["lowres_zoom"]) == (0.25, 0.5, [0.5, 1.0])
    assert (p["p_gamma_inverted"], p["p_gamma"], p["gamma"], p["p_mirror"]) == (0.1, 0.3, [0.7, 1.5], 0.5)
    assert json.loads(json.dumps(p)) == p == make_params()
    with pytest.raises(ValueError, match="unknown"):
        make_params({"p_elastic": 0.1})
    with pytest.raises(ValueError, match="probability"):
        make_params({"p_noise": 1.5})
    with pytest.raises(ValueError, match="low <= high"):
        make_params({"scaling": [1.4, 0.7]})


def test_draw_frequencies_and_ranges_follow_the_parameters():
    aug = BatchAugmentation(PATCH)
    d = aug.draw(20000, 2, epoch=0, step=0)
    tol = 0.012
    assert abs(d.rotated.mean() - 0.2) < tol and abs(d.scaled.mean() - 0.2) < tol
    assert abs(d.mirror.mean() - 0.5) < tol
    assert abs((~np.isnan(d.noise_std)).mean() - 0.1) < tol
    assert abs((~np.isnan(d.blur_sigma[..., 0])).mean() - 0.1) < tol  # 0.2 per sample x 0.5 per channel
    assert abs((~np.isnan(d.brightness)).mean() - 0.15) < tol
    assert abs((~np.isnan(d.contrast)).mean() - 0.15) < tol
    assert abs((~np.isnan(d.lowres_zoom)).mean() - 0.125) < tol
    assert abs((~np.isnan(d.gamma_inverted)).mean() - 0.1) < tol
    assert abs((~np.isnan(d.gamma)).mean() - 0.3) < tol
    # brightness, contrast, gamma: per channel (channels drawn apart), half below 1 (nnU-Net's BGContrast)
    for values, (low, high) in ((d.brightness, (0.75, 1.25)), (d.contrast, (0.75, 1.25)), (d.gamma, (0.7, 1.5))):
        v = values[~np.isnan(values)]
        assert low <= v.min() and v.max() <= high and abs((v < 1).mean() - 0.5) < 0.03
    both = ~np.isnan(d.brightness).any(1)
    assert not np.allclose(d.brightness[both, 0], d.brightness[both, 1])
    # noise: one std per sample in [0, 0.1]; blur sigma per axis in [0.5, 1]; scale shared by all axes
    assert np.nanmin(d.noise_std) >= 0 and np.nanmax(d.noise_std) <= 0.1
    assert np.nanmin(d.blur_sigma) >= 0.5 and np.nanmax(d.blur_sigma) <= 1.0
    only_scaled = d.scaled & ~d.rotated
    diag = np.abs(np.diagonal(d.matrix[only_scaled], axis1=1, axis2=2))
    assert np.allclose(diag, diag[:, :1]) and 0.7 <= diag.min() and diag.max() <= 1.4
    # rotated and not scaled: orthogonal matrices with angles up to 30 degrees about each axis
    m = d.matrix[d.rotated & ~d.scaled]
    assert np.allclose(m @ m.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    untouched = ~(d.rotated | d.scaled)
    assert np.array_equal(np.abs(d.matrix[untouched]), np.broadcast_to(np.eye(3), d.matrix[untouched].shape))


# ------------------------------------------------------------------------------------------------ loader region
def test_loader_patch_size_covers_every_draw_and_matches_nnunet_heuristic():
    for patch in [(16, 16, 16), (128, 128, 128), (96, 160, 128)]:
        region = loader_patch_size(patch)
        assert all(r >= p and (r - p) % 2 == 0 for r, p in zip(region, patch))
        aug = BatchAugmentation(patch, make_params({"p_rotation": 1.0, "p_scaling": 1.0}))
        d = aug.draw(4000, 1, epoch=0, step=0)
        half = (np.array(patch) - 1) / 2
        corners = [rotation_matrix(np.radians(a)) * 1.4 for a in np.array(np.meshgrid(*[[-30, 0, 30]] * 3)).reshape(
            3, -1).T]
        mats = np.concatenate([d.matrix, np.stack(corners)])
        reach = 2 * (np.abs(mats) * half).sum(-1).max(0)  # the largest extent read, centre to centre
        assert np.all(reach <= np.array(region) - 1), (patch, region, reach)
        assert np.all(np.array(region) - 1 - reach <= 6), (patch, region, reach)  # and not much larger
    assert loader_patch_size((128, 128, 128)) == (304, 310, 304)
    assert loader_patch_size((16, 16, 16), params()) == (16, 16, 16)  # nothing spatial: the patch itself
    assert loader_patch_size((128, 128, 128), cover="nnunet") == (205, 205, 205)


def test_nnunet_cover_is_nnunet_get_patch_size():
    utils = pytest.importorskip("batchgenerators.augmentations.utils")

    def get_patch_size(final_patch_size, rot, scale_range=(0.85, 1.25)):  # nnunetv2 compute_initial_patch_size
        rot = min(90 / 360 * 2.0 * np.pi, rot)
        coords = np.array(final_patch_size)
        final_shape = np.copy(coords)
        if len(coords) == 3:
            for angles in ((rot, 0, 0), (0, rot, 0), (0, 0, rot)):
                final_shape = np.max(np.vstack((np.abs(utils.rotate_coords_3d(coords, *angles)), final_shape)), 0)
        else:
            final_shape = np.max(np.vstack((np.abs(utils.rotate_coords_2d(coords, rot)), final_shape)), 0)
        return tuple(int(v) for v in final_shape / min(scale_range))

    for patch in [(128, 128, 128), (96, 160, 128), (64, 192, 160)]:
        assert loader_patch_size(patch, cover="nnunet") == get_patch_size(patch, math.radians(30))
    for patch in [(224, 192), (512, 256)]:
        rot = 180 if max(patch) / min(patch) <= 1.5 else 15
        assert loader_patch_size(patch, cover="nnunet") == get_patch_size(patch, math.radians(rot))


def test_no_artificial_border_with_the_full_region_and_some_with_nnunets():
    extreme = params(p_rotation=1.0, rotation_deg=[[30, 30], [-30, -30], [30, 30]], p_scaling=1.0,
                     scaling=[1.4, 1.4])
    for cover, expect_border in (("full", False), ("nnunet", True)):
        region = loader_patch_size(PATCH, cover=cover)
        ones = torch.ones((1, 1, *region))
        out, _ = BatchAugmentation(PATCH, extreme)(ones, torch.zeros((1, *region), dtype=torch.int64), epoch=0,
                                                   step=0)
        assert bool((out < 1 - 1e-5).any()) == expect_border, cover
    region = loader_patch_size(PATCH)
    ones = torch.ones((4, 1, *region))
    aug = BatchAugmentation(PATCH, params(p_rotation=1.0, p_scaling=1.0, p_mirror=0.5))
    for step in range(5):
        out, _ = aug(ones, torch.zeros((4, *region), dtype=torch.int64), epoch=0, step=step)
        assert torch.allclose(out, torch.ones_like(out), atol=1e-5)


# ------------------------------------------------------------------------------------------------ geometry
def test_sampling_grid_equals_affine_grid():
    rng = np.random.default_rng(0)
    for patch, box in (((16, 12, 14), (30, 26, 21)), ((12, 10), (23, 20))):
        dims = len(patch)
        mats = rng.normal(size=(3, dims, dims))
        centre = (np.array(box) - 1) / 2 + rng.normal(size=dims)
        theta = torch.zeros((3, dims, dims + 1), dtype=torch.float64)
        rev = list(range(dims))[::-1]  # affine_grid works in (x, y, z) order, normalised coordinates
        scale = np.array(patch)[None, :] / np.array(box)[:, None]
        theta[:, :, :dims] = torch.as_tensor((mats * scale[None])[:, rev][:, :, rev])
        theta[:, :, dims] = torch.as_tensor(((2 * centre + 1) / np.array(box) - 1)[rev])
        ref = F.affine_grid(theta, (3, 1, *patch), align_corners=False)
        assert torch.allclose(sampling_grid(mats, centre, box, patch), ref.float(), atol=2e-6)


@pytest.mark.parametrize("region", [(24, 24, 24), (25, 24, 23), (16, 16, 16)])
def test_zero_strength_spatial_is_the_centre_crop(region):
    image, label = batch((3, 2, *region))
    out, lab = BatchAugmentation(PATCH, params())(image, label, epoch=0, step=0)
    assert torch.equal(out, centre_crop(image, PATCH)) and torch.equal(lab, centre_crop(label, PATCH))
    # rotation 0 and scale 1 forced through the sampler: still exactly the crop
    forced = params(p_rotation=1.0, rotation_deg=[0, 0], p_scaling=1.0, scaling=[1.0, 1.0])
    out, lab = BatchAugmentation(PATCH, forced)(image, label, epoch=0, step=0)
    assert torch.equal(out, centre_crop(image, PATCH)) and torch.equal(lab, centre_crop(label, PATCH))
    # the resampling path itself, at the identity: the crop (image up to rounding, labels exactly)
    shape = np.array(region)
    start = (shape - np.array(PATCH)) // 2
    grid = sampling_grid(np.eye(3)[None].repeat(3, 0), start + (np.array(PATCH) - 1) / 2, shape, PATCH)
    warped = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
    nearest = F.grid_sample(label[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
    assert torch.allclose(warped, centre_crop(image, PATCH), atol=1e-5)
    assert torch.equal(nearest, centre_crop(label, PATCH))


@pytest.mark.parametrize("batched", [False, True])
def test_rotation_by_90_degrees_is_rot90(batched):
    image, label = batch((2, 2, *PATCH))
    # +90 degrees about axis a reads input offset R @ o: about axis 0 that is rot90 by -1 in the plane (1, 2), ...
    cases = [((90, 0, 0), -1, (1, 2)), ((0, 90, 0), 1, (0, 2)), ((0, 0, 90), -1, (0, 1))]
    for angles, k, plane in cases:
        m = np.repeat(rotation_matrix(np.radians(angles))[None], 2, 0)
        out, lab = spatial_transform(image, label, PATCH, m, batched=batched)
        assert torch.allclose(out, torch.rot90(image, k, [d + 2 for d in plane]), atol=1e-5), angles
        assert torch.equal(lab, torch.rot90(label, k, [d + 1 for d in plane])), angles
        # the same through the augmentation, the angle forced by the parameters
        ranges = [[a, a] for a in angles]
        aug = BatchAugmentation(PATCH, params(p_rotation=1.0, rotation_deg=ranges))
        out2, lab2 = aug(image, label, epoch=0, step=0)
        assert torch.allclose(out2, out, atol=1e-5) and torch.equal(lab2, lab)
        # with mirroring on every axis as well: nnU-Net mirrors the rotated patch
        aug = BatchAugmentation(PATCH, params(p_rotation=1.0, rotation_deg=ranges, p_mirror=1.0))
        out3, lab3 = aug(image, label, epoch=0, step=0)
        assert torch.allclose(out3, out.flip([2, 3, 4]), atol=1e-5) and torch.equal(lab3, lab.flip([1, 2, 3]))
    # 2D: the in-plane rotation
    image2, label2 = image[:, :, 0], label[:, 0]
    aug = BatchAugmentation(PATCH[:2], params(p_rotation=1.0, rotation_deg_2d=[90, 90]))
    out, lab = aug(image2, label2, epoch=0, step=0)
    assert torch.allclose(out, torch.rot90(image2, -1, [2, 3]), atol=1e-5)
    assert torch.equal(lab, torch.rot90(label2, -1, [1, 2]))


def test_mirroring_flips_every_axis():
    image, label = batch((2, 2, 24, 24, 24))
    out, lab = BatchAugmentation(PATCH, params(p_mirror=1.0))(image, label, epoch=0, step=0)
    assert torch.equal(out, centre_crop(image, PATCH).flip([2, 3, 4]))
    assert torch.equal(lab, centre_crop(label, PATCH).flip([1, 2, 3]))


def test_image_and_label_stay_aligned():
    region = loader_patch_size(PATCH)
    field = smooth_field((4, 1, *region), seed=1, sigma=3.0)
    label = (field[:, 0] > 0.3).long()
    image = torch.cat([field, label[:, None].float()], 1)  # channel 1: the label map as an image
    aug = BatchAugmentation(PATCH, params(p_rotation=1.0, p_scaling=1.0, p_mirror=0.5))
    for step in range(3):
        out, lab = aug(image, label, epoch=0, step=step)
        assert not torch.equal(lab, centre_crop(label, PATCH))  # really moved
        # the label derived from the augmented image: the same up to interpolation at the boundaries ...
        agree = ((out[:, 1] > 0.5).long() == lab).float().mean()
        assert agree > 0.97, agree
        # ... where a misalignment by one voxel on any axis would show
        for axis in (1, 2, 3):
            assert ((out[:, 1] > 0.5).long() == lab.roll(1, axis)).float().mean() < 0.92
        # exactly: the image resampled nearest on the same grids gives the same labels
        d = aug.draw(4, 2, epoch=0, step=step)
        start = (np.array(region) - np.array(PATCH)) // 2
        grid = sampling_grid(d.matrix, start + (np.array(PATCH) - 1) / 2, region, PATCH)
        nearest = F.grid_sample(field, grid, mode="nearest", align_corners=False)[:, 0]
        assert torch.equal((nearest > 0.3).long(), lab)


def test_batched_and_per_sample_resampling_agree_and_inputs_are_untouched():
    region = loader_patch_size(PATCH)
    image, label = batch((4, 2, *region), labels=(0, 2, 5, 7))
    before = image.clone(), label.clone()
    aug = BatchAugmentation(PATCH, params(p_rotation=0.5, p_scaling=0.5, p_mirror=0.5))
    for step in range(3):
        m = aug.draw(4, 2, epoch=0, step=step).matrix
        a = spatial_transform(image, label, PATCH, m, batched=True)
        b = spatial_transform(image, label, PATCH, m, batched=False)
        assert torch.allclose(a[0], b[0], atol=1e-4) and torch.equal(a[1], b[1])  # boxes differ: rounding
    assert torch.equal(image, before[0]) and torch.equal(label, before[1])


def test_labels_only_take_values_of_the_input():
    region = loader_patch_size(PATCH)
    image, label = batch((4, 2, *region), labels=(0, 2, 5, 7))
    aug = BatchAugmentation(PATCH)
    big = BatchAugmentation(PATCH, params(p_rotation=1.0, p_scaling=1.0))
    for step in range(4):
        for a in (aug, big):
            _, lab = a(image, label, epoch=0, step=step)
            assert set(lab.unique().tolist()) <= {0, 2, 5, 7}


# ------------------------------------------------------------------------------------------------ intensity
def test_multiplicative_brightness_scales_the_mean():
    image = torch.rand((2, 2, *PATCH)) + 0.5
    label = torch.zeros((2, *PATCH), dtype=torch.int64)
    out, _ = BatchAugmentation(PATCH, params(p_brightness=1.0, brightness=[1.2, 1.2]))(image, label, epoch=0, step=0)
    assert torch.allclose(out.mean((2, 3, 4)), 1.2 * image.mean((2, 3, 4)), rtol=1e-5)
    assert torch.allclose(out, 1.2 * image, rtol=1e-6)


def test_contrast_keeps_the_mean_and_scales_deviations():
    x = torch.randn(PATCH, generator=torch.Generator().manual_seed(0))
    y = contrast_(x.clone(), 0.8)
    assert torch.allclose(y.mean(), x.mean(), atol=1e-6)
    assert torch.allclose(y - y.mean(), 0.8 * (x - x.mean()), atol=1e-5)
    z = contrast_(x.clone(), 1.25)  # stretched beyond the range: clipped to it (preserve_range)
    assert z.min() >= x.min() and z.max() <= x.max()
    inside = (1.25 * (x - x.mean()) + x.mean()).abs() < min(-x.min(), x.max()) * 0.9
    assert torch.allclose((z - x.mean())[inside], 1.25 * (x - x.mean())[inside], atol=1e-5)
    # through the augmentation: contrast 1.2 forced on every channel
    image = torch.randn((2, 2, *PATCH))
    out, _ = BatchAugmentation(PATCH, params(p_contrast=1.0, contrast=[1.2, 1.2]))(
        image, torch.zeros((2, *PATCH), dtype=torch.int64), epoch=0, step=0)
    ref = image.clone()
    for b in range(2):
        for c in range(2):
            contrast_(ref[b, c], 1.2)
    assert torch.allclose(out, ref)


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_retains_mean_and_std(invert):
    x = torch.randn(PATCH, generator=torch.Generator().manual_seed(1)) * 2 + 3
    for g in (0.7, 1.5):
        y = gamma_(x.clone(), g, invert)
        assert torch.allclose(y.mean(), x.mean(), atol=1e-4) and torch.allclose(y.std(), x.std(), atol=1e-4)
        assert (y - x).abs().max() > 0.1  # but changed
    # known answer without the noise of a random image: a uniform ramp in [0, 1]
    ramp = torch.linspace(0, 1, 4096).reshape(16, 16, 16)
    y = gamma_(ramp.clone(), 2.0, False)
    expected = ramp ** 2
    expected = (expected - expected.mean()) * ramp.std() / expected.std() + ramp.mean()
    assert torch.allclose(y, expected, atol=1e-5)
    inverted = gamma_(ramp.clone(), 2.0, True)  # the same on -ramp (min -1, range 1), negated back
    xp = (1 - ramp) ** 2 - 1
    expected = -((xp - xp.mean()) * ramp.std() / xp.std() - ramp.mean())
    assert torch.allclose(inverted, expected, atol=1e-5)


def _intensity_reference(image: torch.Tensor, d) -> torch.Tensor:
    """The intensity part of draws ``d`` applied one sample and one channel at a time, with the draws of that sample
    and channel, in nnU-Net's order (noise aside: no noise drawn)."""
    assert np.isnan(d.noise_std).all()
    ref = image.clone()
    for b in range(image.shape[0]):
        for c in range(image.shape[1]):
            x = ref[b, c]
            if not np.isnan(d.blur_sigma[b, c, 0]):
                gaussian_blur_(x, d.blur_sigma[b, c])
            if not np.isnan(d.brightness[b, c]):
                x.mul_(float(d.brightness[b, c]))
            if not np.isnan(d.contrast[b, c]):
                contrast_(x, float(d.contrast[b, c]))
            if not np.isnan(d.lowres_zoom[b, c]):
                low_resolution_(x, float(d.lowres_zoom[b, c]))
            if not np.isnan(d.gamma_inverted[b, c]):
                gamma_(x, float(d.gamma_inverted[b, c]), invert=True)
            if not np.isnan(d.gamma[b, c]):
                gamma_(x, float(d.gamma[b, c]), invert=False)
    return ref


def test_intensity_transforms_apply_each_samples_and_channels_own_draws():
    """Random draws (not forced constants): every sample and channel gets its own transforms with its own values,
    inverted gamma on the negated channel and gamma on the channel itself."""
    gen = torch.Generator().manual_seed(5)
    image = torch.exp(torch.randn((6, 2, *PATCH), generator=gen))  # skewed: gamma and inverted gamma differ
    label = torch.zeros((6, *PATCH), dtype=torch.int64)
    half = {key: 0.5 for key in ("p_blur", "p_brightness", "p_contrast", "p_lowres", "p_gamma_inverted", "p_gamma")}
    aug = BatchAugmentation(PATCH, params(**half))
    seen = {key: set() for key in ("blur_sigma", "brightness", "contrast", "lowres_zoom", "gamma_inverted", "gamma")}
    for step in range(3):
        d = aug.draw(6, 2, epoch=0, step=step)
        out, lab = aug(image, label, epoch=0, step=step)
        assert torch.allclose(out, _intensity_reference(image, d), rtol=1e-4, atol=1e-4), step
        assert torch.equal(lab, label)
        for key in seen:
            values = getattr(d, key)[..., 0] if key == "blur_sigma" else getattr(d, key)
            seen[key] |= {round(float(v), 6) for v in values.flatten()}
    # the draws did differ between samples/channels (applied or not, and the values): the test can tell them apart
    for key, values in seen.items():
        assert any(math.isnan(v) for v in values) and len([v for v in values if not math.isnan(v)]) >= 3, key
    # known answers: inverted gamma alone is gamma of the negated channel, gamma alone that of the channel
    for key, invert in (("p_gamma_inverted", True), ("p_gamma", False)):
        out, _ = BatchAugmentation(PATCH, params(**{key: 1.0}, gamma=[1.5, 1.5]))(image, label, epoch=0, step=0)
        ref = image.clone()
        other = image.clone()
        for b in range(6):
            for c in range(2):
                gamma_(ref[b, c], 1.5, invert)
                gamma_(other[b, c], 1.5, not invert)
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), key
        assert (out - other).abs().max() > 0.1, key


def test_gaussian_noise_adds_the_expected_variance():
    image = torch.zeros((4, 2, 24, 24, 24))
    aug = BatchAugmentation((24, 24, 24), params(p_noise=1.0, noise_std=[0.1, 0.1]))
    out, _ = aug(image, torch.zeros((4, 24, 24, 24), dtype=torch.int64), epoch=0, step=0)
    var = out.var((2, 3, 4))
    assert torch.all((var - 0.01).abs() < 0.001), var  # 13824 voxels: the estimate is within ~1.2% (1 sd)
    assert out.mean().abs() < 0.002
    # one independent field per sample and per channel (nnU-Net draws torch.normal over each sample's (C, ...)):
    # the correlation of two independent fields of 13824 voxels is ~N(0, 0.0085); one shared field gives 1
    fields = out.flatten(2)
    corr = torch.corrcoef(fields.flatten(0, 1))
    off_diagonal = corr[~torch.eye(8, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.05, corr
    # the per-sample standard deviation is each sample's own draw: fixed stds 0.1 ... 0.1 vs a draw in [0, 0.1]
    aug = BatchAugmentation((24, 24, 24), params(p_noise=0.5, noise_std=[0.0, 0.1]))
    for step in range(2):
        d = aug.draw(4, 2, epoch=0, step=step)
        out, _ = aug(image, torch.zeros((4, 24, 24, 24), dtype=torch.int64), epoch=0, step=step)
        expected = np.nan_to_num(d.noise_std, nan=0.0)
        assert np.allclose(out.std((1, 2, 3, 4)).numpy(), expected, rtol=0.03, atol=1e-7), (expected, step)


def test_gaussian_blur_lowers_white_noise_variance_by_the_kernels_factor():
    x = torch.randn((48, 48, 48), generator=torch.Generator().manual_seed(0))
    for sigma in (0.5, 0.75, 1.0):
        y = gaussian_blur_(x.clone(), [sigma] * 3)[4:-4, 4:-4, 4:-4]  # away from the reflected border
        kernel = np.array(_blur_kernel(sigma))
        factor = float((kernel ** 2).sum()) ** 3  # var(sum w_i e_i) = sum w_i^2, per axis
        assert abs(y.var().item() / factor - 1) < 0.05, (sigma, y.var().item(), factor)
    # the kernel is a sampled Gaussian: for sigma 1, sum w^2 is close to the continuous 1 / (2 sqrt(pi) sigma)
    assert abs((np.array(_blur_kernel(1.0)) ** 2).sum() * 2 * math.sqrt(math.pi) - 1) < 0.02
    assert [len(_blur_kernel(s)) for s in (0.5, 0.6, 0.75, 0.9, 1.0)] == [3, 5, 5, 5, 7]  # nnU-Net's rounding
    # separable, one sigma per axis: a centred impulse becomes the outer product of the three kernels
    impulse = torch.zeros((9, 9, 9))
    impulse[4, 4, 4] = 1.0
    sigmas = (1.0, 0.5, 0.75)
    kernels = [np.pad(_blur_kernel(s), (9 - len(_blur_kernel(s))) // 2) for s in sigmas]
    expected = torch.as_tensor(np.einsum("i,j,k->ijk", *kernels), dtype=torch.float32)
    assert torch.allclose(gaussian_blur_(impulse, sigmas), expected, atol=1e-7)


def test_low_resolution():
    x = torch.randn(PATCH)
    assert torch.equal(low_resolution_(x.clone(), 1.0), x)
    checker = (torch.arange(16)[:, None, None] + torch.arange(16)[None, :, None] + torch.arange(16)) % 2
    y = low_resolution_(checker.float(), 0.5)  # nearest-exact keeps every second voxel: one value -> constant
    assert torch.all(y == y.flatten()[0])
    # a ramp: every second sample kept, linear back up: the ramp shifted by half a voxel (clamped at the ends)
    ramp = torch.arange(16.0).expand(16, 16, 16).clone()
    y = low_resolution_(ramp, 0.5)
    assert torch.allclose(y[..., 1:-1], torch.arange(1.5, 15.0).expand(16, 16, 14))


# ------------------------------------------------------------------------------------------------ seeding, shapes
def test_seeding_same_batch_for_same_key_different_otherwise():
    image, label = batch((4, 2, 24, 24, 24))
    a, b = BatchAugmentation(PATCH, seed=3), BatchAugmentation(PATCH, seed=3)
    ref = a(image, label, epoch=1, step=2, rank=0)
    again = b(image, label, epoch=1, step=2, rank=0)
    assert torch.equal(ref[0], again[0]) and torch.equal(ref[1], again[1])
    for other in (dict(epoch=1, step=2, rank=1), dict(epoch=1, step=3, rank=0), dict(epoch=2, step=2, rank=0)):
        out = a(image, label, **other)
        assert not torch.equal(out[0], ref[0]), other
    assert not torch.equal(BatchAugmentation(PATCH, seed=4)(image, label, epoch=1, step=2)[0], ref[0])
    # noise too: same key, same noise field
    noisy = BatchAugmentation(PATCH, params(p_noise=1.0))
    n1 = noisy(image, label, epoch=0, step=0)[0]
    assert torch.equal(n1, noisy(image, label, epoch=0, step=0)[0])
    assert not torch.equal(n1, noisy(image, label, epoch=0, step=0, rank=1)[0])
    with pytest.raises(ValueError):
        a(image, label, epoch=-1, step=0)


@pytest.mark.parametrize("patch,region", [(PATCH, (24, 22, 20)), ((16, 12), (24, 20))])
def test_output_shapes_dtypes_and_device(patch, region):
    image, label = batch((2, 3, *region))
    for step in range(3):
        out, lab = BatchAugmentation(patch)(image, label, epoch=0, step=step)
        assert out.shape == (2, 3, *patch) and out.dtype == torch.float32 and out.device == image.device
        assert lab.shape == (2, *patch) and lab.dtype == torch.int64 and lab.device == image.device
        assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="smaller"):
        BatchAugmentation(patch)(image[..., :4], label[..., :4], epoch=0, step=0)


def test_every_transform_at_probability_one_runs_in_2d_and_3d():
    on = {key: 1.0 for key in OFF}
    for patch, region in ((PATCH, loader_patch_size(PATCH)), ((16, 16), loader_patch_size((16, 16)))):
        image = smooth_field((2, 2, *region))
        label = (image[:, 0] > 0).long()
        out, lab = BatchAugmentation(patch, make_params(on))(image, label, epoch=0, step=0)
        assert out.shape == (2, 2, *patch) and torch.isfinite(out).all() and set(lab.unique().tolist()) <= {0, 1}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_noise():
    region = loader_patch_size(PATCH)
    image = smooth_field((4, 2, *region))
    label = (image[:, 0] > 0.2).long()
    aug = BatchAugmentation(PATCH, make_params({"p_noise": 0.0, "p_rotation": 0.5, "p_scaling": 0.5, "p_blur": 0.5,
                                                "p_gamma": 0.5, "p_lowres": 0.5, "p_contrast": 0.5}))
    for step in range(4):
        cpu = aug(image, label, epoch=0, step=step)
        gpu = aug(image.cuda(), label.cuda(), epoch=0, step=step)
        assert gpu[0].device.type == "cuda" and gpu[1].dtype == torch.int64
        assert torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-3)
        assert (gpu[1].cpu() == cpu[1]).float().mean() > 0.999
    noisy = BatchAugmentation(PATCH, make_params({"p_noise": 1.0}))
    a = noisy(image.cuda(), label.cuda(), epoch=0, step=0)[0]
    assert torch.equal(a, noisy(image.cuda(), label.cuda(), epoch=0, step=0)[0])


# ------------------------------------------------------------------------------------------------ in the trainer
def test_the_trainer_augments_each_batch_with_its_epoch_step_and_rank(monkeypatch):
    """UnitTrainer.train_epoch: batch k of epoch e on rank r is augmented as BatchAugmentation(..., epoch=e, step=k,
    rank=r), and the network is fed exactly that batch."""
    from types import SimpleNamespace

    from experiment.config import ExperimentConfig
    from training.trainer import UnitTrainer

    region = (20, 20, 20)
    batches = [batch((2, 2, *region), seed=s) for s in range(3)]

    class Loader(list):
        sampler = dataset = SimpleNamespace(set_epoch=lambda epoch: None)

    aug = BatchAugmentation(PATCH, params(p_rotation=0.5, p_mirror=0.5, p_noise=0.5, p_brightness=0.5), seed=7)
    calls, fed = [], []

    class Recording(BatchAugmentation):
        def __call__(self, image, label, *, epoch, step, rank=0):
            calls.append((epoch, step, rank))
            return super().__call__(image, label, epoch=epoch, step=step, rank=rank)

    trainer = UnitTrainer.__new__(UnitTrainer)
    model = torch.nn.Conv3d(2, 2, 1)
    model.register_forward_hook(lambda module, inputs, output: fed.append(inputs[0].detach().clone()))
    trainer.cfg = ExperimentConfig(dim="3d", patch_size=list(PATCH), epochs=5, device="cpu")
    trainer.device, trainer.model, trainer.train_module, trainer.unit = torch.device("cpu"), model, model, "u"
    trainer.ctx = SimpleNamespace(rank=3, world_size=4, is_main=False)
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=False)
    trainer.autocast = lambda: torch.autocast("cpu", enabled=False)
    trainer.loss_fn = lambda logits, label: logits.float().mean()
    trainer.on_progress, trainer.augment = None, Recording(PATCH, aug.params, seed=7)
    for epoch in (2, 4):
        calls.clear()
        fed.clear()
        trainer.train_epoch(Loader(batches), epoch)
        assert calls == [(epoch, k, 3) for k in range(3)]
        for k, (image, label) in enumerate(batches):
            expected, _ = aug(image, label, epoch=epoch, step=k, rank=3)
            assert torch.equal(fed[k], expected), (epoch, k)
            assert not torch.equal(fed[k], aug(image, label, epoch=epoch, step=k, rank=0)[0]), (epoch, k)


def test_image_is_zero_outside_the_brain_mask_after_augmentation():
    """nnU-Net: MaskImageTransform (image 0 where seg -1, after every other transform), then seg -1 -> 0; the
    mask travels as a label value through the same spatial transform as the image."""
    outside = 255
    region = loader_patch_size(PATCH)
    field = smooth_field((3, 2, *region), seed=2, sigma=3.0)
    tumour = (field[:, 0] > 1.0).long()
    brain = field[:, 1] > -0.5
    label = torch.where(brain | (tumour > 0), tumour, torch.full_like(tumour, outside))
    image = field + 5.0  # non-zero everywhere, also after noise, brightness and contrast
    aug = BatchAugmentation(PATCH, params(p_rotation=1.0, p_scaling=1.0, p_mirror=0.5, p_noise=1.0,
                                          p_brightness=1.0, p_contrast=1.0), outside_label=outside)
    plain = BatchAugmentation(PATCH, aug.params)
    for step in range(2):
        out, lab = aug(image, label, epoch=0, step=step)
        ref, ref_lab = plain(image, label, epoch=0, step=step)
        gone = ref_lab == outside  # where the transformed mask says "outside"
        assert gone.any() and (~gone).any()
        assert not (lab == outside).any() and torch.equal(lab, torch.where(gone, 0, ref_lab))
        assert torch.equal(out, torch.where(gone[:, None], 0.0, ref))  # every channel, nothing else touched
        assert (out[~gone[:, None].expand_as(out)] != 0).all()
