"""Runs in the nnU-Net venv (no suite imports): nnunetv2's own planners on given patch/spacing pairs.

    python plan_topology.py WORKDIR IN.json OUT.json

IN.json: a list of {"patch": [...], "spacing": [...], "in_channels": int, "num_classes": int}. For each pair and
for nnU-Net's default planner (PlainConvUNet) and its ResEnc planner, ``get_plans_for_configuration`` is called
with the median shape equal to the patch (so the planner starts from that patch), on a stub data set of
``in_channels`` channels and ``num_classes`` labels written under WORKDIR; the network is built from the plan with
``get_network_from_plans`` and its trainable parameters are counted. OUT.json: one record per pair and planner.
"""
import json
import os
import sys

work, src, dst = sys.argv[1:4]
pairs = json.load(open(src))
os.environ["nnUNet_raw"] = os.path.join(work, "raw")
os.environ["nnUNet_preprocessed"] = os.path.join(work, "pre")
os.environ["nnUNet_results"] = os.path.join(work, "res")
records = []
for k, pair in enumerate(pairs):
    name = f"Dataset{900 + k}_Parity"
    raw = os.path.join(work, "raw", name)
    pre = os.path.join(work, "pre", name)
    os.makedirs(os.path.join(raw, "imagesTr"), exist_ok=True)
    os.makedirs(pre, exist_ok=True)
    labels = {"background": 0, **{f"c{i}": i for i in range(1, pair["num_classes"])}}
    json.dump({"channel_names": {str(i): f"ch{i}" for i in range(pair["in_channels"])}, "labels": labels,
               "numTraining": 1000, "file_ending": ".nii.gz"}, open(os.path.join(raw, "dataset.json"), "w"))
    json.dump({"median_relative_size_after_cropping": 1.0, "spacings": [pair["spacing"]],
               "shapes_after_crop": [pair["patch"]], "foreground_intensity_properties_per_channel": {}},
              open(os.path.join(pre, "dataset_fingerprint.json"), "w"))

import numpy as np  # noqa: E402
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (  # noqa: E402
    ExperimentPlanner,
)
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (  # noqa: E402,E501
    nnUNetPlannerResEncM,
)
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402

for k, pair in enumerate(pairs):
    for planner_class in (ExperimentPlanner, nnUNetPlannerResEncM):
        planner = planner_class(900 + k)
        plan = planner.get_plans_for_configuration(np.array(pair["spacing"], dtype=float), np.array(pair["patch"]),
                                                   "parity", 1e12, {})
        arch = plan["architecture"]
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     pair["in_channels"], pair["num_classes"], allow_init=False,
                                     deep_supervision=True)
        kw = arch["arch_kwargs"]
        records.append({
            "patch": pair["patch"], "spacing": pair["spacing"], "planner": planner_class.__name__,
            "planned_patch": [int(p) for p in plan["patch_size"]],
            "strides": [[int(s) for s in st] for st in kw["strides"]],
            "kernel_sizes": [[int(s) for s in ks] for ks in kw["kernel_sizes"]],
            "features": [int(f) for f in kw["features_per_stage"]],
            "encoder_blocks": [int(b) for b in kw.get("n_conv_per_stage", kw.get("n_blocks_per_stage"))],
            "decoder_convs": [int(b) for b in kw["n_conv_per_stage_decoder"]],
            "params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        })
json.dump(records, open(dst, "w"))
