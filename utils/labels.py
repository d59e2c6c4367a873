"""The BraTS conventions of the whole suite, in one place: modalities, model classes and regions.

Data, models, losses, metrics and visualization import these names; nothing else spells them.

- Modalities in their canonical channel order: a model's input channels are the modalities of its
  registry spec, in this order.
- Model classes: 0 background, 1 NCR/NET (necrotic / non-enhancing core), 2 ED (edema),
  3 ET (enhancing tumour). BraTS 2018/2021 label ET as 4 (mapped to 3 on loading); BraTS 2023 uses 3.
- Regions (the BraTS evaluation's): WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
DEFAULT_MODALITIES: tuple[str, ...] = ("t1ce", "flair")

NUM_CLASSES = 4
CLASS_NAMES: dict[int, str] = {1: "NCR/NET", 2: "ED", 3: "ET"}  # foreground classes; 0 is background
REGIONS: dict[str, tuple[int, ...]] = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
REGION_NAMES: dict[str, str] = {r: r.upper() for r in REGIONS}
