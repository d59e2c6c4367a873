"""Modalities, and the label scheme of a data set: its model classes and the regions they form.

Data, models, losses, metrics and visualization take a :class:`LabelScheme` (the dataset record of
``brats_data/definitions.py`` holds one per ``--dataset_version``); :data:`CLASSIC` is the scheme of
BraTS 2018-2023 (GLI), of the synthetic data and of MSD/nnU-Net brain tumours, and the default of every
function that takes a scheme, so the names below keep their meaning:

- Modalities in their canonical channel order: a model's input channels are the modalities of its
  registry spec, in this order.
- Model classes of :data:`CLASSIC`: 0 background, 1 NCR/NET (necrotic / non-enhancing core), 2 ED
  (edema), 3 ET (enhancing tumour). BraTS 2018/2021 label ET as 4 (mapped to 3 on loading); BraTS 2023 uses 3.
- Regions of :data:`CLASSIC` (the BraTS evaluation's): WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.

Metric keys follow the scheme: ``dice_{region}``, ``hd95_{region}``, ``nsd_{region}`` of every region,
then ``dice_{class}`` of every class that is not a region by itself (CLASSIC: ``dice_ncr``, ``dice_ed``;
ET's is ``dice_et``). The mean Dice (model selection, ``test_dice_mean``) is over :attr:`LabelScheme.selection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
DEFAULT_MODALITIES: tuple[str, ...] = ("t1ce", "flair")


@dataclass(frozen=True)
class ClassDef:
    """One foreground model class: ``key`` names its columns (``dice_{key}``), ``title`` its charts."""

    key: str
    title: str


@dataclass(frozen=True)
class RegionDef:
    """A region: the union of some model classes (1-based class indices)."""

    key: str
    classes: tuple[int, ...]
    title: str = ""

    @property
    def label(self) -> str:
        return self.title or self.key.upper()


@dataclass(frozen=True)
class LabelScheme:
    """The model classes of a data set (class ``k`` is ``classes[k - 1]``; 0 is background) and its regions.

    ``selection``: the regions whose mean Dice selects the best epoch and is ``test_dice_mean`` (the BraTS
    WT/TC/ET for every scheme the suite ships).

    ``region_order``: region-based training (``--region_based``): the regions a model predicts (one sigmoid
    channel each) and the class each one paints, in painting order (nnU-Net's ``regions_class_order``):
    labels = 0; for (region, class) in order: labels[p_region > 0.5] = class. Nested regions come largest first
    (CLASSIC: WT paints ED, TC paints NCR/NET, ET paints ET); a disjoint region (RC) paints its own class.
    Painting the true regions of any voxel must give back its class (checked here).

    ``min_component``: post-processing (``--postprocess``): connected components of a region smaller than this many
    voxels may be removed, if that helps on validation (the BraTS 2023 winner's sizes: WT 250, TC 150, ET 100).
    """

    classes: tuple[ClassDef, ...]
    regions: tuple[RegionDef, ...]
    selection: tuple[str, ...] = ("wt", "tc", "et")
    region_order: tuple[tuple[str, int], ...] = (("wt", 2), ("tc", 1), ("et", 3))
    min_component: tuple[tuple[str, int], ...] = (("wt", 250), ("tc", 150), ("et", 100))

    def __post_init__(self) -> None:
        keys = [c.key for c in self.classes]
        if len(set(keys)) != len(keys) or not keys:
            raise ValueError(f"class keys must be unique and non-empty, got {keys}")
        names = [r.key for r in self.regions]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"region keys must be unique and non-empty, got {names}")
        for region in self.regions:
            if not region.classes or any(not 1 <= c <= len(self.classes) for c in region.classes):
                raise ValueError(f"region {region.key!r} has classes {region.classes}; valid: 1..{len(self.classes)}")
        for key, _ in (*self.region_order, *self.min_component):
            if key not in names:
                raise ValueError(f"region {key!r} of region_order/min_component is not a region of the scheme {names}")
        for key, cls in self.region_order:
            if cls not in self.region_classes[key]:
                raise ValueError(f"region {key!r} cannot paint class {cls}: it holds {self.region_classes[key]}")
        for cls in range(1, len(self.classes) + 1):
            painted = 0
            for key, paint in self.region_order:
                if cls in self.region_classes[key]:
                    painted = paint
            if painted != cls:
                raise ValueError(f"region_order {self.region_order} paints a voxel of class {cls} as {painted}")
        missing = [s for s in self.selection if s not in names]
        if missing or not self.selection:
            raise ValueError(f"selection regions {missing or list(self.selection)} are not regions of the scheme "
                             f"{names}")

    # ------------------------------------------------------------------ derived names
    @property
    def num_classes(self) -> int:
        """Model output channels: background and every class."""
        return 1 + len(self.classes)

    @property
    def region_classes(self) -> dict[str, tuple[int, ...]]:
        return {r.key: r.classes for r in self.regions}

    @property
    def class_dice(self) -> dict[str, int]:
        """Classes whose Dice is a column of its own (``dice_{key}``): those that are not a region by themselves."""
        single = {r.classes[0] for r in self.regions if len(r.classes) == 1}
        return {c.key: k for k, c in enumerate(self.classes, start=1) if k not in single}

    @property
    def class_names(self) -> dict[int, str]:
        return {k: c.title for k, c in enumerate(self.classes, start=1)}

    @property
    def region_names(self) -> dict[str, str]:
        return {r.key: r.label for r in self.regions}

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The per-case metric columns, in order: Dice and HD95 of every region, NSD of every region, Dice of
        every class that is not a region (CLASSIC: the suite's historical columns, in their order)."""
        regions = [r.key for r in self.regions]
        return (tuple(f"{m}_{r}" for m in ("dice", "hd95") for r in regions) + tuple(f"nsd_{r}" for r in regions)
                + tuple(f"dice_{c}" for c in self.class_dice))

    @property
    def region_channels(self) -> int:
        """Output channels of a region-based model: one per region of :attr:`region_order`."""
        return len(self.region_order)

    def parent_class(self, region: str) -> int:
        """The class a voxel of ``region`` takes when it leaves the region (post-processing): the class painted by
        the last region before it in :attr:`region_order` that contains it, else background (CLASSIC: ET -> NCR/NET,
        TC -> ED, WT -> 0)."""
        keys = [k for k, _ in self.region_order]
        classes = set(self.region_classes[region])
        before = keys[:keys.index(region)] if region in keys else keys
        for key, paint in reversed([(k, p) for k, p in self.region_order if k in before]):
            if classes <= set(self.region_classes[key]):
                return paint
        return 0

    def compatible(self, other: LabelScheme) -> bool:
        """The same classes in the same order (the label maps mean the same, whatever the file values)."""
        return [c.key for c in self.classes] == [c.key for c in other.classes]

    # ------------------------------------------------------------------ plain values (checkpoints, config.json)
    def to_dict(self) -> dict[str, Any]:
        return {"classes": [[c.key, c.title] for c in self.classes],
                "regions": [[r.key, list(r.classes), r.title] for r in self.regions],
                "selection": list(self.selection), "region_order": [list(x) for x in self.region_order],
                "min_component": [list(x) for x in self.min_component]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelScheme:
        defaults = cls.__dataclass_fields__
        return cls(tuple(ClassDef(k, t) for k, t in d["classes"]),
                   tuple(RegionDef(k, tuple(int(c) for c in cs), t) for k, cs, t in d["regions"]),
                   tuple(d.get("selection", defaults["selection"].default)),
                   tuple((str(k), int(c)) for k, c in d.get("region_order", defaults["region_order"].default)),
                   tuple((str(k), int(c)) for k, c in d.get("min_component", defaults["min_component"].default)))


CLASSIC = LabelScheme(
    classes=(ClassDef("ncr", "NCR/NET"), ClassDef("ed", "ED"), ClassDef("et", "ET")),
    regions=(RegionDef("wt", (1, 2, 3)), RegionDef("tc", (1, 3)), RegionDef("et", (3,))),
)

# The names of CLASSIC, kept for the code and scripts that use them.
NUM_CLASSES = CLASSIC.num_classes
CLASS_NAMES: dict[int, str] = CLASSIC.class_names
REGIONS: dict[str, tuple[int, ...]] = CLASSIC.region_classes
REGION_NAMES: dict[str, str] = CLASSIC.region_names
