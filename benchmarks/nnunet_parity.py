"""Side-by-side training of nnU-Net v2 itself (nnunetv2 2.8.1, in its own environment) and the suite's
``--recipe nnunet`` on the same synthetic data set, splits, patch, batch and optimizer steps, 3 seeds each, CPU.

    python benchmarks/nnunet_parity.py            # full: 50 cases, 10 x 25 steps per unit (under an hour, 2 cores)
    python benchmarks/nnunet_parity.py --quick    # 20 cases, 2 x 5 steps per unit (under 10 minutes)

Needs the nnU-Net v2 reference environment (``tests/nnunet_ref.py``; its side is ``nnunet_parity_nnunet.py``).
Everything is written under ``--workdir`` (default: a temporary folder, removed at the end), never in the repository.

1. Synthetic cases (``brats_data.synthetic``) are written once in nnU-Net's raw layout,
   ``Dataset987_BraTSSynthetic/{imagesTr,labelsTr,dataset.json}`` with the labels and regions of nnU-Net's BraTS
   conversion (1 edema, 2 necrosis / non-enhancing, 3 enhancing; regions WT [1,2,3], TC [2,3], ET [3],
   ``regions_class_order`` (1,2,3)). The suite reads the same folder (``--dataset_version nnunet``).
2. nnU-Net plans and preprocesses it (fingerprint, ``ExperimentPlanner``, 3d_fullres); its patch and batch are
   passed to the suite (``--patch_size``, ``--batch_size``).
3. Splits: the suite's own splits (80/10/10 per seed, by ``experiment.data.make_all_splits``, checked against each
   run's ``splits.json``); nnU-Net's ``splits_final.json`` holds one fold per seed whose ``train`` is the suite's
   train cases and ``val`` the suite's val cases (nnU-Net only logs its pseudo-Dice on them; the suite picks its best
   epoch and post-processing on them); the test cases are held out of both.
4. Per seed, alternately suite first and nnU-Net first: ``integrated_experiment.py --recipe nnunet`` and
   ``nnUNetTrainer`` with ``--epochs``/``num_epochs`` x ``--iters_per_epoch``/``num_iterations_per_epoch`` steps at
   the same batch (nnU-Net validates ``num_val_iterations_per_epoch`` = iters / 5 patches per epoch, its default
   ratio). nnU-Net keeps its final weights and predicts the test cases with ``nnUNetPredictor`` (Gaussian, step 0.5,
   mirroring); the suite keeps its best validation epoch and exports its test predictions with
   ``evaluate_experiment.py --export_predictions`` (with the post-processing rule the recipe chose, and
   ``--no_postprocess``), and, to tell training from inference, predicts them once more with nnU-Net's inference
   (``Predictor`` with ``blending="nnunet"``, mirroring, no post-processing).
5. Both sides' NIfTI label maps are scored with the suite's ``metrics.brats_region_metrics`` against the same
   reference files (``labelsTr``).

Both sides: CPU, ``--threads`` threads (default 2, OMP/MKL and torch; on the 2-core machine one thread took 2.4x as
long per step), data loading in the training process (suite ``--num_workers 0``, nnU-Net ``nnUNet_n_proc_DA=0``).
Time per step: each epoch's training pass (each batch's loading and augmentation, forward, backward, optimizer step)
over its steps; preprocessing, validation, checkpoints and prediction are not in it (suite: ``train_time_s`` of its
``all_epochs_results.csv``; nnU-Net: a clock around each epoch's training loop). A side's figure is the median over
all its epochs of all seeds (a load spike from other work slows a few epochs, not the median); the overall figure
(all passes summed, over all steps) is printed beside it.

The last line printed: ``nnunet_dice=<x> suite_dice=<y> step_time_ratio=<z>``: Dice is the test Dice averaged over
WT, TC and ET and over the seeds (each seed's value the mean over its test cases); ``suite_dice`` is the recipe's
output (post-processed); ``step_time_ratio`` = the suite's median epoch seconds per step / nnU-Net's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from brats_data.definitions import dataset_json_def  # noqa: E402
from brats_data.synthetic import synthesize_case  # noqa: E402
from experiment.config import ExperimentConfig  # noqa: E402
from experiment.data import build_cache, make_all_splits  # noqa: E402
from experiment.run_folder import EPOCHS_CSV, RESULTS_CSV, SPLITS_JSON  # noqa: E402
from metrics import brats_region_metrics  # noqa: E402
from tests.nnunet_ref import SKIP_REASON, nnunet_python  # noqa: E402

DATASET_ID, DATASET_NAME = 987, "Dataset987_BraTSSynthetic"
NNUNET_SIDE = Path(__file__).with_name("nnunet_parity_nnunet.py")
# the synthetic files' values (BraTS 2021: 1 necrosis, 2 edema, 4 enhancing) -> nnU-Net's BraTS conversion
TO_NNUNET = {0: 0, 1: 2, 2: 1, 4: 3}
DATASET_JSON = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},  # MODALITIES' order
                "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
                "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz"}
MODES = {"full": {"cases": 50, "epochs": 10, "iters": 25}, "quick": {"cases": 20, "epochs": 2, "iters": 5}}
REGIONS = ("wt", "tc", "et")
SIDES = {"nnunet": "nnU-Net v2 (final weights, nnUNetPredictor)",
         "suite": "suite --recipe nnunet (best val epoch, post-processed)",
         "suite_raw": "suite --recipe nnunet, --no_postprocess",
         "suite_nnunet_inference": "suite --recipe nnunet, nnU-Net's inference (Gaussian, mirroring), no post-proc."}


def write_nifti(data: np.ndarray, path: Path) -> None:
    """1 mm isotropic NIfTI with the synthetic generator's affine."""
    img = nib.Nifti1Image(data, affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def write_nnunet_raw(raw: Path, n_cases: int, shape: tuple[int, int, int], difficulty: str) -> Path:
    """The synthetic cases (seed 0) as nnU-Net raw data: ``imagesTr/{case}_{0000..0003}.nii.gz`` (T1, T1ce, T2,
    FLAIR), ``labelsTr/{case}.nii.gz`` in nnU-Net's BraTS values and the region-based ``dataset.json``."""
    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    lut = np.zeros(256, dtype=np.uint8)
    for value, target in TO_NNUNET.items():
        lut[value] = target
    for index in range(n_cases):
        case = f"SYN_{index:03d}"
        images, seg = synthesize_case(0, index, shape, difficulty)
        for channel, volume in enumerate(images):
            write_nifti(volume, folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        write_nifti(lut[seg], folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": n_cases}, indent=2))
    return folder


def run_logged(cmd: list[str], env: dict, log: Path, cwd: Path) -> str:
    """Run ``cmd``, its output into ``log``; raise with the log's tail on failure; return stdout's last line."""
    with open(log, "w") as out:
        done = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
    text = log.read_text()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({done.returncode}); {log}:\n{text[-4000:]}")
    return text.strip().splitlines()[-1]


def thread_env(threads: int, **extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": "PASSIVE", **extra}
    env.pop("PYTHONPATH", None)
    return env


def run_nnunet(command: str, args: dict, work: Path, threads: int, tag: str) -> dict:
    """One command of the nnU-Net side in its own environment (nnU-Net's paths under ``work``)."""
    python = nnunet_python()
    if python is None:
        sys.exit(SKIP_REASON)
    paths = {name: str(work / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    # training loads its batches in its own process (0 workers); the planner sets torch's threads to this number
    workers = "0" if command == "train" else str(threads)
    env = thread_env(threads, **paths, nnUNet_n_proc_DA=workers, nnUNet_compile="f")
    path = work / "logs" / f"{tag}.json"
    path.write_text(json.dumps(args))
    # run from the work folder: no repository package shadows nnU-Net's
    line = run_logged([str(python), "-u", str(NNUNET_SIDE), command, str(path)], env, work / "logs" / f"{tag}.log",
                      work)
    return json.loads(line)


def suite_config(data: Path, work: Path, seeds: list[int]) -> ExperimentConfig:
    return ExperimentConfig(data_path=str(data), dataset_version="nnunet", dim="3d", seeds=seeds,
                            cache_dir=str(work / "suite_cache"), num_workers=0, preprocess_workers=2)


def suite_splits(data: Path, work: Path, seeds: list[int]) -> dict[int, dict]:
    """The suite's split of each seed (fold 0 of its hold-out), from the suite's own functions; builds its cache."""
    cfg = suite_config(data, work, seeds)
    cache, skipped = build_cache(cfg, progress=False)
    assert not skipped, skipped
    return {seed: splits["folds"][0] for seed, splits in zip(seeds, make_all_splits(cfg, cache).values())}


def write_splits_final(work: Path, splits: dict[int, dict]) -> None:
    """nnU-Net's ``splits_final.json``: fold k = the suite's train and val cases of the k-th seed."""
    folds = [{"train": s["train"], "val": s["val"]} for s in splits.values()]
    (work / "nnUNet_preprocessed" / DATASET_NAME / "splits_final.json").write_text(json.dumps(folds, indent=1))


def timing(epoch_seconds: list[float], epoch_steps: list[int], wall: float, loads: tuple[float, float]) -> dict:
    """A unit's clock: each epoch's training pass per step, their median, the totals, the unit's wall time and the
    1-minute load average of the machine when it started and ended."""
    per_step = [t / n for t, n in zip(epoch_seconds, epoch_steps)]
    return {"epoch_s_per_step": per_step, "s_per_step": float(np.median(per_step)), "train_s": sum(epoch_seconds),
            "steps": sum(epoch_steps), "wall_s": wall, "load": loads}


def train_suite(data: Path, work: Path, seed: int, split: dict, plan: dict, args: argparse.Namespace) -> tuple:
    """``integrated_experiment.py --recipe nnunet`` on one seed at nnU-Net's patch and batch; returns its run folder,
    its results row and its clock, after checking that it trained on ``split``."""
    results = work / "suite" / f"seed_{seed}"
    cmd = [sys.executable, str(ROOT / "integrated_experiment.py"), "--recipe", "nnunet", "--dataset_version", "nnunet",
           "--data_path", str(data), "--cache_dir", str(work / "suite_cache"),
           "--patch_size", *map(str, plan["patch_size"]), "--batch_size", str(plan["batch_size"]),
           "--epochs", str(args.epochs), "--iters_per_epoch", str(args.iters), "--seeds", str(seed),
           "--device", "cpu", "--num_workers", "0", "--no_efficiency", "--tracker", "none",
           "--results_dir", str(results)]
    t0, load = time.perf_counter(), os.getloadavg()[0]
    run_logged(cmd, thread_env(args.threads), work / "logs" / f"suite_seed{seed}.log", ROOT)
    wall = time.perf_counter() - t0
    run = next(results.glob("integrated_experiment_results_*"))
    epochs = pd.read_csv(run / EPOCHS_CSV)  # train_time_s: the epoch's training pass (trainer.py)
    fold = json.loads((run / SPLITS_JSON).read_text())[str(seed)]["folds"][0]
    assert all(fold[k] == split[k] for k in ("train", "val", "test")), f"{run}: not the split of seed {seed}"
    clock = timing(epochs["train_time_s"].tolist(), epochs["steps"].tolist(), wall, (load, os.getloadavg()[0]))
    return run, pd.read_csv(run / RESULTS_CSV).iloc[0], clock


def export_suite(run: Path) -> dict[str, Path]:
    """The run's test predictions, exported by ``evaluate_experiment.py --export_predictions`` with the recipe's
    post-processing (``post``) and with ``--no_postprocess`` (``raw``)."""
    from evaluate_experiment import main as evaluate_main

    folders = {}
    for name, extra in (("post", []), ("raw", ["--no_postprocess"])):
        if evaluate_main(["--results_dir", str(run), "--export_predictions", "--device", "cpu", *extra]) != 0:
            raise RuntimeError(f"evaluate_experiment.py --export_predictions {' '.join(extra)} failed on {run}")
        exported = run / "predictions"
        unit = next(d for d in exported.iterdir() if d.name != "references")
        folders[name] = unit.rename(run / f"predictions_{name}")
        shutil.rmtree(exported)
    return folders


def export_nnunet_style(run: Path) -> Path:
    """The run's best checkpoint predicting its test cases with nnU-Net's inference: the suite's ``Predictor`` with
    ``blending="nnunet"`` (nnU-Net's tiles and Gaussian), mirroring on every axis, no post-processing; written as
    ``export_run_predictions`` writes them (uncropped, in the data set's values)."""
    from experiment.data import open_prepared_cache
    from experiment.run_folder import RunFolder
    from inference.export import uncrop, write_segmentation
    from inference.predictor import InferenceSettings, Predictor
    from utils.labels import MODALITIES

    folder, cfg = RunFolder.open(run)
    settings = InferenceSettings.from_config(cfg, torch.device("cpu"), mirror=True).with_(blending="nnunet")
    cache, dataset = open_prepared_cache(cfg, progress=False), cfg.dataset_def()
    unit = next(folder.test_units())
    predictor = Predictor.from_checkpoints([unit.checkpoint], settings)
    out = run / "predictions_nnunet_style"
    out.mkdir()
    for case in unit.test_ids:
        meta = cache.meta(case)
        labels = uncrop(predictor.labels(cache.image(case)), tuple(slice(a, b) for a, b in meta["bbox"]),
                        meta["original_shape"])
        write_segmentation(dataset.unmap_labels(labels), meta["source_files"][MODALITIES[0]], out / f"{case}.nii.gz")
    return out


def score(pred_dir: Path, cases: list[str], labels_dir: Path, dataset) -> dict[str, float]:
    """Mean test Dice WT/TC/ET over ``cases`` of the label maps in ``pred_dir`` against ``labels_dir``, both in the
    data set's values (read through its record), by the suite's ``metrics.brats_region_metrics``."""
    per_case = []
    for case in cases:
        pred = np.rint(np.asanyarray(nib.load(str(pred_dir / f"{case}.nii.gz")).dataobj)).astype(np.int64)
        ref = np.rint(np.asanyarray(nib.load(str(labels_dir / f"{case}.nii.gz")).dataobj)).astype(np.int64)
        if pred.shape != ref.shape:
            raise ValueError(f"{pred_dir / case}: shape {pred.shape}, reference {ref.shape}")
        per_case.append(brats_region_metrics(dataset.map_labels(pred), dataset.map_labels(ref)))
    return {f"dice_{r}": float(np.mean([m[f"dice_{r}"] for m in per_case])) for r in REGIONS}


def suite_rows(data: Path, work: Path, seed: int, split: dict, plan: dict, args: argparse.Namespace) -> list[dict]:
    run, row, clock = train_suite(data, work, seed, split, plan, args)
    folders = {**export_suite(run), "nnunet_style": export_nnunet_style(run)}
    dataset, labels = dataset_json_def("nnunet", data), data / "labelsTr"
    unit = {"seed": seed, **clock, "best_epoch": int(row["best_epoch"]), "own_test_dice": float(row["test_dice_mean"])}
    return [{"side": "suite", **score(folders["post"], split["test"], labels, dataset), **unit,
             "postprocess_rule": row.get("postprocess_rule", "")},
            {"side": "suite_raw", **score(folders["raw"], split["test"], labels, dataset), **unit},
            {"side": "suite_nnunet_inference", **score(folders["nnunet_style"], split["test"], labels, dataset),
             **unit}]


def nnunet_rows(data: Path, work: Path, seed: int, fold: int, split: dict, args: argparse.Namespace) -> list[dict]:
    """nnU-Net's training of fold ``fold`` (= the seed's split) and its predictions of the test cases, scored."""
    images = data / "imagesTr"
    test = {c: [str(images / f"{c}_{k:04d}.nii.gz") for k in range(4)] for c in split["test"]}
    out_dir = work / "nnunet_predictions" / f"seed_{seed}"
    job = {"dataset_name": DATASET_NAME, "fold": fold, "seed": seed, "epochs": args.epochs, "iters": args.iters,
           "val_iters": max(1, args.iters // 5), "threads": args.threads, "test_images": test, "out_dir": str(out_dir)}
    t0, load = time.perf_counter(), os.getloadavg()[0]
    done = run_nnunet("train", job, work, args.threads, f"nnunet_seed{seed}")
    clock = timing(done["epoch_seconds"], done["epoch_steps"], time.perf_counter() - t0, (load, os.getloadavg()[0]))
    dice = score(out_dir, split["test"], data / "labelsTr", dataset_json_def("nnunet", data))
    return [{"side": "nnunet", "seed": seed, **dice, **clock}]


def print_unit(r: dict) -> None:
    print(f"seed {r['seed']} {r['side']}: Dice WT/TC/ET {r['dice_wt']:.3f}/{r['dice_tc']:.3f}/{r['dice_et']:.3f}, "
          f"{r['s_per_step']:.3f} s/step (median of epochs; {r['train_s'] / r['steps']:.3f} overall), unit "
          f"{r['wall_s']:.0f} s, load {r['load'][0]:.1f} -> {r['load'][1]:.1f}"
          + (f"; suite's own test Dice {r['own_test_dice']:.4f}, best epoch {r['best_epoch']}, rule "
             f"{r['postprocess_rule']}" if r["side"] == "suite" else ""), flush=True)


def run_benchmark(args: argparse.Namespace, work: Path) -> tuple[pd.DataFrame, dict]:
    """Data, nnU-Net's plan, the splits, then per seed both sides (alternating which goes first)."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = write_nnunet_raw(work / "nnUNet_raw", args.cases, tuple(args.shape), args.difficulty)
    plan = run_nnunet("plan", {"dataset_id": DATASET_ID, "dataset_name": DATASET_NAME, "processes": 2}, work,
                      args.threads, "plan")
    splits = suite_splits(data, work, args.seeds)
    write_splits_final(work, splits)
    print(f"data, nnU-Net plan and both preprocessings: {time.perf_counter() - t0:.0f} s; 3d_fullres patch "
          f"{plan['patch_size']}, batch {plan['batch_size']}, strides {plan['strides']}", flush=True)
    rows: list[dict] = []
    for fold, seed in enumerate(args.seeds):
        split = splits[seed]
        sides = ["suite", "nnunet"] if fold % 2 == 0 else ["nnunet", "suite"]
        for side in sides:
            new = (suite_rows(data, work, seed, split, plan, args) if side == "suite"
                   else nnunet_rows(data, work, seed, fold, split, args))
            for r in new:
                print_unit(r)
            rows += new
    sizes = {k: len(v) for k, v in splits[args.seeds[0]].items() if k in ("train", "val", "test")}
    settings = {**plan, "split": sizes, "total_s": time.perf_counter() - t0}
    return pd.DataFrame(rows), settings


def report(table: pd.DataFrame, settings: dict, args: argparse.Namespace) -> str:
    """The markdown table (per side: Dice mean ± std over seeds, s/step) and the last line."""
    print(f"\n{args.cases} synthetic cases ({args.difficulty}, {' x '.join(map(str, args.shape))}), split "
          f"{settings['split']} per seed, seeds {args.seeds}; patch {settings['patch_size']}, batch "
          f"{settings['batch_size']}, {args.epochs} x {args.iters} = {args.epochs * args.iters} steps per unit, CPU, "
          f"{args.threads} thread(s); total {settings['total_s'] / 60:.1f} min\n")
    print("| side | Dice WT | Dice TC | Dice ET | mean | s/step (median epoch) | s/step (overall) |")
    print("|---|---|---|---|---|---|---|")
    means, per_step, overall = {}, {}, {}
    for side, label in SIDES.items():
        rows = table[table["side"] == side]
        mean = rows[[f"dice_{r}" for r in REGIONS]].mean(axis=1)
        means[side], overall[side] = float(mean.mean()), float(rows["train_s"].sum() / rows["steps"].sum())
        per_step[side] = float(np.median(np.concatenate(rows["epoch_s_per_step"].tolist())))
        cells = [f"{rows[f'dice_{r}'].mean():.3f} ± {rows[f'dice_{r}'].std():.3f}" for r in REGIONS]
        print(f"| {label} | {' | '.join(cells)} | {mean.mean():.3f} ± {mean.std():.3f} | {per_step[side]:.3f} | "
              f"{overall[side]:.3f} |")
    paired = table[table["side"].isin(["suite", "nnunet"])].pivot(index="seed", columns="side", values="s_per_step")
    print(f"\nstep time ratio suite/nnU-Net: {per_step['suite'] / per_step['nnunet']:.3f} (median epochs), "
          f"{overall['suite'] / overall['nnunet']:.3f} (overall); per seed (median epochs): "
          f"{(paired['suite'] / paired['nnunet']).round(3).tolist()}")
    return (f"nnunet_dice={means['nnunet']:.4f} suite_dice={means['suite']:.4f} "
            f"step_time_ratio={per_step['suite'] / per_step['nnunet']:.3f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Last line: nnunet_dice=<x> suite_dice=<y> step_time_ratio=<z>, Dice = test "
                                "Dice averaged over WT, TC, ET and the seeds; ratio = suite s/step / nnU-Net s/step "
                                "(median epochs).")
    p.add_argument("--quick", action="store_true", help="20 cases, 2 epochs x 5 steps (under 10 minutes)")
    p.add_argument("--workdir", default=None, help="keep everything here (default: a temporary folder, removed)")
    p.add_argument("--cases", type=int, default=None, help="synthetic cases (full 50, quick 20)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per unit (full 10, quick 2)")
    p.add_argument("--iters", type=int, default=None, help="optimizer steps per epoch (full 25, quick 5)")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 48, 32], help="synthetic volume X Y Z")
    p.add_argument("--difficulty", default="realistic", choices=("realistic", "easy"))
    p.add_argument("--seeds", type=int, nargs="+", default=[24, 42, 123])
    p.add_argument("--threads", type=int, default=2, help="CPU threads of either side (training and prediction)")
    args = p.parse_args(argv)
    for key, value in MODES["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nnunet_parity_"))
    if args.workdir and any(work.glob("*")):
        sys.exit(f"--workdir {work} is not empty")
    try:
        table, settings = run_benchmark(args, work)
        line = report(table, settings, args)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(line)


if __name__ == "__main__":
    main()
