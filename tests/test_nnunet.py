"""nnU-Net v2 in the suite: its networks (models/nnunet.py), deep supervision (training/deep_supervision.py),
``--recipe nnunet``, and parity with nnunetv2's own planner and losses (run in ``.venv-nnunet`` by subprocess;
those tests skip, naming the command that creates it, where it is missing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import integrated_experiment
from experiment.config import RECIPES, build_parser, given_fields
from models import get_model, model_spec
from models.nnunet import build_plain_unet, build_resenc_unet, plan_topology
from training.deep_supervision import DeepSupervisionLoss, downsample_label, ds_scales, ds_weights
from training.losses import make_loss
from utils.labels import CLASSIC
from utils.regions import region_order_table, region_targets

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "nnunet_scripts"
NNUNET_INSTALL = (
    "python3 -m venv .venv-nnunet && .venv-nnunet/bin/pip install torch==2.13.0 && .venv-nnunet/bin/pip install "
    "--no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 && .venv-nnunet/bin/pip install acvl-utils "
    "batchgenerators batchgeneratorsv2 scikit-learn scikit-image SimpleITK pandas tifffile nibabel matplotlib seaborn "
    "imagecodecs yacs einops blosc2 tqdm scipy numpy requests graphviz"
)


def nnunet_python() -> Path:
    """The nnU-Net venv's interpreter: $NNUNET_PYTHON, else .venv-nnunet at the repository root; skip without."""
    path = Path(os.environ.get("NNUNET_PYTHON", ROOT / ".venv-nnunet" / "bin" / "python"))
    if not path.is_file():
        pytest.skip(f"nnU-Net v2 venv missing ({path}); create it at the repository root with: {NNUNET_INSTALL}")
    probe = subprocess.run([str(path), "-c", "import nnunetv2, dynamic_network_architectures"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{path} cannot import nnunetv2; recreate it with: {NNUNET_INSTALL}")
    return path


def run_nnunet(script: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(nnunet_python()), str(SCRIPTS / script), *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- networks and topology
@pytest.mark.parametrize("name, published", [("nnunet", 31_199_796), ("nnunet_resenc_m", 102_353_972)])
def test_published_counts_at_128_cubed_with_4_channels_and_4_classes(name, published):
    spec = model_spec(name)
    assert spec.published is not None and spec.published.params == published
    assert spec.deep_supervision
    with torch.device("meta"):
        model = get_model(name, "3d", (128, 128, 128), 4)
    assert spec.in_channels == 4
    assert n_params(model) == published


def test_resenc_presets_are_one_network_at_a_patch():
    with torch.device("meta"):
        counts = {n_params(get_model(f"nnunet_resenc_{p}", "3d", (64, 64, 64), 4)) for p in ("m", "l", "xl")}
    assert len(counts) == 1


def test_topology_known_answers():
    iso = plan_topology((128, 128, 128))
    assert iso.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5
    assert iso.kernel_sizes == ((3, 3, 3),) * 6
    assert iso.features == (32, 64, 128, 256, 320, 320)
    brats = plan_topology((112, 160, 128))  # nnU-Net's 3d_fullres patch on BraTS-shaped data: Z stops at 7
    assert brats.strides[-1] == (1, 2, 2) and brats.pools_per_axis == (4, 5, 5)
    # 5 mm slices: in-plane pooling first, 1x3x3 kernels until the spacings are within a factor 2
    aniso = plan_topology((16, 128, 128), (5.0, 1.0, 1.0))
    assert aniso.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert aniso.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert aniso.divisible_by == (4, 32, 32)
    flat = plan_topology((192, 160))
    assert flat.features == (32, 64, 128, 256, 512, 512) and flat.strides == ((1, 1),) + ((2, 2),) * 5
    assert plan_topology((18, 100, 100)).padded_patch == (20, 112, 112)  # nnU-Net's pad_shape


def test_a_patch_nnunet_would_pad_is_refused_with_the_padded_one():
    with pytest.raises(ValueError, match=r"\(20, 112, 112\)"):
        get_model("nnunet", "3d", (18, 100, 100), 4)


@pytest.mark.parametrize("name", ["nnunet", "nnunet_resenc_m", "dynunet"])
def test_builds_in_2d_and_3d_with_the_runs_channels(name):
    for dim, patch in (("2d", (32, 32)), ("3d", (32, 32, 32))):
        model = get_model(name, dim, patch, 3).eval()
        x = torch.randn(1, model_spec(name).in_channels, *patch)
        with torch.no_grad():
            assert model(x).shape == (1, 3, *patch)


@pytest.mark.parametrize("name", ["nnunet", "nnunet_resenc_m", "dynunet"])
def test_deep_supervision_outputs_in_training_full_resolution_in_eval_and_weights_load_either_way(name):
    patch = (32, 32)
    ds = get_model(name, "2d", patch, 3, deep_supervision=True).train()
    x = torch.randn(2, 4, *patch)
    outs = ds(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 32), (16, 16), (8, 8)]
    plain = get_model(name, "2d", patch, 3)
    plain.load_state_dict(ds.state_dict())  # strict: the same tensors with and without deep supervision
    ds.load_state_dict(plain.state_dict())
    assert isinstance(plain.train()(x), torch.Tensor)
    ds.eval()
    plain.eval()
    with torch.no_grad():
        full = ds(x)
        assert isinstance(full, torch.Tensor) and torch.equal(full, plain(x))


# ----------------------------------------------------------------------------- deep supervision
def test_ds_weights_and_scales_known_answers():
    assert ds_weights(5) == pytest.approx((8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0))
    assert ds_weights(1) == (1.0,)
    assert ds_scales(((1, 1, 1), (2, 2, 2), (1, 2, 2))) == [(1.0, 1.0, 1.0), (0.5, 0.5, 0.5)]


def test_downsampling_commutes_with_region_conversion():
    label = torch.randint(0, 4, (2, 16, 12, 10))
    table = region_order_table(CLASSIC)
    for size in ((8, 6, 5), (4, 3, 3)):
        convert_first = downsample_label(region_targets(label, CLASSIC, table).to(torch.uint8), size)
        downsample_first = region_targets(downsample_label(label, size), CLASSIC, table).to(torch.uint8)
        assert torch.equal(convert_first, downsample_first)


@pytest.mark.parametrize("region_based", [False, True])
def test_ds_loss_gradients_reach_every_weighted_scale(region_based):
    model = get_model("nnunet", "2d", (32, 32), CLASSIC.region_channels if region_based else 4,
                      deep_supervision=True).train()
    loss_fn = make_loss("nnunet_v2", region_based, CLASSIC, deep_supervision=True)
    assert isinstance(loss_fn, DeepSupervisionLoss)
    label = torch.randint(0, 4, (2, 32, 32))
    loss_fn(model(torch.randn(2, 4, 32, 32)), label).backward()
    heads = model.decoder.seg_layers  # lowest resolution first; the decoder's outputs in reverse
    grads = [h.weight.grad for h in heads][::-1]  # full resolution first, as the loss's weights
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:-1])
    assert grads[-1] is None  # weight 0: nnU-Net leaves the lowest resolution out


# ----------------------------------------------------------------------------- the recipe
def _config(argv):
    return integrated_experiment.config_from_args(build_parser().parse_args(argv), given_fields(argv))


def test_recipe_sets_nnunets_trainer_and_flags_given_win():
    cfg = _config(["--dataset_version", "synthetic", "--recipe", "nnunet"])
    assert (cfg.dim, cfg.models, cfg.optimizer, cfg.lr, cfg.weight_decay) == ("3d", ["nnunet"], "sgd", 1e-2, 3e-5)
    assert (cfg.epochs, cfg.iters_per_epoch, cfg.augmentation, cfg.loss) == (1000, 250, "nnunet", "nnunet_v2")
    assert cfg.deep_supervision and cfg.region_based and cfg.postprocess and not cfg.batch_dice
    assert cfg.patch_size == RECIPES["nnunet"]["3d"]["patch_size"] and cfg.batch_size == 2
    assert cfg.to_dict()["recipe"] == "nnunet"
    assert (cfg.overlap, cfg.blending) == (0.5, "nnunet")  # nnUNetPredictor's sliding window, wherever the run predicts
    given = _config(["--dataset_version", "synthetic", "--recipe", "nnunet", "--blending", "cosine"])
    assert given.blending == "cosine"
    # a flag given with the recipe's own default value still counts as given
    cfg = _config(["--dataset_version", "synthetic", "--recipe", "nnunet", "--epochs", "10", "--optimizer", "adamw",
                   "--models", "unet3d_xs", "--dim", "2d", "--use_standard_loss", "--batch_size", "1"])
    assert (cfg.epochs, cfg.optimizer, cfg.lr, cfg.loss, cfg.dim, cfg.batch_size) == (10, "adamw", 1e-3, "standard",
                                                                                       "2d", 1)
    assert cfg.patch_size == RECIPES["nnunet"]["2d"]["patch_size"]
    assert not cfg.deep_supervision  # unet3d_xs has one output: the recipe's deep supervision needs every model's
    with pytest.raises(ValueError, match="deep_supervision"):
        _config(["--dataset_version", "synthetic", "--recipe", "nnunet", "--models", "unet3d_xs", "--deep_supervision"])
    # the recipe's switches can be undone
    cfg = _config(["--dataset_version", "synthetic", "--recipe", "nnunet", "--no_postprocess", "--no_region_based",
                   "--no_deep_supervision", "--batch_dice"])
    assert not (cfg.postprocess or cfg.region_based or cfg.deep_supervision) and cfg.batch_dice


def test_no_recipe_changes_nothing():
    assert _config(["--dataset_version", "synthetic"]).to_dict() == _config(
        ["--dataset_version", "synthetic"]).to_dict()
    cfg = _config(["--dataset_version", "synthetic"])
    assert cfg.recipe is None and not cfg.deep_supervision and cfg.optimizer == "adamw" and cfg.epochs == 10


def test_recipe_trains_through_the_cli_and_predict_uses_its_checkpoint(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, str(ROOT / "integrated_experiment.py"), "--dataset_version", "synthetic",
             "--data_path", str(tmp_path / "data"), "--synthetic_cases", "6", "--synthetic_difficulty", "easy",
             "--synthetic_shape", "40", "40", "32", "--recipe", "nnunet", "--epochs", "1", "--iters_per_epoch", "2",
             "--patch_size", "32", "32", "32", "--num_workers", "0", "--results_dir", str(tmp_path / "res"),
             "--no_efficiency", "--tracker", "none", "--device", "cpu"]
    done = subprocess.run(train, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp_path / "res").iterdir())
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved["recipe"] == "nnunet" and saved["deep_supervision"] and saved["region_based"]
    assert saved["iters_per_epoch"] == 2 and saved["optimizer"] == "sgd" and saved["loss"] == "nnunet_v2"
    assert (run_dir / "nnunet_seed_24_best.pth").is_file()
    case = next(p for p in (tmp_path / "data").rglob("*") if p.is_dir() and p.name.startswith("BraTS2021_0"))
    predict = [sys.executable, str(ROOT / "predict.py"), "--run_dir", str(run_dir), "--input", str(case),
               "--output", str(tmp_path / "pred"), "--device", "cpu"]
    done = subprocess.run(predict, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "pred" / f"{case.name}.nii.gz").is_file()


# ----------------------------------------------------------------------------- parity with nnunetv2
PARITY_PAIRS = [
    ((128, 128, 128), (1.0, 1.0, 1.0)),  # the suite's default patch on BraTS
    ((112, 160, 128), (1.0, 1.0, 1.0)),  # nnU-Net's BraTS-shaped 3d_fullres patch
    ((16, 128, 128), (5.0, 1.0, 1.0)),  # thick slices
    ((20, 192, 160), (3.0, 0.8, 0.8)),  # anisotropic, a patch nnU-Net pads
    ((80, 96, 64), (1.5, 1.0, 1.2)),  # mildly anisotropic
    ((192, 160), (1.0, 1.0)),  # 2D on BraTS
    ((256, 224), (0.7, 0.7)),  # 2D, finer spacing
]


def test_topology_and_parameter_counts_equal_nnunetv2s_planner(tmp_path):
    pairs = [{"patch": list(p), "spacing": list(s), "in_channels": 4, "num_classes": 4} for p, s in PARITY_PAIRS]
    (tmp_path / "in.json").write_text(json.dumps(pairs))
    run_nnunet("plan_topology.py", str(tmp_path / "work"), str(tmp_path / "in.json"), str(tmp_path / "out.json"))
    records = json.loads((tmp_path / "out.json").read_text())
    assert len(records) == 2 * len(PARITY_PAIRS)
    for rec in records:
        patch, spacing = tuple(rec["patch"]), tuple(rec["spacing"])
        topo = plan_topology(patch, spacing)
        assert list(topo.padded_patch) == rec["planned_patch"], rec  # the planner kept (padded) this patch
        assert [list(s) for s in topo.strides] == rec["strides"], rec
        assert [list(k) for k in topo.kernel_sizes] == rec["kernel_sizes"], rec
        assert list(topo.features) == rec["features"], rec
        build = build_plain_unet if rec["planner"] == "ExperimentPlanner" else build_resenc_unet
        with torch.device("meta"):
            net = build(topo.padded_patch, 4, 4, spacing=spacing)
        assert n_params(net) == rec["params"], rec


def _ds_inputs(region_based: bool, batch_dice: bool, path: Path) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(7 + region_based)
    channels = CLASSIC.region_channels if region_based else CLASSIC.num_classes
    logits = [torch.randn(2, channels, *(s // 2**i for s in (32, 24, 16)), generator=g) * 3 for i in range(4)]
    label = torch.randint(0, 4, (2, 32, 24, 16), generator=g)
    label[:, 8:20, 6:18, 4:12] = 3  # a large foreground block, so no region is empty at any scale
    # the suite's region channels in its order (WT, TC, ET), as label tuples of its classes
    regions = [tuple(sorted(CLASSIC.region_classes[key])) for key, _ in CLASSIC.region_order]
    torch.save({"logits": logits, "label": label, "regions": regions if region_based else None,
                "batch_dice": batch_dice}, path)
    return logits, label


@pytest.mark.parametrize("region_based, batch_dice", [(False, False), (False, True), (True, False), (True, True)])
def test_ds_loss_equals_nnunetv2s_deep_supervision_wrapper(tmp_path, region_based, batch_dice):
    """DeepSupervisionWrapper(DC_and_CE_loss) or (DC_and_BCE_loss) with nnU-Net's settings, built by nnU-Net's
    ``_build_loss``, on the same logits and labels. The suite's Dice term is ``1 - Dice`` and nnU-Net's ``-Dice``,
    so with Dice weight 1 and weights summing to 1 the values differ by exactly 1 (to float32 rounding); the
    gradients are the same."""
    logits, label = _ds_inputs(region_based, batch_dice, tmp_path / "in.pt")
    run_nnunet("ds_loss.py", str(tmp_path / "in.pt"), str(tmp_path / "out.pt"))
    theirs = torch.load(tmp_path / "out.pt")
    assert theirs["weights"] == pytest.approx(ds_weights(len(logits)), abs=1e-12)
    ours_logits = [x.clone().requires_grad_(True) for x in logits]
    loss = make_loss("nnunet_v2", region_based, CLASSIC, batch_dice=batch_dice, deep_supervision=True)(ours_logits,
                                                                                                       label)
    loss.backward()
    assert loss.item() - theirs["loss"].item() == pytest.approx(1.0, abs=1e-5)
    for ours, grad in zip(ours_logits, theirs["grads"]):
        if grad is None:  # the lowest resolution, weight 0, in both
            assert ours.grad is None
        else:
            torch.testing.assert_close(ours.grad, grad, rtol=1e-4, atol=1e-7)
    # the targets nnU-Net scored at each scale are ours
    table = region_order_table(CLASSIC)
    for out, target in zip(logits, theirs["targets"]):
        mine = downsample_label(label, out.shape[2:])
        mine = region_targets(mine, CLASSIC, table).bool() if region_based else mine.unsqueeze(1)
        assert torch.equal(mine.to(target.dtype), target)
