"""The training recipe: region-based outputs painted back into labels (known answers), the post-processing rule
chosen on a hand-made validation set (known answers) and applied by predict.py, nnU-Net's SGD, and a tiny run of
nnU-Net's recipe end to end (nnunet augmentation, region-based, SGD, post-processing)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import predict
from brats_data.definitions import DATASETS
from experiment.config import ExperimentConfig
from experiment.run_folder import RunFolder, UnitKey
from inference.postprocess import PostprocessRule, case_table, choose_rule
from inference.predictor import InferenceSettings, Predictor
from losses import RegionDiceBCELoss, make_loss, paint_regions, region_targets
from utils.checkpoint import load_checkpoint
from utils.labels import CLASSIC

SCHEMES = {"classic": CLASSIC, "gli_post": DATASETS["brats2024"].scheme, "ped": DATASETS["brats_ped"].scheme}


# ----------------------------------------------------------------------------- region-based
@pytest.mark.parametrize("name", list(SCHEMES))
def test_the_true_regions_paint_back_the_label_map(name):
    scheme = SCHEMES[name]
    rng = np.random.default_rng(0)
    label = torch.from_numpy(rng.integers(0, scheme.num_classes, size=(2, 6, 7, 8)))
    targets = region_targets(label, scheme)
    assert targets.shape == (2, scheme.region_channels, 6, 7, 8)
    for b in range(2):
        np.testing.assert_array_equal(paint_regions(targets[b], scheme).numpy(), label[b].numpy())


def test_region_painting_follows_nnunets_order_on_a_hand_made_case():
    """Five voxels; region probabilities (WT, TC, ET) by hand -> nnU-Net's regions_class_order (2, 1, 3)."""
    probs = torch.tensor([[0.9, 0.9, 0.9, 0.2, 0.6],   # WT
                          [0.1, 0.8, 0.7, 0.7, 0.4],   # TC
                          [0.0, 0.3, 0.9, 0.1, 0.9]])  # ET
    np.testing.assert_array_equal(paint_regions(probs, CLASSIC).numpy(), [2, 1, 3, 1, 3])
    # PED: WT paints ED 4, TC paints NETC 2, CC 3, ET 1 (ET wins over the cyst where both are predicted)
    ped = SCHEMES["ped"]
    probs = torch.tensor([[0.9, 0.9, 0.9, 0.9], [0.1, 0.9, 0.9, 0.9], [0.0, 0.1, 0.9, 0.9], [0.0, 0.1, 0.1, 0.9]])
    np.testing.assert_array_equal(paint_regions(probs, ped).numpy(), [4, 2, 3, 1])


def test_region_loss_is_dice_plus_bce_of_the_region_targets():
    scheme = CLASSIC
    torch.manual_seed(0)
    label = torch.randint(0, 4, (2, 8, 8, 8))
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    loss = make_loss("standard", region_based=True, scheme=scheme)
    assert isinstance(loss, RegionDiceBCELoss)
    value = loss(logits, label)
    target = region_targets(label, scheme)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - ((2 * (p * target).sum((0, 2, 3, 4)) + 1e-5) / (p.sum((0, 2, 3, 4)) + target.sum((0, 2, 3, 4)) + 1e-5))
    torch.testing.assert_close(value, 0.5 * dice.mean() + 0.5 * bce)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    perfect = (target * 40 - 20).detach()  # logits far on the right side of every region
    assert loss(perfect, label) < 0.01


def test_a_region_based_predictor_averages_sigmoids_and_paints():
    class Echo(torch.nn.Module):  # region logits: +10 inside the regions of the label stored in channel 0
        def forward(self, x):
            label = x[:, 0].round().long().clamp(0, 3)
            return (region_targets(label, CLASSIC) * 20 - 10).float()

    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, size=(10, 19, 17)).astype(np.uint8)
    image = np.zeros((4, *label.shape), np.float32)
    image[3] = label
    settings = InferenceSettings("3d", (8, 16, 16), overlap=0.25)
    single = Predictor.from_model(Echo(), ("flair",), settings, regions=CLASSIC)
    np.testing.assert_array_equal(single.labels(image), label)
    mirrored = Predictor(single.members * 2, settings.with_(mirror=True))
    labels, probs = mirrored.predict(image, probabilities=True)
    np.testing.assert_array_equal(labels, label)
    assert probs.shape == (3, *label.shape) and probs.max() <= 1.0  # sigmoids, one per region
    softmax_member = Predictor.from_model(Echo(), ("flair",), settings).members[0]
    with pytest.raises(ValueError, match="region-based"):
        Predictor([single.members[0], softmax_member], settings)


# ----------------------------------------------------------------------------- post-processing
def _blob(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_the_et_threshold_chosen_on_a_hand_made_validation_set_is_the_known_one():
    """Case A: a 27-voxel ET predicted inside the core where the truth has none: switching it to NCR helps for any
    threshold above 27. Case B: a true 123-voxel ET predicted right: switching hurts from 130 on. The best
    thresholds are 30..120; the smallest, 30, is chosen; removing components does not beat it."""
    shape = (24, 24, 24)
    core = _blob(shape, (12, 12, 12), 5)
    truth_a = np.where(_blob(shape, (12, 12, 12), 8), 2, 0).astype(np.uint8)
    truth_a[core] = 1
    pred_a = truth_a.copy()
    small_et = np.zeros(shape, bool)
    small_et[11:14, 11:14, 11:14] = True  # 27 voxels
    pred_a[small_et] = 3
    truth_b = np.where(_blob(shape, (12, 12, 12), 8), 2, 0).astype(np.uint8)
    truth_b[core] = 1
    et_b = _blob(shape, (12, 12, 12), 3)  # 123 voxels
    truth_b[et_b] = 3
    pred_b = truth_b.copy()
    assert int(small_et.sum()) == 27 and int(et_b.sum()) == 123
    tables = [case_table(pred_a, truth_a), case_table(pred_b, truth_b)]
    rule, with_rule, without = choose_rule(tables)
    assert rule == PostprocessRule(30, ())
    assert with_rule == pytest.approx(1.0) and without < with_rule
    np.testing.assert_array_equal(rule.apply(pred_a), truth_a)
    np.testing.assert_array_equal(rule.apply(pred_b), truth_b)


def test_small_components_are_removed_when_that_helps_validation():
    """A spurious 8-voxel WT island far from the tumour in every case: removing WT components under 250 voxels helps;
    the tumour itself (> 250 voxels) stays."""
    shape = (32, 32, 32)
    truth = np.where(_blob(shape, (16, 16, 16), 7), 2, 0).astype(np.uint8)
    truth[_blob(shape, (16, 16, 16), 4)] = 1
    pred = truth.copy()
    pred[1:3, 1:3, 1:3] = 2
    rule, with_rule, without = choose_rule([case_table(pred, truth)] * 3)
    assert rule.min_component == (("wt", 250),) and rule.et_threshold == 0
    assert with_rule == pytest.approx(1.0) and without < with_rule
    np.testing.assert_array_equal(rule.apply(pred), truth)
    assert PostprocessRule.from_dict(json.loads(rule.json())) == rule


# ----------------------------------------------------------------------------- end to end
def _recipe_config(data_root: Path, results: Path, **changes) -> ExperimentConfig:
    base = dict(data_path=str(data_root), dataset_version="synthetic", synthetic_cases=8, synthetic_shape=[40, 40, 32],
                synthetic_difficulty="easy", cache_dir=str(data_root / "cache"), epochs=2, models=["unet3d_xs"],
                dim="3d", patch_size=[32, 32, 32], num_workers=0, device="cpu", results_dir=str(results),
                iters_per_epoch=3, batch_size=2, seeds=[24], measure_efficiency=False)
    return ExperimentConfig(**{**base, **changes})


@pytest.mark.slow
def test_nnunets_recipe_runs_end_to_end_and_predict_applies_the_rule(tmp_path):
    from experiment_runner import run_integrated_experiment

    cfg = _recipe_config(tmp_path / "data", tmp_path / "results", augmentation="nnunet", region_based=True,
                         optimizer="sgd", postprocess=True, loss="standard")
    assert (cfg.lr, cfg.weight_decay) == (1e-2, 3e-5)  # nnU-Net's SGD defaults
    summary = run_integrated_experiment(cfg, callbacks=[])
    assert summary.exit_code == 0, summary.failed
    run = RunFolder(summary.run_dir)
    record = json.loads((summary.run_dir / "config.json").read_text())
    assert record["config"]["augmentation_params"]["p_rotation"] == 0.2 and record["config"]["region_based"]
    assert "unet3d_xs_seed_24" in record["postprocess"]
    ckpt = load_checkpoint(run.best_checkpoint(UnitKey("unet3d_xs", 24, 0)))
    assert ckpt["region_based"] and ckpt["num_classes"] == 3 and "postprocess" in ckpt
    results = pd.read_csv(summary.run_dir / "integrated_experiment_results.csv")
    assert PostprocessRule.from_dict(json.loads(results["postprocess_rule"].iloc[0])) == \
        PostprocessRule.from_dict(ckpt["postprocess"])
    assert results["test_dice_wt"].notna().all()

    # a rule that switches every ET: predict.py applies it (no ET left), --no_postprocess does not
    forced = PostprocessRule(10**9, ())
    run.record_postprocess(UnitKey("unet3d_xs", 24, 0), forced.to_dict())
    cases = Path(cfg.data_path) / "BRATS_SYNTHETIC" / "BraTS2021_Training_Data"
    common = ["--run_dir", str(summary.run_dir), "--input", str(cases), "--device", "cpu"]
    assert predict.main(common + ["--output", str(tmp_path / "pp")]) == 0
    assert predict.main(common + ["--output", str(tmp_path / "raw"), "--no_postprocess"]) == 0
    definition = DATASETS["synthetic"]
    for path in sorted((tmp_path / "raw").glob("*.nii.gz")):
        raw = definition.map_labels(np.asanyarray(nib.load(str(path)).dataobj))
        done = definition.map_labels(np.asanyarray(nib.load(str(tmp_path / "pp" / path.name)).dataobj))
        np.testing.assert_array_equal(done, forced.apply(raw))
