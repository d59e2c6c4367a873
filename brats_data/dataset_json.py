"""``dataset.json`` of Medical Segmentation Decathlon and nnU-Net raw datasets, read into the suite's terms.

Channels are matched to the canonical modalities by name (case-insensitive; spaces, ``-`` and ``_``
ignored): see :data:`MODALITY_NAMES`.  Labels are matched to the model classes (0 background,
1 NCR/NET, 2 ED, 3 ET) by name, never by number:

- plain label dicts, either MSD's ``{"0": "background", "1": "edema", ...}`` (value -> name) or
  nnU-Net's ``{"background": 0, "edema": 1, ...}`` (name -> value): see :data:`LABEL_NAMES`;
- nnU-Net region-based dicts (a value is a list, or ``regions_class_order`` is given), e.g.
  ``{"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}``:
  each label value gets the class of the regions holding it (WT only -> ED, WT and TC -> NCR/NET,
  WT, TC and ET -> ET).

Anything that cannot be mapped is a :class:`DatasetJsonError` naming the dataset.json and the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from utils.labels import MODALITIES

DATASET_JSON = "dataset.json"

# normalised name (lower case, without spaces, "-" and "_") -> canonical modality
MODALITY_NAMES: dict[str, str] = {
    **dict.fromkeys(("flair", "t2flair", "t2f"), "flair"),
    **dict.fromkeys(("t1", "t1w", "t1n", "native", "t1native"), "t1"),
    **dict.fromkeys(("t1gd", "t1ce", "t1c", "contrast", "t1contrast", "t1post"), "t1ce"),
    **dict.fromkeys(("t2", "t2w"), "t2"),
}
# label names (lower case, spaces for "-", "_", "/") -> model class; checked as whole phrases / words
LABEL_NAMES: dict[int, tuple[str, ...]] = {
    0: ("background", "bg", "clear label", "unlabeled", "unlabelled"),
    1: ("non enhancing", "nonenhancing", "non enhanced", "necrosis", "necrotic", "ncr", "net", "ncr net",
        "necrotic core", "non enhancing tumor core"),
    2: ("edema", "oedema", "ed", "peritumoral edema", "peritumoral oedema", "snfh", "whole tumor edema"),
    3: ("enhancing", "enhancing tumor", "enhancing tumour", "et", "gd enhancing"),
}
REGION_NAMES: dict[str, tuple[str, ...]] = {
    "wt": ("whole tumor", "whole tumour", "wt", "complete tumor", "complete tumour", "whole"),
    "tc": ("tumor core", "tumour core", "tc", "core"),
    "et": ("enhancing tumor", "enhancing tumour", "et", "enhancing"),
}
REGION_CLASSES: dict[frozenset[str], int] = {
    frozenset({"wt"}): 2, frozenset({"wt", "tc"}): 1, frozenset({"wt", "tc", "et"}): 3}
CLASS_WORDS = {1: "NCR/NET (necrosis / non-enhancing)", 2: "ED (edema)", 3: "ET (enhancing tumour)"}


class DatasetJsonError(ValueError):
    """A dataset.json that is missing, unreadable or cannot be mapped to the suite's modalities and classes."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset.json says, in the suite's terms.

    Attributes:
        channels: canonical modality -> channel index (MSD: index in the 4th axis; nnU-Net: ``_XXXX`` file).
        label_map: dataset label value -> model class (background 0 -> 0 included).
        file_ending: image file ending (nnU-Net ``file_ending``; ``.nii.gz`` otherwise).
        region_based: the labels were derived from nnU-Net regions.
    """

    channels: dict[str, int]
    label_map: dict[int, int]
    file_ending: str
    region_based: bool


def _norm(name: str) -> str:
    return " ".join(re.sub(r"[-_/,()]+", " ", str(name).lower()).split())


def modality_of(name: str) -> str | None:
    """The canonical modality of a channel name (``"T1w"`` -> ``"t1"``, ``"t1-gd"`` -> ``"t1ce"``), else None."""
    return MODALITY_NAMES.get(_norm(name).replace(" ", ""))


def label_class(name: str) -> int | None:
    """The model class of a plain label name (``"edema"`` -> 2, ``"non-enhancing tumor"`` -> 1), else None."""
    norm = _norm(name)
    if norm in LABEL_NAMES[0]:
        return 0
    words = norm.split()
    joined = " ".join(words)
    if any(p in joined for p in ("non enhancing", "nonenhancing", "non enhanced", "necro")) or \
            {"ncr", "net"} & set(words):
        return 1
    if any(w in ("edema", "oedema", "ed", "snfh") for w in words):
        return 2
    if "enhancing" in words or "et" in words or "enhancement" in words:
        return 3
    return None


def region_of(name: str) -> str | None:
    """``wt``/``tc``/``et`` for an nnU-Net region name, else None."""
    norm = _norm(name)
    for region, names in REGION_NAMES.items():
        if norm in names:
            return region
    return None


def read_dataset_json(root: str | Path) -> dict:
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        raise DatasetJsonError(f"{path} not found (the dataset's {DATASET_JSON} names its channels and labels)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetJsonError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetJsonError(f"{path}: expected a JSON object")
    return data


def _integer(value: object, message: str) -> int:
    """``int(value)``, or DatasetJsonError(message) when it is not an integer."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DatasetJsonError(message) from None


def _channels(data: dict, path: Path) -> dict[str, int]:
    entry = data.get("channel_names", data.get("modality"))
    if not isinstance(entry, dict) or not entry:
        raise DatasetJsonError(f"{path}: no \"channel_names\" (or \"modality\") entry naming the four channels")
    channels: dict[str, int] = {}
    for index, name in entry.items():
        idx = _integer(index, f"{path}: channel index {index!r} is not an integer")
        modality = modality_of(name)
        if modality is None:
            raise DatasetJsonError(
                f"{path}: unknown channel name {name!r} (channel {index}); accepted: "
                + "; ".join(f"{m}: {', '.join(n for n, mm in MODALITY_NAMES.items() if mm == m)}" for m in MODALITIES))
        if modality in channels:
            raise DatasetJsonError(f"{path}: channels {channels[modality]} and {idx} are both {modality}")
        channels[modality] = idx
    missing = [m for m in MODALITIES if m not in channels]
    if missing:
        raise DatasetJsonError(f"{path}: no channel for {', '.join(missing)} (the suite needs t1, t1ce, t2, flair; "
                               f"channels given: {entry})")
    return channels


def _labels(data: dict, path: Path) -> tuple[dict[int, int], bool]:
    entry = data.get("labels")
    if not isinstance(entry, dict) or not entry:
        raise DatasetJsonError(f"{path}: no \"labels\" entry")
    # MSD / nnU-Net v1: {"0": "background", ...} (value -> name); nnU-Net v2: {"background": 0, ...}
    by_value = all(isinstance(v, str) for v in entry.values())
    pairs: list[tuple[str, object]] = [(v, k) for k, v in entry.items()] if by_value else list(entry.items())
    region_based = "regions_class_order" in data or any(isinstance(v, (list, tuple)) for _, v in pairs)
    label_map: dict[int, int] = {}
    if region_based:
        membership: dict[int, set[str]] = {}
        for name, values in pairs:
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            values = [_integer(v, f"{path}: label {name!r} has non-integer values {values}") for v in values]
            if values == [0] or label_class(name) == 0:
                label_map[0] = 0
                continue
            region = region_of(name)
            if region is None:
                raise DatasetJsonError(f"{path}: region {name!r} is not whole tumor, tumor core or enhancing tumor "
                                       "(region-based labels are mapped through these three regions)")
            for v in values:
                membership.setdefault(v, set()).add(region)
        for value, regions in sorted(membership.items()):
            cls = REGION_CLASSES.get(frozenset(regions))
            if cls is None:
                raise DatasetJsonError(
                    f"{path}: label value {value} lies in regions {sorted(regions)}; only WT alone (edema), WT and "
                    "TC (necrosis / non-enhancing) or WT, TC and ET (enhancing) can be mapped")
            label_map[value] = cls
    else:
        for name, value in pairs:
            value = _integer(value, f"{path}: label {name!r} has a non-integer value {value!r}")
            cls = label_class(name)
            if cls is None:
                raise DatasetJsonError(
                    f"{path}: label name {name!r} (value {value}) is none of background, edema, "
                    "necrosis / non-enhancing tumour, enhancing tumour")
            label_map[value] = cls
    if label_map.get(0, 0) != 0:
        raise DatasetJsonError(f"{path}: label value 0 must be background")
    label_map[0] = 0
    if any(v < 0 or v > 255 for v in label_map):
        raise DatasetJsonError(f"{path}: label values must lie in 0..255, got {sorted(label_map)}")
    missing = [c for c in CLASS_WORDS if c not in label_map.values()]
    if missing:
        raise DatasetJsonError(f"{path}: no label for {', '.join(CLASS_WORDS[c] for c in missing)} "
                               f"(labels given: {entry})")
    return dict(sorted(label_map.items())), region_based


def parse_dataset_json(root: str | Path) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``{root}/dataset.json``.

    Raises:
        DatasetJsonError: missing or unreadable file, unknown/missing channel names, labels that cannot be
            mapped (the message names the file and says why).
    """
    path = Path(root) / DATASET_JSON
    data = read_dataset_json(root)
    channels = _channels(data, path)
    label_map, region_based = _labels(data, path)
    ending = data.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise DatasetJsonError(f"{path}: file_ending {ending!r} is not supported (only .nii.gz and .nii)")
    return DatasetSpec(channels, label_map, ending, region_based)
