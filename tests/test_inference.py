"""Sliding-window inference and reassembly (3D windows, 2D slice by slice), efficiency measurement
failures, and the configuration record."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import experiment_runner as er
from evaluation import efficiency
from evaluation.efficiency import count_flops
from inference.predictor import cosine_weight_map, sliding_window_predict


class LabelEcho(nn.Module):
    """Logits whose argmax is the integer stored in input channel 0 (any number of spatial dims)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, 0].round().long().clamp(0, 3)
        return nn.functional.one_hot(labels, 4).movedim(-1, 1).float() * 10.0


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(19, 45, 37)).astype(np.uint8)  # odd sizes: partial windows, padding
    image = np.stack([label.astype(np.float32), rng.normal(size=label.shape).astype(np.float32)])
    return image, label


@pytest.mark.parametrize("dim,patch", [("3d", (16, 16, 16)), ("3d", (32, 64, 64)), ("2d", (16, 16)), ("2d", (64, 64))])
def test_predict_volume_reassembles_every_voxel(volume, dim, patch):
    image, label = volume
    pred = er.predict_volume(LabelEcho(), image, dim, patch, overlap=0.25, device=torch.device("cpu"))
    assert pred.shape == label.shape and pred.dtype == np.uint8
    np.testing.assert_array_equal(pred, label)


def test_two_d_inference_sees_one_slice_at_a_time(volume):
    image, _ = volume
    seen = []

    class Probe(LabelEcho):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return super().forward(x)

    er.predict_volume(Probe(), image, "2d", (32, 32), overlap=0.1, device=torch.device("cpu"))
    assert all(len(s) == 4 and s[1] == 2 for s in seen)  # (batch of slices, C, Y, X)


def test_cosine_weight_map_is_positive_peaked_and_symmetric():
    w = cosine_weight_map((8, 6, 5))
    assert w.shape == (8, 6, 5) and (w > 0).all()
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1)) and torch.allclose(w, w.flip(2))
    assert w.max() == w[3:5, 2:4, 2].max() and w.min() < 0.1 * w.max()


def test_sliding_window_handles_an_image_smaller_than_the_roi():
    x = torch.zeros(1, 2, 10, 12, 14)
    x[0, 0, 3:6, 4:8, 5:9] = 2
    out = sliding_window_predict(LabelEcho(), x, (16, 16, 16), overlap=0.1)
    assert out.shape == (1, 4, 10, 12, 14)
    assert torch.equal(out.argmax(1), x[:, 0].long())


def test_flops_count_a_known_convolution():
    conv = nn.Conv3d(2, 4, kernel_size=3, padding=1, bias=False)
    # 2 FLOPs per multiply-accumulate: out voxels x out channels x in channels x 27
    assert count_flops(conv, (1, 2, 8, 8, 8)) == 2 * 8**3 * 4 * 2 * 27


def test_out_of_memory_during_measurement_leaves_empty_values_and_a_reason(monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(efficiency, "measure_latency", oom)
    cfg = er.ExperimentConfig(dim="3d", patch_size=[32, 32, 32], models=["unet3d_xs"], dataset_version="synthetic")
    values, stages, notes = er.measure_efficiency("unet3d_xs", cfg, torch.device("cpu"))
    assert values["params"] > 0 and values["flops"] > 0
    assert math.isnan(values["latency_ms"]) and math.isnan(values["latency_ms_std"])
    assert "latency: OutOfMemoryError" in notes and stages == []


def test_config_rejects_bad_values_with_clear_messages():
    with pytest.raises(ValueError, match="--dim"):
        er.ExperimentConfig(dim="4d")
    with pytest.raises(ValueError, match="--dataset_version"):
        er.ExperimentConfig(dataset_version="brats2030")
    with pytest.raises(ValueError, match="--overlap"):
        er.ExperimentConfig(overlap=1.0)
    assert er.ExperimentConfig(dim="2d", patch_size=[8, 64, 96]).spatial_patch == (64, 96)


class FakeCache:
    """The three accessors evaluate_model reads, over in-memory volumes."""

    def __init__(self, volumes):
        self.volumes = volumes

    def image(self, case_id):
        return self.volumes[case_id][0]

    def label(self, case_id):
        return self.volumes[case_id][1]

    def spacing(self, case_id):
        return (1.0, 1.0, 1.0)


class GatedEcho(LabelEcho):
    """LabelEcho with a per-forward 'modality attention' depending on the window's content."""

    modality_names = ("t1", "t1ce", "t2", "flair")

    def __init__(self, gated: bool = True):
        super().__init__()
        self.gated, self.modality_weights, self.log = gated, None, []

    def forward(self, x):
        if self.gated:
            self.modality_weights = torch.softmax(x.mean(dim=tuple(range(2, x.ndim))), dim=1)
            self.log.append(self.modality_weights.mean(0))
        return super().forward(x)


def test_modality_weights_are_averaged_over_every_window_of_a_case():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, size=(20, 40, 40)).astype(np.uint8)
    image = np.concatenate([label[None].astype(np.float32), rng.normal(size=(3, *label.shape)).astype(np.float32)])
    model = GatedEcho()
    settings = er.InferenceSettings("3d", (16, 16, 16), overlap=0.25)
    result = er.evaluate_model(er.Predictor.from_model(model, model.modality_names, settings),
                               FakeCache({"c1": (image, label)}), ["c1"], progress=False)
    assert len(model.log) > 2, "several windows"
    expected = torch.stack(model.log).mean(0)
    got = [result.modality_weights[m][0] for m in model.modality_names]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)
    assert result.per_case[0]["dice_wt"] == 1.0

    ungated = er.evaluate_model(er.Predictor.from_model(GatedEcho(gated=False), model.modality_names, settings),
                                FakeCache({"c1": (image, label)}), ["c1"], progress=False)
    assert ungated.modality_weights == {}
