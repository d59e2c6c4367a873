"""The model catalogue: one row per registered model, for the terminal and for docs/MODELS.md.

``python integrated_experiment.py --list_models`` prints :func:`format_lines` of :func:`catalog_rows`;
docs/MODELS.md is :func:`markdown` of the same rows, written by this module's command line::

    python -m models.catalog                            # print the markdown
    python -m models.catalog --write docs/MODELS.md     # regenerate the file (atomically)
    python -m models.catalog --check docs/MODELS.md     # exit 1 if the file is out of date

Parameters are counted on models built on the ``meta`` device (no memory, no initialisation; the
CPU for the few constructors that read tensor values), at a 128^3 patch for models with a 3D
version, else at 128x128 in 2D; they equal the suite's ``count_parameters`` (trainable
parameters) of the model built on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from models.registry import create_model, list_models, model_spec
from utils.io import atomic_write_text

CATALOG_PATCH: dict[str, tuple[int, ...]] = {"3d": (128, 128, 128), "2d": (128, 128)}
COMMAND = "python -m models.catalog --write docs/MODELS.md"

# family -> one line for docs/MODELS.md
FAMILY_NOTES: dict[str, str] = {
    "unet3d": (
        "five-stage U-Net (`models/unet.py`), sizes xs, s, m, l with channel widths doubling per size; "
        "`unet3d_*` downsamples with MaxPool, `unet3d_stride_*` with stride-2 convolutions."
    ),
    "transformer": (
        "UNETR and SwinUNETR (MONAI, published settings) and the hand-written MobileUNETR "
        "(`mobile_unetr` in 2D, `mobile_unetr_3d` in 3D), in `models/transformers.py`."
    ),
    "dualbranch": (
        "multi-branch U-Net (`models/multibranch.py`) with a T1ce and a FLAIR encoder branch, configured in "
        "`models/dualbranch.py`: `dualbranch_01..07_unet` and `dualbranch_13_unet` vary the FLAIR branch "
        "(stride downsampling, dilation, RepLK 13^3, FFN, MobileViT stages), "
        "`dualbranch_mobilenetv2_dilated[_fixed]` is a MobileNetV2 variant fused at stage 3, and "
        "`dualbranch_14_*` compares backbones (one block kind in both branches and the fused stages)."
    ),
    "nnunet": (
        "nnU-Net v2's networks built by dynamic-network-architectures (`models/nnunet.py`) with nnU-Net's planned "
        "topology for the patch at 1 mm (hand-written planner, checked against nnunetv2 2.8.1's): `nnunet` "
        "(PlainConvUNet, the default 3d_fullres/2d network), `nnunet_resenc_m/l/xl` (ResidualEncoderUNet; the three "
        "presets are one network at a given patch and differ in the patch and batch their planners choose, "
        "docs/NNUNET.md), and MONAI's `dynunet` with the same kernels, strides and features. All take "
        "`--deep_supervision`."
    ),
    "modality": (
        "modality comparison at size s: single-branch U-Nets reading two or four concatenated modalities "
        "(`unet3d_2modal_s`, `unet3d_4modal_s`) against two or four single-modality branches, the four "
        "also weighted by a softmax modality-attention gate (`dualbranch_2modal_unet_s`, `quadbranch_4modal_*`)."
    ),
    "mednext": (
        "MedNeXt (Roy et al., MICCAI 2023) built by MONAI's `create_mednext` (`models/monai_baselines.py`): "
        "variants S, B, M, L with depthwise kernel 3 or 5 (`mednext_{s,b,m,l}_k{3,5}`), four modalities; "
        "with deep supervision, MONAI's heads at 1/2..1/16 (their parameters are not counted here). "
        "UpKern (kernel 5 initialised from a trained kernel 3) is not offered: MONAI does not provide it."
    ),
    "segresnet": (
        "MONAI's SegResNet (`models/monai_baselines.py`), four modalities: `segresnet_16` at the settings of "
        "MONAI's BraTS tutorial (16 initial filters, blocks 1-2-2-4 down, 1-1-1 up, dropout 0.2), `segresnet_32` "
        "the same at the BraTS 2018 winner's width (Myronenko 2018) without its VAE branch. No published count "
        "is given: none was found with certainty."
    ),
    "swin_unetr_v2": (
        "SwinUNETR-V2 (He et al., MICCAI 2023): MONAI's `SwinUNETR(use_v2=True)` with the suite's `swin_unetr` "
        "settings, four modalities (`models/monai_baselines.py`). No published count is given: none was found "
        "with certainty."
    ),
}

# Published baselines that the suite does not build, and why (listed in docs/MODELS.md).
NOT_INCLUDED: dict[str, str] = {
    "STU-Net": "no installable package provides the network (its code lives inside a fork of nnU-Net), and the "
               "suite builds published networks from their libraries, never from copies.",
    "U-Mamba": "needs the `mamba-ssm` package, whose selective-scan kernels are CUDA-only, so it can neither be "
               "built nor tested on the CPU machines the suite's tests run on.",
}


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _build_cheaply(name: str, dim: str) -> torch.nn.Module:
    """``name`` at the catalogue patch, on the meta device; on the CPU for a model whose
    constructor reads tensor values (MONAI's SwinUNETR calls ``.item()``), which meta cannot."""
    try:
        with torch.device("meta"):
            return create_model(name, dim, CATALOG_PATCH[dim])
    except (RuntimeError, NotImplementedError):
        return create_model(name, dim, CATALOG_PATCH[dim])


def catalog_rows() -> list[dict]:
    """One dict per registered model, sorted by name: name, family, modalities, dims, params."""
    rows = []
    for name in list_models():
        spec = model_spec(name)
        dim = "3d" if "3d" in spec.dims else "2d"
        params = trainable_parameters(_build_cheaply(name, dim))
        rows.append({"name": name, "family": spec.family, "modalities": spec.modalities, "dims": spec.dims,
                     "params": params, "published": spec.published.params if spec.published else None,
                     "source": spec.published.source if spec.published else ""})
    return rows


def format_lines(rows: Sequence[dict]) -> list[str]:
    """One plain line per model for the terminal."""
    return [
        f"{r['name']:48s} family={r['family']:12s} modalities={','.join(r['modalities']):22s} "
        f"dims={','.join(r['dims']):6s} params={r['params']:,}"
        + (f" published={r['published']:,}" if r.get("published") else "")
        for r in rows
    ]


def _count(value: int | None) -> str:
    return f"{value:,}" if value else ""


def markdown(rows: Sequence[dict]) -> str:
    """The full text of docs/MODELS.md."""
    families = sorted({r["family"] for r in rows})
    lines = [
        "# Model catalogue",
        "",
        f"Generated by `{COMMAND}` from the same rows that `python integrated_experiment.py --list_models` "
        "prints; do not edit it by hand.",
        "",
        "## Families",
        "",
        *(f"- `{f}`: {FAMILY_NOTES.get(f, 'no note yet (add one to FAMILY_NOTES in models/catalog.py).')}"
          for f in families),
        "",
        "Not included:",
        "",
        *(f"- {name}: {why}" for name, why in NOT_INCLUDED.items()),
        "",
        "## Models",
        "",
        f"{len(rows)} models. Parameters: trainable parameters of the model built at 128^3 "
        "(at 128x128 for models that exist in 2D only); every model's input channels are its modalities. "
        "Published: the count its authors or its library report, where the model is a published network.",
        "",
        "| Model | Family | Modalities | Dims | Parameters (M) | Parameters | Published | Source of the published |",
        "|---|---|---|---|---:|---:|---:|---|",
        *(
            f"| `{r['name']}` | {r['family']} | {', '.join(r['modalities'])} | {', '.join(r['dims'])} "
            f"| {r['params'] / 1e6:.2f} | {r['params']:,} | {_count(r['published'])} "
            f"| {r['source']} |"
            for r in rows
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.catalog", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="PATH", help="write the markdown catalogue to PATH (atomically)")
    action.add_argument("--check", metavar="PATH", help="exit 1 if PATH differs from the generated catalogue")
    args = parser.parse_args(argv)

    text = markdown(catalog_rows())
    if args.write:
        atomic_write_text(args.write, text)
        print(f"wrote {args.write}")
    elif args.check:
        path = Path(args.check)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            state = "is missing" if not path.is_file() else "is out of date"
            print(f"{path} {state}; regenerate it with: python -m models.catalog --write {path}", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
