"""The Predictor: one prediction path for validation, test, export, predict.py and Grad-CAM.

Known answers: an ensemble's probabilities are the mean of its members' softmax; mirroring a
flip-equivariant network changes nothing; members read their own modalities of the canonical input;
the post-processing hook reaches every label map (not the probabilities); wrappers are taken off one way;
a model from a checkpoint predicts as the live model it was saved from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from inference.predictor import InferenceSettings, Predictor, model_from_checkpoint
from models import get_model
from utils.checkpoint import unwrap_model


class LabelEcho(nn.Module):
    """Logits whose argmax is the integer stored in input channel 0; a pointwise map, so flip-equivariant."""

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, 0].round().long().clamp(0, 3)
        return nn.functional.one_hot(labels, 4).movedim(-1, 1).float() * self.scale


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(12, 21, 18)).astype(np.uint8)
    noise = rng.normal(size=(4, *label.shape)).astype(np.float32)
    return noise, label


SETTINGS = InferenceSettings("3d", (8, 16, 16), overlap=0.25, sw_batch_size=3)


def test_members_read_their_own_modalities(case):
    noise, label = case
    image = noise.copy()
    image[3] = label  # FLAIR holds the labels, T1 holds noise
    flair = Predictor.from_model(LabelEcho(), ("flair",), SETTINGS)
    np.testing.assert_array_equal(flair.labels(image), label)
    t1 = Predictor.from_model(LabelEcho(), ("t1",), SETTINGS)
    assert not np.array_equal(t1.labels(image), label)
    # ``None``: the input holds exactly the model's channels
    np.testing.assert_array_equal(Predictor.from_model(LabelEcho(), None, SETTINGS).labels(image[3:]), label)


def test_an_ensemble_averages_the_softmax_of_its_members(case):
    noise, label = case
    image = noise.copy()
    image[0], image[3] = label, (label + 1) % 4  # the members disagree everywhere
    a = Predictor.from_model(LabelEcho(4.0), ("t1",), SETTINGS)
    b = Predictor.from_model(LabelEcho(1.0), ("flair",), SETTINGS)
    ensemble = Predictor(a.members + b.members, SETTINGS)
    expected = (a.probabilities(image) + b.probabilities(image)) / 2
    torch.testing.assert_close(ensemble.probabilities(image), expected)
    labels, probs = ensemble.predict(image, probabilities=True)
    np.testing.assert_array_equal(labels, label)  # the confident member (scale 4) wins every voxel
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="not logits"):
        ensemble.logits(image)


def test_mirroring_an_equivariant_network_changes_nothing(case):
    noise, label = case
    image = noise.copy()
    image[1] = label
    plain = Predictor.from_model(LabelEcho(), ("t1ce",), SETTINGS)
    mirrored = Predictor.from_model(LabelEcho(), ("t1ce",), SETTINGS.with_(mirror=True))
    torch.testing.assert_close(mirrored.probabilities(image), plain.probabilities(image))
    np.testing.assert_array_equal(mirrored.labels(image), label)


def test_mirroring_averages_over_every_flip():
    """A network that sees only the first voxel's position along Z: each flip moves it, so the mean over the
    8 flips is exactly the mean of the flipped-back predictions."""
    calls = []

    class Probe(nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape))
            logits = torch.zeros(x.shape[0], 4, *x.shape[2:])
            logits[:, 1, 0] = 5.0  # class 1 on the first axial slice of every window
            return logits

    settings = InferenceSettings("3d", (4, 4, 4), overlap=0.0, sw_batch_size=1, mirror=True)
    probs = Predictor.from_model(Probe(), None, settings).probabilities(np.zeros((1, 4, 4, 4), np.float32))
    assert len(calls) == 8  # one window, 8 mirrorings
    single = torch.softmax(torch.tensor([0.0, 5.0, 0.0, 0.0]), 0)[1]
    uniform = torch.softmax(torch.zeros(4), 0)[1]
    # z = 0 gets class-1 logits in the 4 flips without Z, z = 3 in the 4 with Z
    torch.testing.assert_close(probs[1, 0], torch.full((4, 4), float((single + uniform) / 2)))
    torch.testing.assert_close(probs[1, 3], torch.full((4, 4), float((single + uniform) / 2)))
    torch.testing.assert_close(probs[1, 1], torch.full((4, 4), float(uniform)))


def test_the_postprocessing_hook_reaches_labels_not_probabilities(case):
    noise, label = case
    image = noise.copy()
    image[1] = label
    seen = []

    def et_to_ncr(labels: np.ndarray) -> np.ndarray:
        seen.append(labels.copy())
        return np.where(labels == 3, 1, labels).astype(np.uint8)

    predictor = Predictor(Predictor.from_model(LabelEcho(), ("t1ce",), SETTINGS).members, SETTINGS, et_to_ncr)
    labels, probs = predictor.predict(image, probabilities=True)
    np.testing.assert_array_equal(seen[0], label)
    np.testing.assert_array_equal(labels, np.where(label == 3, 1, label))
    np.testing.assert_array_equal(probs.argmax(0), label)  # probabilities stay raw
    assert Predictor.from_model(LabelEcho(), ("t1ce",), SETTINGS).postprocess(label) is label  # no-op by default


def test_wrappers_are_taken_off_one_way():
    model = LabelEcho()
    wrapped = nn.DataParallel(model)  # the .module wrapper, as DistributedDataParallel
    assert unwrap_model(wrapped) is model
    assert Predictor.from_model(wrapped, None, SETTINGS).model is model


@pytest.mark.parametrize("dim,patch", [("3d", (32, 16, 16)), ("2d", (32, 16))])
def test_a_checkpoint_predicts_as_the_live_model(dim, patch):
    torch.manual_seed(0)
    model = get_model("unet3d_xs", dim, patch).eval()
    checkpoint = {"model_name": "unet3d_xs", "state_dict": model.state_dict()}
    settings = InferenceSettings(dim, patch, overlap=0.5, sw_batch_size=2)
    image = np.random.default_rng(1).normal(size=(4, 17, 37, 23)).astype(np.float16)
    live = Predictor.from_model(model, ("t1ce", "flair"), settings)
    saved = Predictor.from_checkpoints([checkpoint], settings)
    torch.testing.assert_close(saved.logits(image), live.logits(image))
    assert saved.members[0].channels == [1, 3]
    rebuilt = model_from_checkpoint(checkpoint, dim, patch)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="overlap"):
        InferenceSettings("3d", (8, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match="sw_batch_size"):
        InferenceSettings("3d", (8, 8, 8), sw_batch_size=0)
    with pytest.raises(ValueError, match="blending"):
        InferenceSettings("3d", (8, 8, 8), blending="linear")
    with pytest.raises(ValueError, match="at least one"):
        Predictor([], SETTINGS)


def test_blending_modes_agree_on_a_pointwise_network(case):
    noise, label = case
    image = noise.copy()
    image[1] = label
    for blending in ("cosine", "gaussian", "constant", "nnunet"):
        predictor = Predictor.from_model(LabelEcho(), ("t1ce",), SETTINGS.with_(blending=blending))
        np.testing.assert_array_equal(predictor.labels(image), label)
        mirrored = Predictor.from_model(LabelEcho(), ("t1ce",), SETTINGS.with_(blending=blending, mirror=True))
        np.testing.assert_array_equal(mirrored.labels(image), label)


def test_nnunet_window_steps_and_weight():
    from inference.predictor import nnunet_gaussian, nnunet_steps

    assert nnunet_steps(110, 64, 0.5) == [0, 23, 46]  # the example in nnU-Net's compute_steps_for_sliding_window
    assert nnunet_steps(64, 64, 0.5) == [0] and nnunet_steps(155, 128, 0.5) == [0, 27]
    assert nnunet_steps(240, 128, 0.5) == [0, 56, 112]
    w = nnunet_gaussian((16, 12, 9))
    assert w.shape == (16, 12, 9) and w.max() == 1 and w[8, 6, 4] == 1 and w.min() > 0
    assert torch.allclose(w[8, 6, :], w[8, 6, :].flip(0))  # odd size: symmetric about t // 2
    assert w[8, 6, 0] < w[8, 6, 1] < w[8, 6, 4]


class WindowPosition(nn.Module):
    """Not translation-equivariant: class 1's logit is high in the middle of the window it is given and low at its
    borders (plus a little of the input), class 0's is 0; so how overlapping windows are weighted (blending)
    changes the labels wherever windows overlap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        dist = torch.zeros(spatial)
        for axis, n in enumerate(spatial):
            d = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2).abs() / ((n - 1) / 2)
            dist = torch.maximum(dist, d.view([-1 if a == axis else 1 for a in range(len(spatial))]))
        class1 = (1.0 - 2.0 * dist) + 0.05 * x[:, 0]
        return torch.stack([torch.zeros_like(class1), class1], 1)


def test_blending_modes_match_monais_sliding_window_and_differ_where_windows_overlap(case):
    """Against MONAI's sliding_window_inference itself (the reference): gaussian and constant are its modes, cosine
    is its roi_weight_map with the suite's cosine window; on a network whose output depends on the position in the
    window, the three give different labels (a pointwise network could not tell them apart)."""
    from monai.inferers import sliding_window_inference

    from inference.predictor import cosine_weight_map

    noise, _ = case
    x = torch.from_numpy(noise[1:2])[None]  # the member's channel (t1ce) as (1, 1, Z, Y, X)
    labels = {}
    for blending in ("cosine", "gaussian", "constant"):
        predictor = Predictor.from_model(WindowPosition(), ("t1ce",), SETTINGS.with_(blending=blending))
        options = {"roi_weight_map": cosine_weight_map(SETTINGS.patch)} if blending == "cosine" else {
            "mode": blending}
        with torch.no_grad():
            reference = sliding_window_inference(x, SETTINGS.patch, SETTINGS.sw_batch_size, WindowPosition(),
                                                 overlap=SETTINGS.overlap, **options)[0]
        torch.testing.assert_close(predictor.logits(noise), reference, rtol=1e-5, atol=1e-5)
        labels[blending] = predictor.labels(noise)
        np.testing.assert_array_equal(labels[blending], reference.argmax(0).numpy())
    for a, b in (("gaussian", "constant"), ("cosine", "constant"), ("cosine", "gaussian")):
        assert (labels[a] != labels[b]).sum() >= 20, (a, b, int((labels[a] != labels[b]).sum()))


class OneCaseCache:
    """What the scoring reads of a preprocessed cache, for one case: its image, label and spacing."""

    def __init__(self, image: np.ndarray, label: np.ndarray) -> None:
        self._image, self._label = image, label

    def image(self, case_id: str) -> np.ndarray:
        return self._image

    def label(self, case_id: str) -> np.ndarray:
        return self._label

    def spacing(self, case_id: str) -> tuple[float, float, float]:
        return (1.0, 1.0, 1.0)


def test_the_runs_blending_reaches_its_predictor(case, monkeypatch):
    """``--blending`` (config.json) is the settings of every prediction of a run: from_config carries it (an
    override wins), and a test evaluation of a checkpoint predicts as Predictor(blending="nnunet") itself."""
    from evaluation.scoring import evaluate_checkpoint
    from experiment.config import BLENDINGS, ExperimentConfig
    from inference import predictor as predictor_module

    assert BLENDINGS == predictor_module.BLENDINGS
    patch = (32, 16, 16)
    cfg = ExperimentConfig(dataset_version="synthetic", dim="3d", models=["unet3d_xs"], patch_size=list(patch),
                           overlap=0.5, sw_batch_size=2, blending="nnunet")
    cpu = torch.device("cpu")
    assert InferenceSettings.from_config(cfg, cpu).blending == "nnunet"
    assert InferenceSettings.from_config(cfg, cpu, blending="gaussian").blending == "gaussian"
    assert InferenceSettings.from_config(ExperimentConfig(dim="3d"), cpu).blending == "cosine"  # the default
    torch.manual_seed(0)
    checkpoint = {"model_name": "unet3d_xs", "state_dict": get_model("unet3d_xs", "3d", patch).state_dict()}
    used, build = [], Predictor.from_checkpoints.__func__

    def spy(cls, checkpoints, settings, *args, **kwargs):
        used.append(settings)
        return build(cls, checkpoints, settings, *args, **kwargs)

    monkeypatch.setattr(Predictor, "from_checkpoints", classmethod(spy))
    noise, label = case
    result = evaluate_checkpoint(checkpoint, cfg, OneCaseCache(noise, label), ["c0"], cpu, keep_first_prediction=True)
    settings = InferenceSettings("3d", patch, overlap=0.5, sw_batch_size=2, blending="nnunet")
    assert used == [settings]
    direct = Predictor.from_checkpoints([checkpoint], settings).labels(noise)
    np.testing.assert_array_equal(result.first_prediction[1], direct)


def test_predict_py_passes_its_blending_override(monkeypatch, tmp_path):
    import predict

    seen = []

    def fake_predict_folder(*args, **kwargs):
        seen.append(kwargs["blending"])
        raise ValueError("stop here")

    monkeypatch.setattr(predict, "predict_folder", fake_predict_folder)
    common = ["--run_dir", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    assert predict.main(common) == 2 and predict.main(common + ["--blending", "nnunet"]) == 2
    assert seen == [None, "nnunet"]  # None: the run's --blending
    with pytest.raises(SystemExit):
        predict.main(common + ["--blending", "linear"])


def test_nnunet_window_batches_a_tiles_mirrorings():
    """A tile's mirrored copies go through the network together, ``sw_batch_size`` samples per forward (on the CPU
    at least 2: torch's single-sample 3D convolution is its slow path); the result is the mean over mirrorings."""
    from inference.predictor import _forward_plan, mirror_axes, nnunet_sliding_window

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _forward_plan(1, 8, 1, cpu) == (1, 2) and _forward_plan(1, 8, 1, cuda) == (1, 1)
    assert _forward_plan(1, 8, 4, cpu) == (1, 4) and _forward_plan(1, 8, 16, cpu) == (2, 8)
    assert _forward_plan(1, 1, 1, cpu) == (2, 1) and _forward_plan(140, 4, 64, cpu) == (1, 1)  # 2D: Z slices a tile
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, padding=1).eval()
    sizes = []
    conv.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    flips = [tuple(a - 1 for a in axes) for axes in mirror_axes("3d")]  # spatial axes, 0-based
    x = torch.randn(1, 2, 8, 10, 6)
    with torch.no_grad():  # one tile (the image is the tile): the mean over the mirrorings
        expected = sum(conv(x.flip([a + 2 for a in f])).flip([a + 2 for a in f]) for f in flips) / len(flips)
    for sw_batch_size, batch in ((1, 2), (4, 4), (8, 8)):
        sizes.clear()
        out = nnunet_sliding_window(conv, x, (8, 10, 6), sw_batch_size=sw_batch_size, mirror=flips)
        assert sizes == [batch] * (8 // batch)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
