"""Runs in the nnU-Net venv (no suite imports): nnU-Net v2's deep-supervision loss on saved logits and labels.

    python ds_loss.py IN.pt OUT.pt

IN.pt: {"logits": [tensor (B, K, *spatial_i), full resolution first], "label": int tensor (B, *spatial),
"regions": None or a list of label tuples, "batch_dice": bool}. The loss is built by nnU-Net's own
``nnUNetTrainer._build_loss`` (on a stand-in trainer holding only what it reads: regions or not, batch Dice, no
DDP, no compile, deep supervision on, one scale per output), so its weights are nnU-Net's; the targets are made
per sample by nnU-Net's transforms: ``ConvertSegmentationToRegionsTransform`` (regions) then
``DownsampleSegForDSTransform`` with the scales ``1 / 2**i`` per axis. OUT.pt: the loss, the gradient of every
logit tensor, and the weights.
"""
import sys
from types import SimpleNamespace

import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

src, dst = sys.argv[1:3]
data = torch.load(src)
logits = [x.clone().requires_grad_(True) for x in data["logits"]]
label, regions = data["label"], data["regions"]
n, dim = len(logits), label.ndim - 1
scales = [[1 / 2**i] * dim for i in range(n)]

stand_in = SimpleNamespace(
    label_manager=SimpleNamespace(has_regions=regions is not None, ignore_label=None),
    configuration_manager=SimpleNamespace(batch_dice=data["batch_dice"]),
    is_ddp=False, enable_deep_supervision=True,
    _do_i_compile=lambda: False, _get_deep_supervision_scales=lambda: scales,
)
loss_fn = nnUNetTrainer._build_loss(stand_in)

per_sample = []
for b in range(label.shape[0]):
    seg = label[b][None]  # (1, *spatial), nnU-Net's segmentation layout
    if regions is not None:
        seg = ConvertSegmentationToRegionsTransform(regions=regions, channel_in_seg=0)(segmentation=seg)["segmentation"]
    per_sample.append(DownsampleSegForDSTransform(ds_scales=scales)(segmentation=seg)["segmentation"])
targets = [torch.stack([s[i] for s in per_sample]) for i in range(n)]

loss = loss_fn(logits, targets)
loss.backward()
torch.save({"loss": loss.detach(), "grads": [x.grad for x in logits],
            "weights": [float(w) for w in loss_fn.weight_factors], "targets": targets}, dst)
