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
from inference.postprocess import PostprocessRule, case_table, choose_rule, remove_small_components
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


def test_a_region_ensemble_averages_sigmoids_not_logits():
    """Three region-based members whose logits are moderate (|logit| <= 6): the mean of their sigmoids and the
    sigmoid of their mean logit fall on different sides of 0.5 on many voxels (e.g. logits 10, -2, -2: mean logit
    2 > 0, mean sigmoid 0.41 < 0.5), so the painted labels tell the two apart. Two members could not: for two
    logits a, b, sigmoid(a) + sigmoid(b) > 1 exactly when a + b > 0."""
    codes = 64

    class Table(torch.nn.Module):  # region logits looked up per voxel from the code stored in channel 0
        def __init__(self, table):
            super().__init__()
            self.register_buffer("table", table)  # (codes, 3)

        def forward(self, x):
            return self.table[x[:, 0].round().long().clamp(0, codes - 1)].permute(0, 4, 1, 2, 3)

    gen = torch.Generator().manual_seed(3)
    tables = [torch.rand((codes, 3), generator=gen) * 12 - 6 for _ in range(3)]
    tables[0][:8] = torch.tensor([10.0, 10.0, 10.0])  # the known case above, and its mirror image
    tables[1][:8] = tables[2][:8] = torch.tensor([-2.0, -2.0, -2.0])
    tables[0][8:16] = torch.tensor([-10.0, -10.0, -10.0])
    tables[1][8:16] = tables[2][8:16] = torch.tensor([2.0, 2.0, 2.0])
    rng = np.random.default_rng(2)
    code = rng.integers(0, codes, size=(10, 19, 17))
    image = np.zeros((4, *code.shape), np.float32)
    image[3] = code
    settings = InferenceSettings("3d", (8, 16, 16), overlap=0.25)
    ensemble = Predictor([Predictor.from_model(Table(t), ("flair",), settings, regions=CLASSIC).members[0]
                          for t in tables], settings)
    labels, probs = ensemble.predict(image, probabilities=True)

    per_voxel = torch.stack([t[torch.from_numpy(code)] for t in tables]).permute(0, 4, 1, 2, 3)  # (3, 3, *shape)
    mean_sigmoid = torch.sigmoid(per_voxel).mean(0)
    np.testing.assert_allclose(probs, mean_sigmoid.numpy(), rtol=1e-5, atol=1e-6)
    expected = paint_regions(mean_sigmoid, CLASSIC).numpy()
    wrong = paint_regions(torch.sigmoid(per_voxel.mean(0)), CLASSIC).numpy()  # averaging logits
    assert (expected != wrong).mean() > 0.05, "the case must tell the two averages apart"
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels[(code < 8)])) == {0} and set(np.unique(labels[(code >= 8) & (code < 16)])) == {3}


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


def _box_label(shape, boxes):
    """A label map of (class, box) pairs painted in order."""
    out = np.zeros(shape, np.uint8)
    for cls, box in boxes:
        out[box] = cls
    return out


def test_the_et_threshold_is_strict_at_its_own_value():
    """An ET of exactly the threshold's size is believed, one voxel less is not (``< threshold``), in the rule and in
    the choice: a false 30-voxel ET (switching helps from threshold 40 on, not at 30) and a true 130-voxel ET
    (switching hurts from 140 on, not at 130): the best thresholds are 40..130 and 40 is chosen."""
    shape = (24, 24, 24)
    wt = (slice(2, 22),) * 3
    core = (slice(6, 18),) * 3
    truth = _box_label(shape, [(2, wt), (1, core)])
    pred_a = truth.copy()
    pred_a[10:12, 10:13, 10:15] = 3  # 30 voxels of ET where the truth has NCR
    truth_b = truth.copy()
    truth_b[10:12, 7:12, 7:18] = 3  # 110 voxels ...
    truth_b[12, 7:12, 7:11] = 3  # ... + 20 = 130
    pred_b = truth_b.copy()
    assert int((pred_a == 3).sum()) == 30 and int((truth_b == 3).sum()) == 130
    for size, pred in ((30, pred_a), (130, pred_b)):
        np.testing.assert_array_equal(PostprocessRule(size).apply(pred), pred)  # exactly the threshold: kept
        switched = PostprocessRule(size + 1).apply(pred)
        np.testing.assert_array_equal(switched, np.where(pred == 3, 1, pred))  # one above: ET -> NCR
    rule, with_rule, without = choose_rule([case_table(pred_a, truth), case_table(pred_b, truth_b)])
    assert rule == PostprocessRule(40, ())
    assert with_rule == pytest.approx(1.0) and without < with_rule
    np.testing.assert_array_equal(rule.apply(pred_a), truth)
    np.testing.assert_array_equal(rule.apply(pred_b), truth_b)


def test_component_removal_is_26_connected_strict_and_per_region():
    """Known answers for remove_small_components and the WT, TC and ET removals: components touching by a corner or
    an edge only are one component (26-connectivity); a component of exactly the size is kept; a removed TC
    island becomes edema (TC's parent), a removed ET island NCR (ET's parent), a removed WT island background."""
    shape = (20, 20, 20)
    # WT: two 8-voxel cubes touching by a corner (16 voxels together), two touching by an edge, a lone cube
    wt = _box_label(shape, [(2, (slice(0, 2),) * 3), (2, (slice(2, 4),) * 3),
                            (2, (slice(10, 12), slice(0, 2), slice(0, 2))),
                            (2, (slice(12, 14), slice(2, 4), slice(0, 2))),
                            (2, (slice(16, 18), slice(16, 18), slice(16, 18)))])
    kept = remove_small_components(wt.copy(), (1, 2, 3), 16, 0)  # each pair is 16 voxels: kept; the lone cube not
    np.testing.assert_array_equal(kept, np.where(np.arange(20)[:, None, None] >= 16, 0, wt))
    np.testing.assert_array_equal(remove_small_components(wt.copy(), (1, 2, 3), 17, 0), np.zeros(shape, np.uint8))
    np.testing.assert_array_equal(remove_small_components(wt.copy(), (1, 2, 3), 8, 0), wt)  # exactly 8: kept
    np.testing.assert_array_equal(PostprocessRule(0, (("wt", 16),)).apply(wt), kept)

    # a tumour: edema around a core of NCR with an ET inside, an 8-voxel NCR island and an 8-voxel ET island in
    # the edema (each also a TC component), and a 4-voxel ET island touching the core's ET by a corner only
    tumour = _box_label(shape, [(2, (slice(1, 19),) * 3), (1, (slice(4, 12),) * 3), (3, (slice(6, 10),) * 3),
                                (1, (slice(14, 16),) * 3), (3, (slice(14, 16), slice(2, 4), slice(14, 16))),
                                (3, (slice(10, 11), slice(10, 12), slice(10, 12)))])  # touches (9, 9, 9)
    et_core = (slice(6, 10),) * 3
    island_ncr, island_et = (slice(14, 16),) * 3, (slice(14, 16), slice(2, 4), slice(14, 16))
    expected_tc = tumour.copy()
    expected_tc[island_ncr] = 2
    expected_tc[island_et] = 2  # TC's parent: edema, whatever TC class the island had
    np.testing.assert_array_equal(PostprocessRule(0, (("tc", 9),)).apply(tumour), expected_tc)
    expected_et = tumour.copy()
    expected_et[island_et] = 1  # ET's parent: NCR; the corner-touching ET is part of the core's ET (64 + 4)
    np.testing.assert_array_equal(PostprocessRule(0, (("et", 9),)).apply(tumour), expected_et)
    assert int((tumour[et_core] == 3).sum()) == 64
    expected_et_big = expected_et.copy()
    expected_et_big[tumour == 3] = 1  # 68 voxels of connected ET: removed at 69, kept at 68
    np.testing.assert_array_equal(PostprocessRule(0, (("et", 69),)).apply(tumour), expected_et_big)
    np.testing.assert_array_equal(PostprocessRule(0, (("et", 68),)).apply(tumour), expected_et)


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
