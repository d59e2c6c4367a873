"""The nnU-Net v2 side of ``benchmarks/nnunet_parity.py``, run with the Python of the nnU-Net reference environment
(``.venv-nnunet``, tests/nnunet_ref.py), never with the suite's: it imports nnunetv2 2.8.1.

    nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=... nnUNet_n_proc_DA=0 \\
        .venv-nnunet/bin/python benchmarks/nnunet_parity_nnunet.py plan|train ARGS.json

``plan``: nnU-Net's fingerprint, ``ExperimentPlanner`` plans and the preprocessing of the 3d_fullres configuration
(what ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` does); prints the 3d_fullres patch, batch and topology.

``train``: one fold of ``splits_final.json`` (written by the caller) with ``nnUNetTrainer`` on the CPU, its budget
cut to ``epochs`` x ``iters`` optimizer steps (``num_val_iterations_per_epoch`` ``val_iters``), then its final
weights predict the test images with ``nnUNetPredictor`` (step 0.5, Gaussian, mirroring: nnU-Net's defaults) into
NIfTI label maps, from the raw files. Prints the seconds of each epoch's training pass (loading and augmentation of
each batch, forward, backward, step; not validation, plotting or checkpoints) and its number of steps.

Either way the last line printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class TimedTrainer(nnUNetTrainer):
    """``nnUNetTrainer`` unchanged but for the clock around each epoch's training pass (run_training calls
    ``on_train_epoch_start``, then ``next(dataloader)`` and ``train_step`` per iteration, then
    ``on_train_epoch_end``)."""

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, train_outputs: list) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._t0)  # the clock stops before the epoch's logging
        self.epoch_steps.append(len(train_outputs))
        super().on_train_epoch_end(train_outputs)


def plan(args: dict) -> dict:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    t0 = time.perf_counter()
    extract_fingerprints([args["dataset_id"]], num_processes=args["processes"], check_dataset_integrity=False,
                         show_progress_bar=False)
    plan_experiments([args["dataset_id"]])
    preprocess([args["dataset_id"]], configurations=("3d_fullres",), num_processes=(args["processes"],),
               show_progress_bar=False)
    plans = load_json(join(nnUNet_preprocessed, args["dataset_name"], "nnUNetPlans.json"))
    config = plans["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    return {"patch_size": config["patch_size"], "batch_size": config["batch_size"],
            "batch_dice": config["batch_dice"], "strides": arch["strides"],
            "features": arch["features_per_stage"], "seconds": time.perf_counter() - t0}


def seed_everything(seed: int) -> None:
    """nnU-Net has no seed option; its loader and transforms draw from these generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def predict(trainer: nnUNetTrainer, test_images: dict[str, list[str]], out_dir: str) -> float:
    """The trained network's predictions of the test cases (raw files in, NIfTI label maps out), as
    ``perform_actual_validation`` builds its predictor, without worker processes."""
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=trainer.device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    weights = [{k: v.clone() for k, v in trainer.network.state_dict().items()}]  # the final weights
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, weights,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    cases = sorted(test_images)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    predictor.predict_from_files_sequential([test_images[c] for c in cases], [join(out_dir, c) for c in cases],
                                            save_probabilities=False, overwrite=True)
    return time.perf_counter() - t0


def train(args: dict) -> dict:
    torch.set_num_threads(args["threads"])
    seed_everything(args["seed"])
    folder = join(nnUNet_preprocessed, args["dataset_name"])
    plans = load_json(join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnunetv2.run.run_training passes
    trainer = TimedTrainer(plans, "3d_fullres", args["fold"], load_json(join(folder, "dataset.json")),
                           device=torch.device("cpu"))
    trainer.num_epochs = args["epochs"]
    trainer.num_iterations_per_epoch = args["iters"]
    trainer.num_val_iterations_per_epoch = args["val_iters"]
    trainer.epoch_seconds, trainer.epoch_steps = [], []
    t0 = time.perf_counter()
    trainer.run_training()  # ends with checkpoint_final.pth: the weights that predict below
    wall = time.perf_counter() - t0
    predict_s = predict(trainer, args["test_images"], args["out_dir"])
    return {"epoch_seconds": trainer.epoch_seconds, "epoch_steps": trainer.epoch_steps, "run_training_s": wall,
            "predict_s": predict_s, "batch_size": trainer.batch_size,
            "patch_size": [int(p) for p in trainer.configuration_manager.patch_size]}


if __name__ == "__main__":
    command, path = sys.argv[1], sys.argv[2]
    assert os.environ.get("nnUNet_raw"), "set nnUNet_raw, nnUNet_preprocessed and nnUNet_results"
    with open(path) as f:
        arguments = json.load(f)
    print(json.dumps({"plan": plan, "train": train}[command](arguments)))
