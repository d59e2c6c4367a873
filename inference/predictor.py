"""One prediction path: :class:`Predictor` turns a preprocessed volume into logits, probabilities or labels.

Validation, the test of a unit, ``evaluate_experiment.py`` (also ``--export_predictions``), ``predict.py``
and Grad-CAM all use it, so a prediction is made one way everywhere (in the spirit of nnU-Net's
``nnUNetPredictor`` and MONAI's ``SlidingWindowInferer``):

    settings = InferenceSettings.from_config(cfg, device)            # dim, ROI, overlap, windows per forward,
                                                                      # blending (--blending), precision, compile
    predictor = Predictor.from_checkpoints([ckpt_a, ckpt_b], settings)   # an ensemble (or .from_model(model))
    labels, probs = predictor.predict(cache.image(case_id), probabilities=True)

The input is a preprocessed volume in the canonical modality order (``(4, Z, Y, X)``, as the cache and
:func:`brats_data.preprocess_case` give it); each member reads its own modalities from it. 3D models
run a sliding window (MONAI's ``sliding_window_inference``, cosine blending by default; ``--blending nnunet``:
nnU-Net v2's, :func:`nnunet_sliding_window`); 2D models run the same window over batches of axial slices. One
member without mirroring is labelled by the argmax of its logits; an ensemble and/or test-time mirroring by the argmax
of the softmax averaged over every member and mirrored input; region-based members (``--region_based``) by painting
their sigmoid regions (> 0.5) in the scheme's ``region_order``. :meth:`Predictor.postprocess` (the post-processing
hook: the rule chosen with ``--postprocess``, else none) is applied to every label map.

:func:`model_from_checkpoint` is the one place a network is built from a checkpoint;
``utils.checkpoint.unwrap_model`` the one way to take DDP and ``torch.compile`` wrappers off a module.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference

from brats_data import modality_indices
from models import get_model, model_spec
from utils.checkpoint import unwrap_model
from utils.labels import CLASSIC, NUM_CLASSES, LabelScheme
from utils.regions import paint_regions
from utils.runtime import autocast_context

SLICES_PER_FORWARD = 32  # 2D: axial slices handed to the sliding window at once
BLENDINGS = ("cosine", "gaussian", "constant", "nnunet")  # cosine: this suite's window; gaussian, constant: MONAI's
# modes; nnunet: nnU-Net v2's nnUNetPredictor (its tile steps and Gaussian, logits averaged over mirrorings and members)


# ----------------------------------------------------------------------------- the window
def cosine_weight_map(roi_size: Sequence[int], floor: float = 1e-3) -> torch.Tensor:
    """Separable raised-cosine (sine) window over the ROI: 1 in the centre, small but > 0 at the borders."""
    weights = None
    for n in roi_size:
        w = torch.sin(math.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n).clamp_min(floor)
        weights = w if weights is None else weights[..., None] * w
    return weights


def sliding_window_predict(
    model: nn.Module, image: torch.Tensor, roi_size: Sequence[int], overlap: float = 0.1, sw_batch_size: int = 2,
    amp: str = "none", weight_map: torch.Tensor | None = None, blending: str = "cosine",
) -> torch.Tensor:
    """Logits for a whole image ``(B, C, *spatial)`` by MONAI sliding-window inference.

    The image is zero-padded up to ``roi_size`` where smaller, so the window always applies, and the
    result is cropped back to the input size. ``blending`` ``cosine`` weighs each window by
    ``weight_map`` (default :func:`cosine_weight_map`); ``gaussian`` and ``constant`` are MONAI's modes.
    """
    if blending not in BLENDINGS:
        raise ValueError(f"blending must be one of {', '.join(BLENDINGS)}, got {blending!r}")
    roi = tuple(int(r) for r in roi_size)
    spatial = image.shape[2:]
    pad = [max(r - s, 0) for r, s in zip(roi, spatial)]
    if any(pad):
        flat = []
        for p in reversed(pad):
            flat += [p // 2, p - p // 2]
        image = torch.nn.functional.pad(image, flat)
    options: dict[str, Any] = {"mode": blending} if blending != "cosine" else {
        "roi_weight_map": (cosine_weight_map(roi) if weight_map is None else weight_map).to(image.device)}
    with torch.no_grad(), autocast_context(image.device, amp)():
        logits = sliding_window_inference(image, roi, sw_batch_size, model, overlap=overlap, **options)
    logits = torch.as_tensor(logits).float()
    if any(pad):
        index = [slice(None), slice(None)] + [slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial)]
        logits = logits[tuple(index)]
    return logits


def nnunet_gaussian(tile: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """nnU-Net v2's tile weight (``compute_gaussian``): a unit impulse at voxel ``t // 2`` blurred by scipy's
    ``gaussian_filter`` (sigma ``t / 8``, zero outside), scaled to a maximum of 1 (nnU-Net: 10; the scale cancels),
    its zeros raised to its smallest non-zero value; float32 (nnU-Net keeps it in float16)."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(tuple(int(t) for t in tile))
    impulse[tuple(int(t) // 2 for t in tile)] = 1.0
    weight = gaussian_filter(impulse, [t * sigma_scale for t in tile], 0, mode="constant", cval=0)
    weight = torch.from_numpy(weight / weight.max()).float()
    zero = weight == 0
    if zero.any():
        weight[zero] = weight[~zero].min()
    return weight


def nnunet_steps(size: int, tile: int, step: float) -> list[int]:
    """nnU-Net v2's tile starts along one axis (``compute_steps_for_sliding_window``): as many tiles as a stride of
    ``tile x step`` needs to cover ``size``, spread evenly from 0 to ``size - tile`` and rounded."""
    n = int(np.ceil((size - tile) / (tile * step))) + 1
    stride = (size - tile) / (n - 1) if n > 1 else 0.0
    return [int(np.round(stride * i)) for i in range(n)]


def _forward_plan(samples_per_tile: int, n_mirror: int, sw_batch_size: int, device: torch.device
                  ) -> tuple[int, int]:
    """(tiles, mirrorings) per forward of :func:`nnunet_sliding_window`: ``sw_batch_size`` network samples (a tile's
    ``samples_per_tile`` times its mirrorings), whole tiles with all their mirrorings where they fit, else one tile
    with as many mirrorings as fit; on the CPU at least 2 samples, as torch's CPU convolution runs a single sample
    (3x3x3 kernels, few channels) on its slow im2col path and two or more on oneDNN, about 4x faster per sample."""
    limit = max(sw_batch_size, 2 if device.type == "cpu" else 1)
    tiles = max(1, limit // (samples_per_tile * n_mirror))
    return tiles, max(1, min(n_mirror, limit // (samples_per_tile * tiles)))


def _mirrored_logits(model: nn.Module, x: torch.Tensor, mirror: Sequence[tuple[int, ...]], per_forward: int
                     ) -> torch.Tensor:
    """The sum over ``mirror`` (flips of the spatial axes, 0-based) of the logits of ``x`` (N, C, *tile), flipped
    back, float32; ``per_forward`` mirrored copies of ``x`` go through the network together."""
    total = None
    for first in range(0, len(mirror), per_forward):
        dims = [[a + 2 for a in axes] for axes in mirror[first:first + per_forward]]
        y = model(torch.cat([x.flip(d) if d else x for d in dims]) if len(dims) > 1 else
                  (x.flip(dims[0]) if dims[0] else x)).float()
        for k, d in enumerate(dims):
            part = y[k * len(x):(k + 1) * len(x)]
            if total is None:
                total = part.flip(d) if d else part.clone()  # a tensor of its own, to add into
            else:
                total.add_(part.flip(d) if d else part)
    return total


def nnunet_sliding_window(model: nn.Module, image: torch.Tensor, roi_size: Sequence[int], step: float = 0.5,
                          sw_batch_size: int = 2, amp: str = "none", mirror: Sequence[tuple[int, ...]] = ((),),
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``image`` (B, C, *spatial) as nnU-Net v2's ``predict_sliding_window_return_logits``: zero-padded
    (centred) to the tile where smaller, tiles at :func:`nnunet_steps`, each tile's logits averaged over the
    ``mirror`` flips of its spatial axes (0-based; ``()`` the identity) and weighted by :func:`nnunet_gaussian`, the
    weighted sum divided by the summed weights; float32 throughout (nnU-Net accumulates in float16). A tile's
    mirrored copies go through the network together, ``sw_batch_size`` samples per forward (:func:`_forward_plan`;
    nnU-Net runs one sample per forward)."""
    roi = tuple(int(r) for r in roi_size)
    spatial = tuple(image.shape[2:])
    pad = [max(r - s, 0) for r, s in zip(roi, spatial)]
    if any(pad):
        flat = []
        for p in reversed(pad):
            flat += [p // 2, p - p // 2]
        image = torch.nn.functional.pad(image, flat)
    size = tuple(image.shape[2:])
    weight = (nnunet_gaussian(roi) if weight is None else weight).to(image.device)
    scaled = weight / len(mirror)  # the mean over the mirrorings and the tile weight in one product
    starts = list(itertools.product(*[nnunet_steps(s, r, step) for s, r in zip(size, roi)]))
    batch = image.shape[0]
    tiles, flips = _forward_plan(batch, len(mirror), sw_batch_size, image.device)
    logits = counts = None
    with torch.no_grad(), autocast_context(image.device, amp)():
        for first in range(0, len(starts), tiles):
            boxes = [(slice(None), slice(None), *[slice(a, a + r) for a, r in zip(corner, roi)])
                     for corner in starts[first:first + tiles]]
            x = torch.cat([image[box] for box in boxes]) if len(boxes) > 1 else image[boxes[0]]
            out = _mirrored_logits(model, x, mirror, flips)
            if logits is None:
                logits = torch.zeros((batch, out.shape[1], *size), dtype=torch.float32, device=image.device)
                counts = torch.zeros(size, dtype=torch.float32, device=image.device)
            for k, box in enumerate(boxes):
                logits[box].addcmul_(out[k * batch:(k + 1) * batch], scaled)
                counts[box[2:]] += weight
    logits /= counts
    if any(pad):
        logits = logits[(slice(None), slice(None), *[slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial)])]
    return logits


def mirror_axes(dim: str) -> list[tuple[int, ...]]:
    """Test-time mirroring: every subset of the spatial axes of a (C, Z, Y, X) volume (8 in 3D; in 2D the
    in-plane axes only, 4), the identity first."""
    axes = (1, 2, 3) if dim == "3d" else (2, 3)
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]


# ----------------------------------------------------------------------------- settings and members
@dataclass(frozen=True)
class InferenceSettings:
    """How a volume is predicted: the run's settings unless a caller overrides them."""

    dim: str
    patch: tuple[int, ...]
    overlap: float = 0.1
    sw_batch_size: int = 2
    amp: str = "none"
    device: torch.device = torch.device("cpu")
    compile: bool = False
    mirror: bool = False  # test-time mirroring (every axis flip)
    blending: str = "cosine"

    def __post_init__(self) -> None:
        if self.dim not in ("2d", "3d"):
            raise ValueError(f"dim must be 2d or 3d, got {self.dim!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ValueError(f"--sw_batch_size must be >= 1, got {self.sw_batch_size}")
        if self.blending not in BLENDINGS:
            raise ValueError(f"blending must be one of {', '.join(BLENDINGS)}, got {self.blending!r}")
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device, *, overlap: float | None = None,
                    sw_batch_size: int | None = None, mirror: bool = False, blending: str | None = None
                    ) -> InferenceSettings:
        """The run's settings (``cfg``: ExperimentConfig, its ``--blending`` included) on ``device``;
        ``overlap``/``sw_batch_size``/``blending`` override."""
        return cls(cfg.dim, tuple(cfg.spatial_patch), cfg.overlap if overlap is None else overlap,
                   sw_batch_size or cfg.resolved_sw_batch_size(), cfg.resolved_amp(device), device, cfg.compile,
                   mirror, blending or cfg.blending)

    def with_(self, **changes: Any) -> InferenceSettings:
        return replace(self, **changes)


def _checkpoint_dataset(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The data set record a checkpoint was saved with (its own, else its config's), None for older checkpoints."""
    return checkpoint.get("dataset") or (checkpoint.get("config") or {}).get("dataset")


def checkpoint_classes(checkpoint: Mapping[str, Any]) -> int:
    """The output channels of a checkpoint's network: its ``num_classes``, else its data set's, else BraTS's 4."""
    if "num_classes" in checkpoint:
        return int(checkpoint["num_classes"])
    dataset = _checkpoint_dataset(checkpoint)
    return 1 + len(dataset["scheme"]["classes"]) if dataset else NUM_CLASSES


def model_from_checkpoint(checkpoint: Mapping[str, Any], dim: str, patch: Sequence[int],
                          num_classes: int | None = None) -> nn.Module:
    """The network of a checkpoint (``model_name`` + ``state_dict``), built by the registry for ``dim``, ``patch``
    and ``num_classes`` (default :func:`checkpoint_classes`) and loaded: the one place the suite builds a model
    from saved weights."""
    model = get_model(checkpoint["model_name"], dim, patch, num_classes or checkpoint_classes(checkpoint))
    model.load_state_dict(checkpoint["state_dict"])
    return model


@dataclass
class Member:
    """One network of a predictor: the bare module, the module that runs the windows (compiled or the
    same), the channels of the canonical (4, Z, Y, X) input it reads (``None``: every channel), and for a
    region-based network the scheme whose ``region_order`` its sigmoid channels are (``None``: softmax classes)."""

    name: str
    model: nn.Module
    net: nn.Module
    channels: list[int] | None
    regions: LabelScheme | None = None


def _member(model: nn.Module, modalities: Sequence[str] | None, settings: InferenceSettings, name: str,
            regions: LabelScheme | None = None) -> Member:
    bare = unwrap_model(model)
    # gated multi-branch models are never compiled: their modality weights are read by a forward hook
    net = torch.compile(bare) if settings.compile and not hasattr(bare, "modality_weights") else bare
    channels = None if modalities is None else modality_indices(modalities)
    return Member(name or type(bare).__name__, bare, net, channels, regions)


def checkpoint_regions(checkpoint: Mapping[str, Any]) -> LabelScheme | None:
    """The scheme of a region-based checkpoint (``region_based`` and its data set's record), else None."""
    if not checkpoint.get("region_based"):
        return None
    dataset = _checkpoint_dataset(checkpoint)
    return LabelScheme.from_dict(dataset["scheme"]) if dataset else CLASSIC


# ----------------------------------------------------------------------------- the predictor
class Predictor:
    """Logits, probabilities and labels of preprocessed volumes (see the module docstring)."""

    def __init__(self, members: Sequence[Member], settings: InferenceSettings,
                 postprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if not members:
            raise ValueError("a predictor needs at least one network")
        if len({None if m.regions is None else m.regions.region_order for m in members}) > 1:
            raise ValueError("an ensemble mixes region-based (sigmoid) and class (softmax) networks, or different "
                             "regions: their probabilities cannot be averaged")
        self.members, self.settings = list(members), settings
        self._postprocess = postprocess
        self._weight_map = cosine_weight_map(settings.patch).to(settings.device)
        self._nnunet_weight = nnunet_gaussian(settings.patch).to(settings.device) if settings.blending == "nnunet" \
            else None

    @classmethod
    def from_model(cls, model: nn.Module, modalities: Sequence[str] | None, settings: InferenceSettings,
                   name: str = "", regions: LabelScheme | None = None) -> Predictor:
        """A live model (DDP/compile wrappers are taken off; its weights are shared, not copied), reading
        ``modalities`` of the canonical input (``None``: the input holds exactly the model's channels); a
        region-based model gives ``regions``, the scheme whose ``region_order`` its channels follow."""
        return cls([_member(model, modalities, settings, name, regions)], settings)

    @classmethod
    def from_checkpoints(cls, checkpoints: Sequence[Mapping[str, Any]], settings: InferenceSettings,
                         names: Sequence[str] | None = None, num_classes: int | None = None,
                         postprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> Predictor:
        """An ensemble of checkpoints (each ``model_name`` + ``state_dict``; one checkpoint is a plain
        predictor), every network in eval mode on the settings' device; each weighs the same (softmax classes or,
        for region-based checkpoints, sigmoid regions, averaged). ``postprocess``: the label rule to apply."""
        members = []
        for i, ckpt in enumerate(checkpoints):
            model = model_from_checkpoint(ckpt, settings.dim, settings.patch, num_classes)
            model = model.to(settings.device).eval()
            name = names[i] if names else ckpt["model_name"]
            members.append(_member(model, model_spec(ckpt["model_name"]).modalities, settings, name,
                                   checkpoint_regions(ckpt)))
        return cls(members, settings, postprocess)

    @property
    def model(self) -> nn.Module:
        """The bare module of the first member (for forward hooks)."""
        return self.members[0].model

    # ------------------------------------------------------------------ forward passes
    def _input(self, image: np.ndarray | torch.Tensor, member: Member) -> torch.Tensor:
        """The member's channels of ``image`` as float32 on the device (only those channels are read)."""
        if isinstance(image, torch.Tensor):
            x = image if member.channels is None else image[member.channels]
            return x.to(self.settings.device, dtype=torch.float32)
        x = image if member.channels is None else image[member.channels]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.settings.device)

    def _volume_logits(self, net: nn.Module, x: torch.Tensor, mirror: Sequence[tuple[int, ...]] = ((),)
                       ) -> torch.Tensor:
        """Logits (K, Z, Y, X) of a volume ``x`` (C, Z, Y, X) on the device: 3D sliding window, or 2D windows
        over batches of axial slices (at least :data:`SLICES_PER_FORWARD` slices at once). ``mirror`` (blending
        ``nnunet`` only): the flips of the window's spatial axes whose logits each tile averages."""
        s = self.settings
        if s.blending == "nnunet":
            if s.dim == "3d":
                return nnunet_sliding_window(net, x[None], s.patch, 1.0 - s.overlap, s.sw_batch_size, s.amp,
                                             mirror, self._nnunet_weight)[0]
            slices = x.permute(1, 0, 2, 3)
            return nnunet_sliding_window(net, slices, s.patch, 1.0 - s.overlap, s.sw_batch_size, s.amp, mirror,
                                         self._nnunet_weight).permute(1, 0, 2, 3)
        if s.dim == "3d":
            return sliding_window_predict(net, x[None], s.patch, s.overlap, s.sw_batch_size, s.amp,
                                          self._weight_map, s.blending)[0]
        slices, chunk = x.permute(1, 0, 2, 3), max(SLICES_PER_FORWARD, s.sw_batch_size)  # (Z, C, Y, X)
        out = [sliding_window_predict(net, slices[i:i + chunk], s.patch, s.overlap, s.sw_batch_size, s.amp,
                                      self._weight_map, s.blending)
               for i in range(0, slices.shape[0], chunk)]
        return torch.cat(out).permute(1, 0, 2, 3)

    @property
    def single_forward(self) -> bool:
        """One network and no mirroring: its logits are the prediction."""
        return len(self.members) == 1 and not self.settings.mirror

    def logits(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits (K, Z, Y, X) on the device of a single network without mirroring (an ensemble has none)."""
        if not self.single_forward:
            raise ValueError("an ensemble or mirrored prediction has probabilities, not logits")
        member = self.members[0]
        member.model.eval()
        return self._volume_logits(member.net, self._input(image, member))

    @property
    def regions(self) -> LabelScheme | None:
        """The scheme of region-based members (their channels are its ``region_order``), None for softmax classes."""
        return self.members[0].regions

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.regions is not None else torch.softmax(logits, 0)

    def probabilities(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Probabilities (K, Z, Y, X) on the device, averaged over members and mirrorings: class softmax, or for
        region-based members the sigmoid of each region of ``region_order``."""
        if self.single_forward:
            return self._activate(self.logits(image))
        if self.settings.blending == "nnunet":  # nnU-Net: logits averaged over mirrorings and members, then activated
            return self._activate(self.nnunet_logits(image))
        flips = mirror_axes(self.settings.dim) if self.settings.mirror else [()]
        total, inputs = None, {}
        for member in self.members:
            member.model.eval()
            key = None if member.channels is None else tuple(member.channels)
            if key not in inputs:
                inputs[key] = self._input(image, member)
            x = inputs[key]
            for axes in flips:
                p = self._activate(self._volume_logits(member.net, x.flip(axes) if axes else x))
                p = p.flip(axes) if axes else p
                total = p if total is None else total.add_(p)
        return total / (len(self.members) * len(flips))

    def nnunet_logits(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Blending ``nnunet``: logits (K, Z, Y, X) averaged over members, each tile's over its mirrorings (with
        ``mirror``: every subset of the window's spatial axes), as nnU-Net v2's ``nnUNetPredictor``."""
        if self.settings.blending != "nnunet":
            raise ValueError("nnunet_logits needs blending='nnunet'")
        dims = 3 if self.settings.dim == "3d" else 2
        flips = [c for n in range(dims + 1) for c in itertools.combinations(range(dims), n)] \
            if self.settings.mirror else [()]
        total, inputs = None, {}
        for member in self.members:
            member.model.eval()
            key = None if member.channels is None else tuple(member.channels)
            if key not in inputs:
                inputs[key] = self._input(image, member)
            logits = self._volume_logits(member.net, inputs[key], flips)
            total = logits if total is None else total.add_(logits)
        return total / len(self.members)

    def predict(self, image: np.ndarray | torch.Tensor, *, probabilities: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Label map (Z, Y, X) uint8, post-processed, and with ``probabilities`` the probabilities (K, Z, Y, X)
        float32 (before post-processing). A single forward is labelled by the argmax of its logits, an ensemble or
        mirrored prediction by the argmax of the mean softmax; region-based members by painting their regions
        (sigmoid > 0.5, i.e. logit > 0 for one forward) in the scheme's ``region_order``."""
        if self.single_forward:
            logits = self.logits(image)
            labels = logits.argmax(0) if self.regions is None else paint_regions(logits, self.regions, 0.0)
            probs = self._activate(logits) if probabilities else None
        else:
            probs = self.probabilities(image)
            labels = probs.argmax(0) if self.regions is None else paint_regions(probs, self.regions, 0.5)
        labels = self.postprocess(labels.to(torch.uint8).cpu().numpy())
        return labels, probs.cpu().numpy() if probabilities else None

    def labels(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        """Label map (Z, Y, X) uint8 of a preprocessed volume (:meth:`predict` without probabilities)."""
        return self.predict(image)[0]

    def postprocess(self, labels: np.ndarray) -> np.ndarray:
        """The post-processing hook, applied to every label map: the rule given at construction, else none."""
        return labels if self._postprocess is None else self._postprocess(labels)
