"""Every data set the suite reads, as one frozen record each: :class:`DatasetDef` (the ``--dataset_version``).

A record says where the cases live and how their files are named (:class:`Layout`), how a case id maps to
a patient, the label scheme (file label value -> model class -> class name; the regions and which of them
select the best epoch), the official BraTS evaluation's configuration, and how predictions are written
back (the file label value of each model class). Everything downstream takes the record: the models get
``scheme.num_classes`` output channels, the loss, metrics, columns, statistics, charts, export,
``predict.py`` and ``--official_eval`` follow it; checkpoints and ``config.json`` hold it as plain values
(:meth:`DatasetDef.to_dict`), so a finished run needs nothing else.

Adding a task is adding one record to :data:`DATASETS` (and a test). MSD and nnU-Net raw folders build
their record from their ``dataset.json`` (:func:`dataset_json_def`).

| ``--dataset_version`` | data | labels (value: class) | regions |
|---|---|---|---|
| ``brats2018``, ``brats2021``, ``synthetic`` | BraTS 2018/2021 | 1 NCR/NET, 2 ED, 4 ET | WT, TC, ET |
| ``brats2023`` | BraTS 2023 GLI | 1 NCR/NET, 2 ED, 3 ET | WT, TC, ET |
| ``brats2024`` | BraTS 2024/25 GLI pre-/post-treatment | 1 NETC, 2 SNFH, 3 ET, 4 RC | WT, TC, ET, NETC, SNFH, RC |
| ``brats_met`` | BraTS 2023/2025 MET | 1 NETC, 2 SNFH, 3 ET, 4 RC | WT, TC, ET, RC |
| ``brats_men`` | BraTS 2023/2025 MEN pre-operative | 1 NETC, 2 SNFH, 3 ET | WT, TC, ET |
| ``brats_ped`` | BraTS 2023-2025 PED | 1 ET, 2 NETC, 3 CC, 4 ED | WT, TC, ET, NETC, CC, ED |
| ``brats_ssa`` | BraTS 2023-2025 SSA (Africa) | 1 NETC, 2 SNFH, 3 ET | WT, TC, ET |
| ``msd``, ``nnunet`` | MSD Task01 / nnU-Net raw | by name from dataset.json | WT, TC, ET |
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from brats_data.dataset_json import DATASET_JSON, parse_dataset_json
from utils.labels import CLASSIC, MODALITIES, ClassDef, LabelScheme, RegionDef

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ET4_CONFIG = "configs/brats_evaluation_gli_et4.yaml"  # the package's GLI configuration with ET = 4 (relative path)
BRATS2023_PATIENT = r"^(?P<patient>BraTS-[A-Z]+-\d+)-\d+$"  # BraTS-GLI-00123-001 -> BraTS-GLI-00123


@dataclass(frozen=True)
class Layout:
    """How a release names its folders and files.

    Attributes:
        name: the naming convention (``brats2018``, ``brats2021``, ``brats2023``; ``msd``, ``nnunet``).
        groups: sub-folders of the dataset root that hold case folders (``("",)`` = the root itself).
        separator: between the case id and the file suffix (``_`` or ``-``).
        suffixes: canonical modality -> file suffix (e.g. ``"t1ce" -> "t1c"`` for BraTS 2023).
        seg_suffix: suffix of the segmentation file.
    """

    name: str
    groups: tuple[str, ...] = ("",)
    separator: str = "_"
    suffixes: tuple[tuple[str, str], ...] = tuple((m, m) for m in MODALITIES)
    seg_suffix: str = "seg"

    def suffix(self, modality: str) -> str:
        return dict(self.suffixes)[modality]

    def file_name(self, case_id: str, suffix: str, extension: str = ".nii.gz") -> str:
        """Exact file name of one modality/segmentation of a case."""
        return f"{case_id}{self.separator}{suffix}{extension}"


CLASSIC_LAYOUT_2018 = Layout("brats2018", groups=("HGG", "LGG"))
CLASSIC_LAYOUT = Layout("brats2021")
LAYOUT_2023 = Layout("brats2023", separator="-",
                     suffixes=(("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f")))
FOLDER_LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (CLASSIC_LAYOUT_2018, CLASSIC_LAYOUT, LAYOUT_2023)}


@dataclass(frozen=True)
class DatasetDef:
    """One data set (see the module docstring). Plain values only, so it pickles into worker processes and
    round-trips through checkpoints (:meth:`to_dict` / :meth:`from_dict`)."""

    name: str
    title: str
    root: str                                  # folder under --data_path holding the case folders ("" = itself)
    scheme: LabelScheme
    label_map: tuple[tuple[int, int], ...]     # file label value -> model class, background (0, 0) included
    write_back: tuple[int, ...]                # model class -> the label value written into predictions
    layout: Layout | None = None               # folder naming; None for dataset.json folders (source msd/nnunet)
    source: str = "folders"                    # "folders", "msd" (4D images) or "nnunet" (one file per channel)
    case_pattern: str | None = None            # regex of its case ids (finds the case folders; see enforce_ids)
    enforce_ids: bool = False                  # a case id not fitting case_pattern is a bad case
    patient_pattern: str | None = BRATS2023_PATIENT  # regex whose 'patient' group names the patient of a case
    grade_groups: bool = False                 # the group folders (HGG/LGG) are strata of the splits
    official_config: str | None = None         # brats-evaluation config name, or a path relative to the project
    official_values: tuple[int, ...] | None = None  # class -> label value of the official config, where the files'
                                                    # own values differ (MSD/nnU-Net); None: the files' own
    modalities: tuple[str, ...] = MODALITIES
    channels: tuple[tuple[str, int], ...] = ()  # MSD: modality -> index in the 4D image; nnU-Net: file channel
    file_ending: str = ".nii.gz"
    label_key: str = ""                        # what the cache key holds of the labels ("" -> from the map)
    synthetic_task: str | None = None          # a synthetic data set: the record whose scheme it imitates

    def __post_init__(self) -> None:
        classes = {c for _, c in self.label_map}
        if dict(self.label_map).get(0) != 0 or classes != set(range(self.scheme.num_classes)):
            raise ValueError(f"dataset {self.name}: the label map {dict(self.label_map)} must map 0 to background "
                             f"and reach every class 0..{self.scheme.num_classes - 1}")
        if len(self.write_back) != self.scheme.num_classes:
            raise ValueError(f"dataset {self.name}: write_back needs one value per class "
                             f"({self.scheme.num_classes}), got {self.write_back}")
        for cls, value in enumerate(self.write_back):
            if dict(self.label_map).get(value) != cls:
                raise ValueError(f"dataset {self.name}: write_back value {value} of class {cls} does not read back "
                                 f"as class {cls}")
        if self.official_values is not None and len(self.official_values) != self.scheme.num_classes:
            raise ValueError(f"dataset {self.name}: official_values needs one value per class")

    # ------------------------------------------------------------------ labels
    @property
    def labels(self) -> frozenset[int]:
        """The label values a segmentation of this data set may hold."""
        return frozenset(v for v, _ in self.label_map)

    @property
    def num_classes(self) -> int:
        return self.scheme.num_classes

    def map_labels(self, seg: np.ndarray) -> np.ndarray:
        """File label values -> model classes as uint8.

        Raises:
            ValueError: non-integer values or labels outside the data set's label values (named).
        """
        seg = np.asarray(seg)
        if not np.issubdtype(seg.dtype, np.integer):
            if not np.all(np.isfinite(seg)):
                raise ValueError("segmentation contains NaN or inf values")
            if not np.array_equal(seg, np.round(seg)):
                raise ValueError("segmentation contains non-integer values")
        values = np.unique(seg).astype(np.int64)
        unexpected = sorted(set(values.tolist()) - self.labels)
        if unexpected:
            raise ValueError(f"labels {unexpected} outside the {self.name} label set {sorted(self.labels)}")
        lut = np.zeros(max(self.labels) + 1, dtype=np.uint8)
        for value, cls in self.label_map:
            lut[value] = cls
        return lut[seg.astype(np.int64)]

    def unmap_labels(self, classes: np.ndarray, values: tuple[int, ...] | None = None) -> np.ndarray:
        """Model classes -> the data set's label values (``write_back``, or ``values``) as uint8: the inverse of
        :meth:`map_labels`, for writing predictions in the data set's own numbering."""
        lut = np.asarray(values if values is not None else self.write_back, dtype=np.uint8)
        classes = np.asarray(classes)
        if classes.size and (classes.min() < 0 or classes.max() >= len(lut)):
            raise ValueError(f"model classes must lie in 0..{len(lut) - 1}, got {classes.min()}..{classes.max()}")
        return lut[classes.astype(np.int64)]

    # ------------------------------------------------------------------ cases
    def patient_of(self, case_id: str) -> str:
        """The patient of a case (timepoints of one patient share it); the case id itself otherwise."""
        match = re.match(self.patient_pattern, case_id) if self.patient_pattern else None
        return match["patient"] if match else case_id

    def fits(self, case_id: str) -> bool:
        return self.case_pattern is None or re.match(self.case_pattern, case_id) is not None

    def cache_label_key(self) -> str:
        """The part of a cached case's key that describes the labels (a changed label map rebuilds the case)."""
        return self.label_key or f"{self.name}:" + ",".join(f"{v}>{c}" for v, c in self.label_map)

    def official(self) -> tuple[str, tuple[int, ...] | None]:
        """(the brats-evaluation configuration: a package name or an absolute path; the class -> value relabelling
        the files need first, None when their own values fit). Raises ValueError when there is none."""
        if self.official_config is None:
            raise ValueError(f"the official BraTS evaluation has no configuration for dataset {self.name}")
        config = self.official_config
        if config.endswith(".yaml"):
            config = str(PROJECT_ROOT / config)
        return config, self.official_values

    # ------------------------------------------------------------------ plain values
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.__dataclass_fields__:
            value = getattr(self, f)
            if isinstance(value, LabelScheme):
                value = value.to_dict()
            elif isinstance(value, Layout):
                value = {"name": value.name, "groups": list(value.groups), "separator": value.separator,
                         "suffixes": [list(s) for s in value.suffixes], "seg_suffix": value.seg_suffix}
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetDef:
        kw = dict(d)
        kw["scheme"] = LabelScheme.from_dict(d["scheme"])
        if d.get("layout"):
            lay = d["layout"]
            kw["layout"] = Layout(lay["name"], tuple(lay["groups"]), lay["separator"],
                                  tuple(tuple(s) for s in lay["suffixes"]), lay["seg_suffix"])
        kw["label_map"] = tuple((int(v), int(c)) for v, c in d["label_map"])
        kw["channels"] = tuple((str(m), int(i)) for m, i in d.get("channels", ()))
        kw["write_back"] = tuple(int(v) for v in d["write_back"])
        if d.get("official_values") is not None:
            kw["official_values"] = tuple(int(v) for v in d["official_values"])
        kw["modalities"] = tuple(d.get("modalities", MODALITIES))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in kw.items() if k in known})


# ----------------------------------------------------------------------------- the label schemes
def _scheme(classes: list[tuple[str, str]], regions: list[tuple[str, tuple[int, ...]]],
            region_order: tuple[tuple[str, int], ...]) -> LabelScheme:
    return LabelScheme(tuple(ClassDef(k, t) for k, t in classes), tuple(RegionDef(k, c) for k, c in regions),
                       region_order=region_order)


NETC, SNFH, ET, RC, CC, ED = ("netc", "NETC"), ("snfh", "SNFH"), ("et", "ET"), ("rc", "RC"), ("cc", "CC"), ("ed", "ED")
# region_order (region-based training): the nested WT > TC > ET paint SNFH/ED, NETC, ET; the disjoint RC and the
# cyst (inside PED's core, beside ET) paint their own class.
_GLI_ORDER = (("wt", 2), ("tc", 1), ("et", 3))
GLI_POST = _scheme([NETC, SNFH, ET, RC], [("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,)), ("netc", (1,)),
                                           ("snfh", (2,)), ("rc", (4,))], (*_GLI_ORDER, ("rc", 4)))
MET = _scheme([NETC, SNFH, ET, RC], [("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,)), ("rc", (4,))],
              (*_GLI_ORDER, ("rc", 4)))
MEN = _scheme([NETC, SNFH, ET], [("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))], _GLI_ORDER)
PED = _scheme([ET, NETC, CC, ED], [("wt", (1, 2, 3, 4)), ("tc", (1, 2, 3)), ("et", (1,)), ("netc", (2,)),
                                   ("cc", (3,)), ("ed", (4,))], (("wt", 4), ("tc", 2), ("cc", 3), ("et", 1)))


def _identity(n: int) -> tuple[tuple[int, int], ...]:
    return tuple((v, v) for v in range(n))


_ET4_MAP = ((0, 0), (1, 1), (2, 2), (4, 3))


def _brats_task(name: str, title: str, tag: str, scheme: LabelScheme, official: str, root: str) -> DatasetDef:
    """A BraTS 2023+ task: BraTS 2023 file names, ids ``BraTS-{tag}-PPPPP-TTT``, labels = model classes."""
    return DatasetDef(name, title, root, scheme, _identity(scheme.num_classes), tuple(range(scheme.num_classes)),
                      layout=LAYOUT_2023, case_pattern=rf"^BraTS-{tag}-\d{{5}}-\d{{3}}$", enforce_ids=True,
                      official_config=official)


DATASETS: dict[str, DatasetDef] = {d.name: d for d in (
    DatasetDef("brats2018", "BraTS 2018", "BRATS2018/MICCAI_BraTS_2018_Data_Training", CLASSIC, _ET4_MAP,
               (0, 1, 2, 4), layout=CLASSIC_LAYOUT_2018, grade_groups=True, official_config=ET4_CONFIG,
               label_key="brats2018"),
    DatasetDef("brats2021", "BraTS 2021", "BRATS2021/BraTS2021_Training_Data", CLASSIC, _ET4_MAP, (0, 1, 2, 4),
               layout=CLASSIC_LAYOUT, official_config=ET4_CONFIG, label_key="brats2021"),
    DatasetDef("brats2023", "BraTS 2023 GLI", "BRATS2023/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", CLASSIC,
               _identity(4), (0, 1, 2, 3), layout=LAYOUT_2023, case_pattern=r"^BraTS-GLI-\d{5}-\d{3}$",
               official_config="gli", label_key="brats2023"),
    DatasetDef("synthetic", "synthetic BraTS (BraTS 2021 layout)", "BRATS_SYNTHETIC/BraTS2021_Training_Data", CLASSIC,
               _ET4_MAP, (0, 1, 2, 4), layout=CLASSIC_LAYOUT, official_config=ET4_CONFIG, label_key="brats2021",
               synthetic_task="brats2021"),
    _brats_task("brats2024", "BraTS 2024/2025 GLI pre- and post-treatment", "GLI", GLI_POST, "gli", "BRATS2024_GLI"),
    _brats_task("brats_met", "BraTS 2023/2025 MET", "MET", MET, "mets", "BRATS_MET"),
    _brats_task("brats_men", "BraTS 2023/2025 MEN pre-operative", "MEN", MEN, "MenPre", "BRATS_MEN"),
    _brats_task("brats_ped", "BraTS 2023-2025 PED", "PED", PED, "ped", "BRATS_PED"),
    _brats_task("brats_ssa", "BraTS 2023-2025 SSA (BraTS-Africa)", "SSA", MEN, "gli", "BRATS_SSA"),
)}
DATASET_JSON_VERSIONS: tuple[str, ...] = ("msd", "nnunet")
MSD_TASK = "Task01_BrainTumour"
DATASET_VERSIONS: tuple[str, ...] = (*DATASETS, *DATASET_JSON_VERSIONS)
# --synthetic_task: the records a synthetic data set can imitate (its labels, names and regions)
SYNTHETIC_TASKS: tuple[str, ...] = ("brats2021", "brats2024", "brats_met", "brats_men", "brats_ped", "brats_ssa")


def synthetic_def(task: str = "brats2021") -> DatasetDef:
    """The record of a synthetic data set imitating ``task``: the default (``brats2021``) is the BraTS 2021 layout
    under ``BRATS_SYNTHETIC/BraTS2021_Training_Data``; another task keeps its own names, labels and regions under
    ``BRATS_SYNTHETIC_{TASK}/cases``."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"--synthetic_task must be one of {', '.join(SYNTHETIC_TASKS)}, got {task!r}")
    if task == "brats2021":
        return DATASETS["synthetic"]
    base = DATASETS[task]
    return replace(base, name="synthetic", title=f"synthetic {base.title}",
                   root=f"BRATS_SYNTHETIC_{task.upper()}/cases", synthetic_task=task,
                   label_key=f"synthetic-{task}:" + base.cache_label_key())


def dataset_json_def(kind: str, root: str | Path) -> DatasetDef:
    """The record of an MSD (``kind="msd"``) or nnU-Net raw (``"nnunet"``) dataset folder, from its dataset.json:
    channels and labels mapped by name (brats_data/dataset_json.py), the CLASSIC scheme, predictions written in
    the dataset's own values, and the official evaluation with the GLI configuration after relabelling to
    BraTS 2023 values (1 NCR/NET, 2 ED, 3 ET)."""
    spec = parse_dataset_json(root)
    write_back = tuple(min(v for v, c in spec.label_map.items() if c == cls) for cls in range(CLASSIC.num_classes))
    key = f"{kind}:" + ",".join(f"{v}>{c}" for v, c in sorted(spec.label_map.items()))
    if kind == "msd":
        key += ":ch=" + ",".join(str(spec.channels[m]) for m in MODALITIES)
    return DatasetDef(kind, "Medical Segmentation Decathlon Task01" if kind == "msd" else "nnU-Net raw dataset",
                      MSD_TASK if kind == "msd" else "", CLASSIC, tuple(sorted(spec.label_map.items())), write_back,
                      source=kind, patient_pattern=None, official_config="gli", official_values=(0, 1, 2, 3),
                      channels=tuple((m, spec.channels[m]) for m in MODALITIES), file_ending=spec.file_ending,
                      label_key=key)


def dataset_json_root(data_path: str | Path, name: str) -> Path:
    """The folder holding the dataset.json of ``--dataset_version msd|nnunet``: ``msd``:
    ``{data_path}/Task01_BrainTumour``, or ``data_path`` itself when it is that folder (holds a dataset.json and no
    Task01_BrainTumour); ``nnunet``: ``data_path`` itself (``{nnUNet_raw}/DatasetXXX_Name``)."""
    path = Path(data_path)
    if name == "msd":
        if not (path / MSD_TASK).is_dir() and (path.name == MSD_TASK or (path / DATASET_JSON).is_file()):
            return path
        return path / MSD_TASK
    return path


def dataset_def(name: str, data_path: str | Path | None = None, synthetic_task: str = "brats2021") -> DatasetDef:
    """The record of ``--dataset_version name``; MSD/nnU-Net read their dataset.json under ``data_path``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name == "synthetic":
        return synthetic_def(synthetic_task)
    if name in DATASETS:
        return DATASETS[name]
    if name in DATASET_JSON_VERSIONS:
        if data_path is None:
            raise ValueError(f"--dataset_version {name} needs --data_path (its dataset.json names the labels)")
        return dataset_json_def(name, dataset_json_root(data_path, name))
    raise ValueError(f"Unknown dataset_version {name!r}; valid: {', '.join(DATASET_VERSIONS)}")


def as_def(dataset: DatasetDef | str | dict[str, Any]) -> DatasetDef:
    """A record from a record, a registered name (not msd/nnunet: they need their dataset.json) or its dict."""
    if isinstance(dataset, DatasetDef):
        return dataset
    if isinstance(dataset, dict):
        return DatasetDef.from_dict(dataset)
    if dataset in DATASETS:
        return DATASETS[dataset]
    raise ValueError(f"Unknown dataset {dataset!r}; valid: {', '.join(DATASETS)} (msd/nnunet records come from "
                     "their dataset.json)")


