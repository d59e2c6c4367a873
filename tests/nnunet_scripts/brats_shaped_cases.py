"""Write 4 BraTS-2021-shaped cases (240x240x155 at 1 mm, 4 channels) as a raw nnU-Net data set, for nnU-Net v2's
planners (docs/NNUNET.md records what they chose). Run with the nnU-Net venv, then plan:

    export nnUNet_raw=ROOT/raw nnUNet_preprocessed=ROOT/pre nnUNet_results=ROOT/res
    .venv-nnunet/bin/python tests/nnunet_scripts/brats_shaped_cases.py ROOT
    .venv-nnunet/bin/nnUNetv2_extract_fingerprint -d 990 -np 1
    .venv-nnunet/bin/nnUNetv2_plan_experiment -d 990 -pl ExperimentPlanner   # and nnUNetPlannerResEncM/L/XL

The images are noise inside a brain-sized ellipsoid (zero outside, which nnU-Net crops away), the labels nested
ellipsoids of classes 1-3: only the shapes, spacing and channel count matter to the planner.
"""
import json
import os
import sys

import nibabel as nib
import numpy as np

root = sys.argv[1]
raw = os.path.join(root, "raw", "Dataset990_BraTSShape")
os.makedirs(os.path.join(raw, "imagesTr"), exist_ok=True)
os.makedirs(os.path.join(raw, "labelsTr"), exist_ok=True)
rng = np.random.default_rng(0)
n = 4
shape = (240, 240, 155)  # BraTS NIfTI array shape (x, y, z), 1 mm isotropic
x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
for i in range(n):
    # a brain-sized ellipsoid of nonzero voxels (BraTS brains after cropping: about 140 x 170 x 140 voxels)
    ax = (70 + rng.integers(-4, 5), 85 + rng.integers(-4, 5), 68 + rng.integers(-3, 4))
    c = (120, 120, 75)
    brain = ((x - c[0]) / ax[0]) ** 2 + ((y - c[1]) / ax[1]) ** 2 + ((z - c[2]) / ax[2]) ** 2 <= 1
    tumour = ((x - 100) / 20) ** 2 + ((y - 110) / 25) ** 2 + ((z - 80) / 18) ** 2 <= 1
    seg = np.zeros(shape, np.uint8)
    seg[tumour & brain] = 1
    seg[(((x - 100) / 12) ** 2 + ((y - 110) / 14) ** 2 + ((z - 80) / 10) ** 2 <= 1)] = 2
    seg[(((x - 100) / 6) ** 2 + ((y - 110) / 7) ** 2 + ((z - 80) / 5) ** 2 <= 1)] = 3
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    for ch in range(4):
        img = np.where(brain, rng.normal(100 + 10 * ch, 20, shape), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(img, aff), os.path.join(raw, "imagesTr", f"case{i:03d}_{ch:04d}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, aff), os.path.join(raw, "labelsTr", f"case{i:03d}.nii.gz"))
# nnU-Net's BraTS 2021 conversion (Dataset137): labels 0 background, 1 edema, 2 non-enhancing, 3 enhancing; regions
json.dump({"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
           "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
           "regions_class_order": [1, 2, 3], "numTraining": n, "file_ending": ".nii.gz"},
          open(os.path.join(raw, "dataset.json"), "w"), indent=1)
