"""nnU-Net v2's training augmentation, batched on the device (``--augmentation nnunet``).

:class:`BatchAugmentation` takes a training batch on the device, the loader's larger region
(:func:`loader_patch_size`), and returns the augmented training patch: one resampling of the whole batch for the
spatial part (rotation, scaling and mirroring, labels resampled nearest), then the intensity transforms per sample
and per channel, with nnU-Net v2's probabilities and ranges (:data:`NNUNET_PARAMS`).

Why torch primitives: no library applies nnU-Net's transforms to a whole batch on the GPU with per-sample draws.
batchgeneratorsv2 (nnU-Net's own) works on one sample at a time on the CPU, in loader processes; MONAI's ``Rand*d``
transforms are per sample too (one draw per call, a Python loop over the batch); neither draws per sample and per
channel with nnU-Net's two-sided factor distributions. The transforms here are a few dozen lines of
``grid_sample``/``interpolate``/elementwise ops, and run unchanged on CPU and CUDA.

Parameters, against ``nnUNetTrainer.get_training_transforms`` (nnunetv2 2.8.1, batchgeneratorsv2 0.3.6):

=====================  ===============================  =========================================================
key                    value                            nnU-Net v2 (3D full-resolution, isotropic patch)
=====================  ===============================  =========================================================
p_rotation             0.2 per sample                   SpatialTransform p_rotation=0.2
rotation_deg           [-30, 30], each of the 3 axes    rotation_for_DA (-30°, 30°), p_rot_per_axis=1
rotation_deg_2d        [-180, 180] (2D patches)         2D: ±180°, or ±15° when max/min side > 1.5
rotation_deg_2d_elong  [-15, 15]                        (see above)
p_scaling              0.2 per sample                   p_scaling=0.2
scaling                [0.7, 1.4], same on all axes     scaling=(0.7, 1.4), p_synchronize_scaling_across_axes=1
p_noise                0.1 per sample                   RandomTransform(GaussianNoiseTransform, 0.1)
noise_std              [0, 0.1], one per sample         noise_variance=(0, 0.1), synchronize_channels=True
p_blur                 0.2 per sample                   RandomTransform(GaussianBlurTransform, 0.2)
blur_p_per_channel     0.5                              p_per_channel=0.5
blur_sigma             [0.5, 1], per channel and axis   blur_sigma=(0.5, 1), synchronize_channels/axes=False
p_brightness           0.15 per sample                  RandomTransform(MultiplicativeBrightnessTransform, 0.15)
brightness             [0.75, 1.25] two-sided, per ch.  BGContrast((0.75, 1.25)), synchronize_channels=False
p_contrast             0.15 per sample                  RandomTransform(ContrastTransform, 0.15)
contrast               [0.75, 1.25] two-sided, per ch.  BGContrast((0.75, 1.25)), preserve_range=True
p_lowres               0.25 per sample                  RandomTransform(SimulateLowResolutionTransform, 0.25)
lowres_p_per_channel   0.5                              p_per_channel=0.5
lowres_zoom            [0.5, 1], per channel            scale=(0.5, 1), synchronize_axes=True
p_gamma_inverted       0.1 per sample                   RandomTransform(GammaTransform(p_invert_image=1), 0.1)
p_gamma                0.3 per sample                   RandomTransform(GammaTransform(p_invert_image=0), 0.3)
gamma                  [0.7, 1.5] two-sided, per ch.    BGContrast((0.7, 1.5)), p_retain_stats=1
p_mirror               0.5 per spatial axis             MirrorTransform(allowed_axes=all spatial axes)
=====================  ===============================  =========================================================

(``rotation_deg_2d_elong`` is spelled ``rotation_deg_2d_elongated``.) Semantics follow nnU-Net: the transforms
run in the order of the table (spatial, noise, blur, brightness, contrast, low resolution, inverted gamma, gamma,
mirror); "two-sided" factors are drawn as batchgeneratorsv2's ``BGContrast`` does (with probability 1/2 uniform
in [low, 1], else uniform in [1, high]); a scale s > 1 samples a region s times larger (objects get smaller);
the rotation matrix is ``Rz @ Ry @ Rx @ S`` as batchgeneratorsv2's ``create_affine_matrix_3d`` builds it;
contrast keeps each channel's mean and clips to its former range; gamma maps a channel to [0, 1] by its range,
raises it to gamma, maps back, then restores the channel's mean and standard deviation (inverted: the same on the
negated channel); low resolution downsamples by the zoom (nearest-exact) and upsamples back (bi/trilinear); the
blur kernel is nnU-Net's (sampled Gaussian truncated as ``_build_kernel(sigma, truncate=6)`` does, odd size
3-7, reflect padding). Per-channel statistics are taken over the whole patch, as nnU-Net does.

Differences from nnU-Net v2, all deliberate:

- Labels are resampled nearest (exact label values). batchgeneratorsv2 0.3.x interpolates each label's indicator
  linearly and takes the arg-max (ties to the nearest neighbour): the two differ on some boundary voxels of
  rotated/scaled samples only.
- nnU-Net's parameter is called ``noise_variance`` but the value drawn from (0, 0.1) is used as the standard
  deviation (batchgenerators v1 and v2 alike): so here it is named ``noise_std``; the added variance is its square.
- Mirroring is folded into the resampling matrix of rotated/scaled samples and done by ``flip`` for the others,
  before the intensity transforms. nnU-Net mirrors last; every transform in between commutes with a flip except
  the noise field (flipped with it: the same distribution) and the voxels low resolution keeps (mirrored
  positions: a sub-voxel difference).
- The loader region: :func:`loader_patch_size` (``cover="full"``) is large enough for the extreme draw (scale 1.4
  and every combination of angles), so no sample ever reads padding it would not have read from the full volume.
  nnU-Net's ``get_patch_size`` (``cover="nnunet"``: 205^3 for a 128^3 patch, against 304x310x304) is a heuristic
  that does not cover scale > 1/0.85 with rotation; there nnU-Net pads with image 0 and label 0, as this module
  does outside the region it is given.
- Centre: the patch is cropped from voxel ``(S - P) // 2`` of a region of size S, and resampled around the centre
  of that crop. nnU-Net crops from ``floor(S / 2) - P // 2`` (one voxel further when S is even and P odd) and
  resamples around the region's centre (S - 1) / 2 (half a voxel away when S - P is odd). With ``cover="full"``
  S - P is even and the three agree.
- Random numbers come from torch generators seeded by (seed, epoch, step, rank) (see :class:`BatchAugmentation`),
  not from numpy's global state: the same distributions, other realisations.
- Not here: nnU-Net's "dummy 2D" augmentation of strongly anisotropic 3D patches (max side / first side > 3; BraTS
  patches are isotropic), and the steps that are not augmentations (region conversion, deep-supervision targets,
  masking), which the trainer does.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NNUNET_PARAMS: dict = {
    "p_rotation": 0.2,
    "rotation_deg": [-30.0, 30.0],
    "rotation_deg_2d": [-180.0, 180.0],
    "rotation_deg_2d_elongated": [-15.0, 15.0],
    "p_scaling": 0.2,
    "scaling": [0.7, 1.4],
    "p_noise": 0.1,
    "noise_std": [0.0, 0.1],
    "p_blur": 0.2,
    "blur_p_per_channel": 0.5,
    "blur_sigma": [0.5, 1.0],
    "p_brightness": 0.15,
    "brightness": [0.75, 1.25],
    "p_contrast": 0.15,
    "contrast": [0.75, 1.25],
    "p_lowres": 0.25,
    "lowres_p_per_channel": 0.5,
    "lowres_zoom": [0.5, 1.0],
    "p_gamma_inverted": 0.1,
    "p_gamma": 0.3,
    "gamma": [0.7, 1.5],
    "p_mirror": 0.5,
}

_PROBABILITIES = ("p_rotation", "p_scaling", "p_noise", "p_blur", "blur_p_per_channel", "p_brightness",
                  "p_contrast", "p_lowres", "lowres_p_per_channel", "p_gamma_inverted", "p_gamma", "p_mirror")
_POSITIVE_RANGES = ("scaling", "noise_std", "blur_sigma", "brightness", "contrast", "lowres_zoom", "gamma")
_ANGLE_RANGES = ("rotation_deg", "rotation_deg_2d", "rotation_deg_2d_elongated")
ELONGATED_2D = 1.5  # nnU-Net: a 2D patch whose longer side exceeds 1.5 x the shorter rotates by ±15° only


def _pair(name: str, value: object) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"augmentation parameter {name!r} must be [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"augmentation parameter {name!r} must be finite with low <= high, got {value!r}")
    return low, high


def make_params(overrides: dict | None = None) -> dict:
    """NNUNET_PARAMS with ``overrides`` applied, checked (unknown keys, probabilities in [0, 1], ranges low <= high,
    positive where a factor or a width). ``rotation_deg`` may also be one [low, high] per axis (3 pairs), which
    fixes or restricts each axis separately. Returns a new dict of plain (JSON-able) values."""
    params = {key: (list(value) if isinstance(value, (list, tuple)) else value) for key, value in NNUNET_PARAMS.items()}
    unknown = sorted(set(overrides or {}) - set(NNUNET_PARAMS))
    if unknown:
        raise ValueError(f"unknown augmentation parameter(s) {unknown}; known: {sorted(NNUNET_PARAMS)}")
    for key, value in (overrides or {}).items():
        params[key] = [list(v) if isinstance(v, (list, tuple)) else v for v in value] \
            if isinstance(value, (list, tuple)) else value
    for key in _PROBABILITIES:
        p = params[key]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation probability {key!r} must be in [0, 1], got {p!r}")
        params[key] = float(p)
    for key in _POSITIVE_RANGES:
        low, high = _pair(key, params[key])
        if low < 0 or (key != "noise_std" and low <= 0):
            raise ValueError(f"augmentation range {key!r} must be positive, got {params[key]!r}")
        params[key] = [low, high]
    rot = params["rotation_deg"]
    if isinstance(rot, list) and len(rot) == 3 and all(isinstance(r, list) for r in rot):
        params["rotation_deg"] = [list(_pair("rotation_deg", r)) for r in rot]
    else:
        params["rotation_deg"] = list(_pair("rotation_deg", rot))
    for key in _ANGLE_RANGES[1:]:
        params[key] = list(_pair(key, params[key]))
    return params


def _angle_ranges(patch: Sequence[int], params: dict) -> list[tuple[float, float]]:
    """Rotation range in degrees per rotation axis: 3 (about axes 0, 1, 2) in 3D, 1 (in-plane) in 2D."""
    if len(patch) == 3:
        rot = params["rotation_deg"]
        return [tuple(r) for r in rot] if isinstance(rot[0], list) else [tuple(rot)] * 3
    elongated = max(patch) / min(patch) > ELONGATED_2D
    return [tuple(params["rotation_deg_2d_elongated" if elongated else "rotation_deg_2d"])]


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """batchgeneratorsv2's rotation: ``Rz @ Ry @ Rx`` in 3D (Rx rotates about array axis 0, i.e. in the plane
    of axes 1 and 2, and so on), the in-plane rotation in 2D. Matrices act on column vectors of array-axis
    offsets: an output voxel at offset o from the patch centre reads the input at offset ``M @ o``."""
    if len(angles_rad) == 1:
        c, s = math.cos(angles_rad[0]), math.sin(angles_rad[0])
        return np.array([[c, -s], [s, c]])
    (cx, sx), (cy, sy), (cz, sz) = ((math.cos(a), math.sin(a)) for a in angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """Vectorised :func:`rotation_matrix` for angles (N, 1) or (N, 3) in radians -> (N, D, D)."""
    c, s = np.cos(angles), np.sin(angles)
    n = angles.shape[0]
    if angles.shape[1] == 1:
        return np.stack([np.stack([c[:, 0], -s[:, 0]], -1), np.stack([s[:, 0], c[:, 0]], -1)], 1)
    one, zero = np.ones(n), np.zeros(n)

    def mat(rows):
        return np.stack([np.stack(r, -1) for r in rows], 1)

    rx = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    ry = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rz = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


@functools.lru_cache(maxsize=64)
def _max_row_extent(ranges_rad: tuple[tuple[float, float], ...], patch: tuple[int, ...]) -> tuple[float, ...]:
    """max over the angle box of sum_j |R_ij| half_j per axis i, half = (patch - 1) / 2 (the half-extent of the
    rotated patch), found by a grid search refined around its best points (smooth between the kinks of |.|)."""
    half = (np.array(patch, dtype=float) - 1.0) / 2.0
    dims = len(half)
    best = np.zeros(dims)
    for i in range(dims):
        lows = np.array([r[0] for r in ranges_rad])
        highs = np.array([r[1] for r in ranges_rad])
        steps = (highs - lows) / 24.0
        axes = [np.linspace(lo, hi, 25) if hi > lo else np.array([lo]) for lo, hi in zip(lows, highs)]
        points = np.array(list(itertools.product(*axes)))
        for _ in range(12):  # around the 4 best points, +-1 spacing at 1/3 of the spacing: 3^-12 of it at the end
            values = (np.abs(_rotation_matrices(points)[:, i, :]) * half).sum(-1)
            top = points[np.argsort(values)[-4:]]
            best[i] = max(best[i], float(values.max()))
            offsets = np.array(list(itertools.product(*[np.linspace(-s, s, 7) if s > 0 else [0.0] for s in steps])))
            points = np.clip((top[:, None, :] + offsets[None]).reshape(-1, len(ranges_rad)), lows, highs)
            steps = steps / 3.0
    return tuple(float(b) for b in best)


def loader_patch_size(patch: Sequence[int], params: dict = NNUNET_PARAMS, *, cover: str = "full") -> tuple[int, ...]:
    """The larger region the loader must crop (Z, Y, X in 3D; Y, X in 2D) so that the rotated/scaled patch taken
    from its centre has no artificial border (nnU-Net's get_patch_size idea); at least ``patch``.

    ``cover="full"``: every draw of ``params`` (largest scale with every combination of angles in the box) reads
    inside the region, bilinear neighbours included, with a margin of one voxel; the region minus the patch is even
    on every axis, so the patch sits exactly in its centre. 128^3 with nnU-Net's parameters -> 304x310x304.
    ``cover="nnunet"``: nnU-Net v2's own ``get_patch_size`` (rotation by the largest angle about one axis at a time,
    divided by 0.85, nnU-Net's hard-coded scale bound; ``params`` gives the angles only) -> 205^3 for 128^3, 3.4x
    fewer voxels, but strongly scaled and rotated draws then read padding (zeros) near the patch corners, as in
    nnU-Net."""
    patch = tuple(int(p) for p in patch)
    if len(patch) not in (2, 3) or min(patch) < 1:
        raise ValueError(f"patch must be 2 or 3 positive sizes, got {patch}")
    params = make_params(params)
    ranges = [(math.radians(lo), math.radians(hi)) for lo, hi in _angle_ranges(patch, params)]
    if params["p_rotation"] == 0:
        ranges = [(0.0, 0.0)] * len(ranges)
    if cover == "nnunet":
        rot = [min(max(abs(lo), abs(hi)), math.pi / 2) for lo, hi in ranges]
        coords = np.array(patch, dtype=float)
        shape = coords.copy()
        rotations = [rotation_matrix([r]) for r in rot] if len(patch) == 2 else \
            [rotation_matrix([a if k == axis else 0.0 for k in range(3)]) for axis, a in enumerate(rot)]
        for m in rotations:  # batchgenerators' rotate_coords_*: the row vector times the matrix
            shape = np.maximum(shape, np.abs(coords @ m))
        return tuple(max(int(s), p) for s, p in zip(shape / 0.85, patch))
    if cover != "full":
        raise ValueError(f"cover must be 'full' or 'nnunet', got {cover!r}")
    if params["p_rotation"] == 0 and params["p_scaling"] == 0:
        return patch  # never resampled: the patch is cropped
    scale = max(1.0, params["scaling"][1]) if params["p_scaling"] > 0 else 1.0
    extent = np.array(_max_row_extent(tuple(ranges), patch)) * scale
    out = []
    for h, p in zip(extent, patch):
        size = max(p, math.ceil(2.0 * h - 1e-9) + 1 + 2)  # coordinates in [c - h, c + h] plus one voxel each side
        out.append(size + (size - p) % 2)
    return tuple(out)


@dataclass
class Draws:
    """The random parameters of one batch (host numpy arrays; NaN = transform not applied to that sample/channel).

    ``matrix`` (B, D, D) maps output offsets to input offsets (rotation @ scaling @ mirroring); ``rotated`` and
    ``scaled`` (B,) say whether the sample drew them; ``mirror`` (B, D) the mirrored axes; ``noise_std`` (B,);
    ``blur_sigma`` (B, C, D); ``brightness``, ``contrast``, ``lowres_zoom``, ``gamma_inverted``, ``gamma`` (B, C)."""

    matrix: np.ndarray
    rotated: np.ndarray
    scaled: np.ndarray
    mirror: np.ndarray
    noise_std: np.ndarray
    blur_sigma: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    lowres_zoom: np.ndarray
    gamma_inverted: np.ndarray
    gamma: np.ndarray


class _Columns:
    """Hands out consecutive columns of a (B, K) table of uniforms, so that every draw has a fixed place."""

    def __init__(self, table: np.ndarray):
        self.table, self.pos = table, 0

    def take(self, n: int) -> np.ndarray:
        out = self.table[:, self.pos:self.pos + n]
        self.pos += n
        return out


def _uniform(u: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    return bounds[0] + u * (bounds[1] - bounds[0])


def _two_sided(side: np.ndarray, u: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    """batchgeneratorsv2's BGContrast: with probability 1/2 (and low < 1) uniform in [low, 1], else in
    [max(low, 1), high]."""
    low, high = bounds
    below = _uniform(u, (low, 1.0))
    above = _uniform(u, (max(low, 1.0), high))
    return np.where((side < 0.5) & (low < 1.0), below, above)


def _n_columns(dims: int, channels: int) -> int:
    n_angles = 3 if dims == 3 else 1
    spatial = 1 + n_angles + 2 + dims
    per_channel = (1 + dims) + 2 + 2 + 2 + 2 + 2  # blur, brightness, contrast, low-res, gamma (inv), gamma
    return spatial + 2 + 6 + channels * per_channel


def draw_parameters(uniforms: np.ndarray, patch: Sequence[int], channels: int, params: dict) -> Draws:
    """Turn a (B, K) table of uniforms in [0, 1) into the batch's parameters. Column layout (fixed, whatever is
    drawn): spatial, then per transform its per-sample column, then its per-channel columns."""
    dims = len(patch)
    batch = uniforms.shape[0]
    cols = _Columns(uniforms)
    ranges = _angle_ranges(patch, params)

    rotated = cols.take(1)[:, 0] < params["p_rotation"]
    angles = np.stack([_uniform(u, np.radians(r)) for u, r in zip(cols.take(len(ranges)).T, ranges)], 1)
    angles[~rotated] = 0.0
    scaled = cols.take(1)[:, 0] < params["p_scaling"]
    scale = np.where(scaled, _uniform(cols.take(1)[:, 0], params["scaling"]), 1.0)
    mirror = cols.take(dims) < params["p_mirror"]
    signs = np.where(mirror, -1.0, 1.0)
    matrix = np.zeros((batch, dims, dims))
    matrix[:, range(dims), range(dims)] = signs  # not rotated, not scaled: exactly the mirroring
    moved = rotated | scaled
    if moved.any():
        rot = _rotation_matrices(angles[moved])
        matrix[moved] = rot * (scale[moved, None, None] * signs[moved, None, :])  # R @ S @ F, S and F diagonal

    def per_sample(key: str) -> np.ndarray:
        return cols.take(1)[:, 0] < params[key]

    do_noise = per_sample("p_noise")
    noise = _uniform(cols.take(1)[:, 0], params["noise_std"])
    do_blur, do_bright, do_contrast = per_sample("p_blur"), per_sample("p_brightness"), per_sample("p_contrast")
    do_lowres, do_ginv, do_gamma = per_sample("p_lowres"), per_sample("p_gamma_inverted"), per_sample("p_gamma")

    nan = np.full((batch, channels), np.nan)
    blur = np.full((batch, channels, dims), np.nan)
    bright, contrast, lowres, ginv, gamma = (nan.copy() for _ in range(5))
    for c in range(channels):
        u = cols.take(1 + dims)
        apply = do_blur & (u[:, 0] < params["blur_p_per_channel"])
        blur[apply, c] = _uniform(u[apply, 1:], params["blur_sigma"])
        side, u = cols.take(2).T
        bright[do_bright, c] = _two_sided(side, u, params["brightness"])[do_bright]
        side, u = cols.take(2).T
        contrast[do_contrast, c] = _two_sided(side, u, params["contrast"])[do_contrast]
        apply, u = cols.take(2).T
        apply = do_lowres & (apply < params["lowres_p_per_channel"])
        lowres[apply, c] = _uniform(u, params["lowres_zoom"])[apply]
        side, u = cols.take(2).T
        ginv[do_ginv, c] = _two_sided(side, u, params["gamma"])[do_ginv]
        side, u = cols.take(2).T
        gamma[do_gamma, c] = _two_sided(side, u, params["gamma"])[do_gamma]
    assert cols.pos == uniforms.shape[1] == _n_columns(dims, channels)
    return Draws(matrix=matrix, rotated=rotated, scaled=scaled, mirror=mirror,
                 noise_std=np.where(do_noise, noise, np.nan), blur_sigma=blur, brightness=bright, contrast=contrast,
                 lowres_zoom=lowres, gamma_inverted=ginv, gamma=gamma)


# ---------------------------------------------------------------------------------------------- spatial part
def _to_device(array: np.ndarray, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A small host array on ``device``; to CUDA through pinned memory without blocking, so that augmenting a batch
    never waits for the GPU work already queued (a pageable copy would synchronise the stream)."""
    tensor = torch.as_tensor(array, dtype=dtype)
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def sampling_grid(matrix: np.ndarray, centre: Sequence[float], in_shape: Sequence[int], patch: Sequence[int],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``grid_sample`` grid (N, *patch, D), align_corners=False, of output voxels o (offsets from the patch
    centre) read at input voxel coordinates ``centre + matrix[n] @ offset``; what ``F.affine_grid`` gives for the
    equivalent ``theta``, built as a sum of one broadcast vector per output axis (9x faster than affine_grid's
    matmul over a (P^3, 4) base grid on a CPU core, identical up to float rounding; see the tests)."""
    n, dims = matrix.shape[0], len(patch)
    in_shape = np.asarray(in_shape, dtype=float)
    coef = _to_device(2.0 * matrix / in_shape[None, :, None], torch.float32, device)
    const = (2.0 * np.asarray(centre, dtype=float) + 1.0) / in_shape - 1.0
    offsets = [torch.arange(p, dtype=torch.float32, device=device) - (p - 1) / 2.0 for p in patch]
    grid = torch.empty((n, *patch, dims), dtype=torch.float32, device=device)
    for comp in range(dims):
        axis = dims - 1 - comp  # grid_sample's components are (x, y, z): the last array axis first
        total = None
        for j in range(dims):
            shape = [1] * (dims + 1)
            shape[1 + j] = patch[j]
            term = coef[:, axis, j].view(n, *[1] * dims) * offsets[j].view(shape)
            total = term + float(const[axis]) if total is None else total + term
        grid[..., comp] = total
    return grid


def spatial_transform(image: torch.Tensor, label: torch.Tensor, patch: Sequence[int], matrix: np.ndarray, *,
                      batched: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the patch from the centre of each sample's region, reading output offset o at input offset
    ``matrix[b] @ o`` from the crop centre (voxel ``(S - P) // 2 + (P - 1) / 2`` on each axis).

    Samples whose matrix is a pure mirroring (diagonal of ±1) are cropped and flipped, exactly. All others are
    resampled (bilinear for the image, nearest for the labels, zero outside the input) from the bounding box of what
    they read: ``batched`` (default: on CUDA) by one ``grid_sample`` over all of them, else by one per sample on views
    of the input, which spares a CPU core the copy of their boxes into one tensor (same values). Returns new tensors;
    the inputs are not touched."""
    dims = len(patch)
    batch, channels = image.shape[:2]
    shape = image.shape[2:]
    device = image.device
    start = [(s - p) // 2 for s, p in zip(shape, patch)]
    centre = np.array([st + (p - 1) / 2.0 for st, p in zip(start, patch)])
    out_image = torch.empty((batch, channels, *patch), dtype=image.dtype, device=device)
    out_label = torch.empty((batch, *patch), dtype=torch.int64, device=device)

    pure = np.all(np.abs(matrix) == np.eye(dims)[None], axis=(1, 2))
    crop = tuple(slice(st, st + p) for st, p in zip(start, patch))
    for b in np.flatnonzero(pure):
        flips = [d for d in range(dims) if matrix[b, d, d] < 0]
        img, lab = image[b][(slice(None), *crop)], label[b][crop]
        if flips:
            img, lab = img.flip([d + 1 for d in flips]), lab.flip(flips)
        out_image[b].copy_(img)
        out_label[b].copy_(lab)

    moved = np.flatnonzero(~pure)
    if batched is None:
        batched = device.type == "cuda"
    groups = [moved] if batched else [moved[i:i + 1] for i in range(moved.size)]
    for group in (g for g in groups if g.size):
        mats = matrix[group]
        half = (np.abs(mats) * ((np.array(patch) - 1) / 2.0)[None, None, :]).sum(-1).max(0)
        lo = np.maximum(0, np.floor(centre - half).astype(int) - 1)
        hi = np.minimum(np.array(shape), np.ceil(centre + half).astype(int) + 2)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        if group.size == 1 or np.array_equal(group, np.arange(group[0], group[-1] + 1)):
            rows = slice(int(group[0]), int(group[-1]) + 1)  # consecutive samples: a view, no copy
            img, lab = image[(rows, slice(None), *box)], label[(rows, *box)]
        else:
            index = _to_device(group, torch.int64, device)
            img = image[(slice(None), slice(None), *box)].index_select(0, index)
            lab = label[(slice(None), *box)].index_select(0, index)
        grid = sampling_grid(mats, centre - lo, hi - lo, patch, device)
        warped = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        labels = F.grid_sample(lab[:, None].to(torch.float32), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[:, 0].round_().to(torch.int64)
        if group.size == batch:
            return warped, labels
        index = _to_device(group, torch.int64, device)
        out_image.index_copy_(0, index, warped)
        out_label.index_copy_(0, index, labels)
    return out_image, out_label


# -------------------------------------------------------------------------------------------- intensity part
def _blur_kernel(sigma: float) -> list[float]:
    """nnU-Net's kernel: ``batchgeneratorsv2 ... gaussian_blur._build_kernel(sigma, truncate=6)``."""
    n = sigma * 6 + 0.5
    size = round(n)
    if size % 2 == 0:
        size = size + 1 if n - size >= 0 else size - 1
    x = np.linspace(-(size - 1) / 2, (size - 1) / 2, size)
    pdf = np.exp(-0.5 * (x / sigma) ** 2)
    return (pdf / pdf.sum()).tolist()


def gaussian_blur_(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Blur one channel (spatial dims only) in place, separably, one sigma per axis, reflect padding."""
    dims = x.ndim
    for d, sigma in enumerate(sigmas):
        kernel = _blur_kernel(float(sigma))
        r = len(kernel) // 2
        pad = [0] * (2 * dims)
        pad[2 * (dims - 1 - d)] = pad[2 * (dims - 1 - d) + 1] = r
        padded = F.pad(x[None, None], pad, mode="reflect")[0, 0]
        out = torch.mul(padded.narrow(d, 0, x.shape[d]), kernel[0])
        for j in range(1, len(kernel)):
            out.add_(padded.narrow(d, j, x.shape[d]), alpha=kernel[j])
        x.copy_(out)
    return x


def contrast_(x: torch.Tensor, factor: float) -> torch.Tensor:
    """nnU-Net's ContrastTransform(preserve_range=True) on one channel, in place."""
    mean = x.mean()
    low, high = torch.aminmax(x)
    return x.sub_(mean).mul_(factor).add_(mean).clamp_(low, high)


def gamma_(x: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """nnU-Net's GammaTransform(p_retain_stats=1) on one channel, in place."""
    eps = 1e-7
    if invert:
        x.neg_()
    mean, std = x.mean(), x.std()
    low, high = torch.aminmax(x)
    rng = high - low
    x.sub_(low).div_(rng.clamp(min=eps)).pow_(gamma).mul_(rng).add_(low)
    x.sub_(x.mean()).mul_(std / x.std().clamp(min=eps)).add_(mean)
    if invert:
        x.neg_()
    return x


def low_resolution_(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """nnU-Net's SimulateLowResolutionTransform on one channel, in place: nearest-exact down to round(size x zoom),
    (bi/tri)linear back up."""
    size = tuple(x.shape)
    small = [max(1, round(s * zoom)) for s in size]
    down = F.interpolate(x[None, None], size=small, mode="nearest-exact")
    mode = "bilinear" if x.ndim == 2 else "trilinear"
    x.copy_(F.interpolate(down, size=size, mode=mode, align_corners=False)[0, 0])
    return x


def _seeds(seed: int, epoch: int, step: int, rank: int) -> tuple[int, int]:
    for name, value in (("seed", seed), ("epoch", epoch), ("step", step), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    words = np.random.SeedSequence([int(seed), int(epoch), int(step), int(rank)]).generate_state(4, np.uint32)
    host = (int(words[0]) << 31) ^ int(words[1])
    device = (int(words[2]) << 31) ^ int(words[3])
    return host, device


class BatchAugmentation:
    """nnU-Net v2's training augmentation of a batch on its device (see the module docstring).

    ``patch``: the final training patch (3 sizes in 3D, 2 in 2D). ``params``: :data:`NNUNET_PARAMS` or a variant
    (checked by :func:`make_params`). ``seed``: the run's seed. The batch's random parameters come from a CPU
    generator (so the same samples are rotated, blurred, ... on every device) and the noise fields from a generator
    on the batch's device, both seeded by (seed, epoch, step, rank) alone. ``outside_label``: the label the loader
    gives background outside the brain mask (``brats_data.OUTSIDE_LABEL``); after all transforms the image is set
    to 0 on every channel where the transformed label holds it, and those labels become 0 (nnU-Net's
    ``MaskImageTransform`` then ``RemoveLabelTansform(-1, 0)``, with ``use_mask_for_norm`` on every channel as
    nnU-Net plans BraTS). None: no masking."""

    def __init__(self, patch: Sequence[int], params: dict = NNUNET_PARAMS, seed: int = 0,
                 outside_label: int | None = None):
        self.outside_label = None if outside_label is None else int(outside_label)
        self.patch = tuple(int(p) for p in patch)
        if len(self.patch) not in (2, 3) or min(self.patch) < 1:
            raise ValueError(f"patch must be 2 or 3 positive sizes, got {patch}")
        self.params = make_params(params)
        self.seed = int(seed)
        _seeds(self.seed, 0, 0, 0)

    @property
    def dims(self) -> int:
        return len(self.patch)

    def loader_patch_size(self, cover: str = "full") -> tuple[int, ...]:
        return loader_patch_size(self.patch, self.params, cover=cover)

    def draw(self, batch: int, channels: int, *, epoch: int, step: int, rank: int = 0) -> Draws:
        """The random parameters of batch (epoch, step, rank): a function of those and ``seed`` only."""
        host_seed, _ = _seeds(self.seed, epoch, step, rank)
        generator = torch.Generator(device="cpu").manual_seed(host_seed)
        table = torch.rand((batch, _n_columns(self.dims, channels)), generator=generator, dtype=torch.float64)
        return draw_parameters(table.numpy(), self.patch, channels, self.params)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, label: torch.Tensor, *, epoch: int, step: int, rank: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """image float32 (B, C, *loader_patch_size) and label int64 (B, *loader_patch_size) on any device -> the
        augmented final patch: image (B, C, *patch), label int64 (B, *patch), same device. Random draws are seeded by
        (seed, epoch, step, rank) only (a torch.Generator on the batch's device or CPU), so a run is reproducible and
        independent of the number of loader workers; different ranks get different draws. The region may be any
        size >= patch (the patch is taken from its centre; outside it reads zeros)."""
        dims = self.dims
        if image.ndim != dims + 2 or label.ndim != dims + 1:
            raise ValueError(f"expected image (B, C, *{dims} sizes) and label (B, *{dims} sizes), "
                             f"got {tuple(image.shape)} and {tuple(label.shape)}")
        if image.shape[0] != label.shape[0] or image.shape[2:] != label.shape[1:]:
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} do not match")
        if any(s < p for s, p in zip(image.shape[2:], self.patch)):
            raise ValueError(f"region {tuple(image.shape[2:])} is smaller than the patch {self.patch}")
        if image.dtype != torch.float32:
            raise TypeError(f"image must be float32, got {image.dtype}")
        if label.dtype.is_floating_point or label.dtype == torch.bool or label.device != image.device:
            raise TypeError(f"label must be an integer tensor on the image's device, got {label.dtype} on "
                            f"{label.device}")
        batch, channels = image.shape[:2]
        draws = self.draw(batch, channels, epoch=epoch, step=step, rank=rank)
        out, lab = spatial_transform(image, label, self.patch, draws.matrix)
        self.intensity_(out, draws, epoch=epoch, step=step, rank=rank)
        if self.outside_label is not None:  # nnU-Net: MaskImageTransform, then RemoveLabelTansform(-1, 0)
            outside = lab == self.outside_label
            out.masked_fill_(outside.unsqueeze(1), 0.0)
            lab.masked_fill_(outside, 0)
        return out, lab

    def intensity_(self, image: torch.Tensor, draws: Draws, *, epoch: int, step: int, rank: int = 0) -> torch.Tensor:
        """The intensity transforms of ``draws`` on a (B, C, *patch) batch, in place, in nnU-Net's order."""
        noisy = np.flatnonzero(~np.isnan(draws.noise_std))
        if noisy.size:
            _, device_seed = _seeds(self.seed, epoch, step, rank)
            generator = torch.Generator(device=image.device).manual_seed(device_seed)
            for b in noisy:
                noise = torch.randn(image.shape[1:], generator=generator, device=image.device, dtype=image.dtype)
                image[b].add_(noise, alpha=float(draws.noise_std[b]))
        for b, c in zip(*np.nonzero(~np.isnan(draws.blur_sigma[..., 0]))):
            gaussian_blur_(image[b, c], draws.blur_sigma[b, c])
        for b, c in zip(*np.nonzero(~np.isnan(draws.brightness))):
            image[b, c].mul_(float(draws.brightness[b, c]))
        for b, c in zip(*np.nonzero(~np.isnan(draws.contrast))):
            contrast_(image[b, c], float(draws.contrast[b, c]))
        for b, c in zip(*np.nonzero(~np.isnan(draws.lowres_zoom))):
            low_resolution_(image[b, c], float(draws.lowres_zoom[b, c]))
        for b, c in zip(*np.nonzero(~np.isnan(draws.gamma_inverted))):
            gamma_(image[b, c], float(draws.gamma_inverted[b, c]), invert=True)
        for b, c in zip(*np.nonzero(~np.isnan(draws.gamma))):
            gamma_(image[b, c], float(draws.gamma[b, c]), invert=False)
        return image
