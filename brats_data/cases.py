"""BraTS layouts: case discovery, validation, label mapping, normalisation and raw case loading.

Arrays inside the suite use the axis order (Z, Y, X): nibabel's (X, Y, Z) arrays are transposed
with ``.transpose(2, 1, 0)`` and the voxel spacing is the header zooms reversed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from utils.labels import MODALITIES

from .dataset_json import DATASET_JSON, DatasetJsonError, DatasetSpec, parse_dataset_json  # noqa: F401 (re-export)

DATASET_VERSIONS: tuple[str, ...] = ("brats2018", "brats2021", "brats2023", "synthetic", "msd", "nnunet")
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
AFFINE_TOLERANCE = 1e-3
CLIP_PERCENTILES: tuple[float, float] = (0.5, 99.5)


@dataclass(frozen=True)
class Layout:
    """How one BraTS release names its folders and files.

    Attributes:
        name: layout name stored in ``CaseRecord.layout``.
        groups: sub-folders of the dataset root that hold case folders (``("",)`` = the root itself).
        separator: between the case id and the file suffix (``_`` or ``-``).
        suffixes: canonical modality -> file suffix (e.g. ``"t1ce" -> "t1c"`` for BraTS 2023).
        seg_suffix: suffix of the segmentation file.
        labels: the label values a segmentation may contain.
        label_map: label values renamed to model classes (others are kept).
    """

    name: str
    groups: tuple[str, ...]
    separator: str
    suffixes: dict[str, str]
    seg_suffix: str
    labels: frozenset[int]
    label_map: dict[int, int]

    def file_name(self, case_id: str, suffix: str, extension: str = ".nii.gz") -> str:
        """Exact file name of one modality/segmentation of a case."""
        return f"{case_id}{self.separator}{suffix}{extension}"


_CLASSIC_SUFFIXES = {m: m for m in MODALITIES}
LAYOUTS: dict[str, Layout] = {
    "brats2018": Layout("brats2018", ("HGG", "LGG"), "_", _CLASSIC_SUFFIXES, "seg",
                        frozenset({0, 1, 2, 4}), {4: 3}),
    "brats2021": Layout("brats2021", ("",), "_", _CLASSIC_SUFFIXES, "seg",
                        frozenset({0, 1, 2, 4}), {4: 3}),
    "brats2023": Layout("brats2023", ("",), "-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"},
                        "seg", frozenset({0, 1, 2, 3}), {}),
}
# dataset_version -> (folder below data_path holding the case folders / groups, layout name)
VERSION_ROOTS: dict[str, tuple[str, str]] = {
    "brats2018": ("BRATS2018/MICCAI_BraTS_2018_Data_Training", "brats2018"),
    "brats2021": ("BRATS2021/BraTS2021_Training_Data", "brats2021"),
    "brats2023": ("BRATS2023/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", "brats2023"),
    "synthetic": ("BRATS_SYNTHETIC/BraTS2021_Training_Data", "brats2021"),
    # dataset.json layouts: the layout name of a case also spells the dataset's label map (see dataset_layout)
    "msd": ("Task01_BrainTumour", "msd"),
    "nnunet": ("", "nnunet"),
}
# versions whose channels and labels are read from {dataset_root}/dataset.json
DATASET_JSON_VERSIONS: tuple[str, ...] = ("msd", "nnunet")
MSD_TASK = "Task01_BrainTumour"
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class BadCaseError(ValueError):
    """A case whose files are missing, unreadable or inconsistent.

    ``str()`` is one line naming the case and the file, e.g.
    ``case BraTS2021_00003: missing modality 't1' [/data/.../BraTS2021_00003_t1.nii.gz]``.
    """

    def __init__(self, case_id: str, path: Path | str, reason: str):
        self.case_id = case_id
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"case {case_id}: {self.reason} [{self.path}]")

    def __reduce__(self):  # keep the three fields when crossing process boundaries
        return (type(self), (self.case_id, str(self.path), self.reason))


@dataclass(frozen=True)
class CaseRecord:
    """One patient: the four modality files (canonical modality names), the segmentation, the layout."""

    case_id: str
    image_paths: dict[str, Path]
    label_path: Path
    layout: str
    channels: dict[str, int] | None = None  # modality -> index in the 4th axis of its (4D) file; None: 3D files

    def files(self) -> list[Path]:
        """The four modality files in canonical order, then the segmentation."""
        return [self.image_paths[m] for m in MODALITIES] + [self.label_path]


def check_unique_ids(ids: Sequence[str], where: str | Path) -> None:
    """Raise ``ValueError`` naming every case id that appears more than once in ``ids`` (found in ``where``)."""
    seen: set[str] = set()
    duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
    if duplicates:
        raise ValueError(f"duplicate case ids in {where}: {', '.join(duplicates)}")


def _check_version(dataset_version: str) -> None:
    if dataset_version not in VERSION_ROOTS:
        raise ValueError(f"Unknown dataset_version {dataset_version!r}; valid: {', '.join(DATASET_VERSIONS)}")


def dataset_layout(kind: str, spec: DatasetSpec) -> str:
    """Layout name of a dataset.json dataset: ``"{kind}:{value}>{class},..."``, plus ``":ch={i},..."`` (the
    channel of t1, t1ce, t2, flair) for MSD's 4D images, e.g. ``"msd:0>0,1>2,2>1,3>3:ch=1,2,3,0"``.

    The name carries the label map, so :func:`map_labels` / :func:`unmap_labels` work from it alone (in the
    cache's ``meta.json`` too), and the cache key changes when the dataset.json does."""
    name = f"{kind}:" + ",".join(f"{v}>{c}" for v, c in sorted(spec.label_map.items()))
    if kind == "msd":
        name += ":ch=" + ",".join(str(spec.channels[m]) for m in MODALITIES)
    return name


@functools.lru_cache(maxsize=64)
def _parse_layout(layout: str) -> Layout | None:
    kind, _, rest = layout.partition(":")
    if kind not in DATASET_JSON_VERSIONS or not rest:
        return None
    try:
        pairs = [p.split(">") for p in rest.split(":")[0].split(",")]
        label_map = {int(v): int(c) for v, c in pairs}
    except ValueError:
        return None
    if not label_map or any(not 0 <= c <= 3 for c in label_map.values()) or min(label_map) < 0:
        return None
    return Layout(layout, ("",), "_", {}, "", frozenset(label_map), label_map)


def _check_layout(layout: str) -> Layout:
    if layout in LAYOUTS:
        return LAYOUTS[layout]
    parsed = _parse_layout(layout) if isinstance(layout, str) else None
    if parsed is None:
        raise ValueError(f"Unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}, or msd:/nnunet:<label map>")
    return parsed


def dataset_root(data_path: str | Path, dataset_version: str) -> Path:
    """Folder below ``data_path`` that holds the case folders (or the HGG/LGG groups) of a version.

    ``msd``: ``{data_path}/Task01_BrainTumour``, or ``data_path`` itself when it is that folder (holds a
    dataset.json and no Task01_BrainTumour); ``nnunet``: ``data_path`` itself (``{nnUNet_raw}/DatasetXXX_Name``).
    """
    _check_version(dataset_version)
    if dataset_version == "msd":
        path = Path(data_path)
        if not (path / MSD_TASK).is_dir() and (path.name == MSD_TASK or (path / DATASET_JSON).is_file()):
            return path
    return Path(data_path) / VERSION_ROOTS[dataset_version][0]


def _find_file(folder: Path, layout: Layout, case_id: str, suffix: str) -> Path:
    """The exact expected file (``.nii.gz`` preferred, ``.nii`` accepted); the ``.nii.gz`` name if absent."""
    for ext in NIFTI_EXTENSIONS:
        candidate = folder / layout.file_name(case_id, suffix, ext)
        if candidate.is_file():
            return candidate
    return folder / layout.file_name(case_id, suffix)


def _case_record(folder: Path, layout: Layout) -> CaseRecord:
    case_id = folder.name
    images = {m: _find_file(folder, layout, case_id, layout.suffixes[m]) for m in MODALITIES}
    return CaseRecord(case_id, images, _find_file(folder, layout, case_id, layout.seg_suffix), layout.name)


def discover_cases(data_path: str | Path, dataset_version: str, max_samples: int | None = None) -> list[CaseRecord]:
    """Every case folder of a dataset, sorted by case id.

    A case folder is any non-hidden sub-directory of the dataset root (of ``HGG``/``LGG`` for BraTS
    2018); its files are matched by their exact expected names, so missing files are reported by
    :func:`validate_case`, not skipped here.  ``max_samples`` keeps the first N cases in sorted order.

    Raises:
        ValueError: unknown ``dataset_version`` or ``max_samples < 1``.
        FileNotFoundError: no case folder found (the message names the folder and the layout).
    """
    root = dataset_root(data_path, dataset_version)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples}")
    if dataset_version in DATASET_JSON_VERSIONS:
        if not (root / DATASET_JSON).is_file() and not (root / "imagesTr").is_dir():
            raise FileNotFoundError(f"No {dataset_version} cases found in {root} (expected {root / DATASET_JSON} "
                                    f"and {root / 'imagesTr'}; {_EXPECTED[dataset_version]})")
        records = dataset_json_cases(root, dataset_version)
        if not records:
            raise FileNotFoundError(f"No {dataset_version} cases found in {root / 'imagesTr'} "
                                    f"({_EXPECTED[dataset_version]})")
        return records[:max_samples] if max_samples is not None else records
    layout = LAYOUTS[VERSION_ROOTS[dataset_version][1]]
    folders = [
        child
        for group in layout.groups
        if (root / group).is_dir()
        for child in (root / group).iterdir()
        if child.is_dir() and not child.name.startswith(".")
    ]
    if not folders:
        example = Path(*(g for g in (layout.groups[0], "<case>") if g)) / layout.file_name(
            "<case>", layout.suffixes["t1"])
        raise FileNotFoundError(
            f"No {dataset_version} cases found in {root} (expected layout {layout.name}: {root / example})")
    records = sorted((_case_record(f, layout) for f in folders), key=lambda r: r.case_id)
    check_unique_ids([r.case_id for r in records], root)
    return records[:max_samples] if max_samples is not None else records


_EXPECTED = {
    "msd": "imagesTr/<case>.nii.gz 4D, labelsTr/<case>.nii.gz, channels and labels named in dataset.json",
    "nnunet": "imagesTr/<case>_0000.nii.gz ... _0003, labelsTr/<case>.nii.gz, channels and labels named in "
              "dataset.json",
}


def _is_image_file(path: Path, ending: str) -> bool:
    return path.is_file() and path.name.endswith(ending) and not path.name.startswith(".")  # macOS ._* too


def dataset_json_cases(root: str | Path, kind: str, images_dir: str = "imagesTr",
                       labels_dir: str = "labelsTr") -> list[CaseRecord]:
    """The cases of an MSD (``kind="msd"``) or nnU-Net raw (``"nnunet"``) dataset folder, sorted by case id.

    MSD: ``{images_dir}/{case}.nii.gz`` (4D; all four modalities map to that file, ``channels`` gives each
    one's index) and ``{labels_dir}/{case}.nii.gz``. nnU-Net: ``{images_dir}/{case}_{XXXX}{file_ending}``
    (one file per channel) and ``{labels_dir}/{case}{file_ending}``. Channel files missing for a case are
    reported by :func:`validate_case`. Hidden and macOS ``._*`` files are ignored.

    Raises:
        DatasetJsonError: dataset.json missing or not mappable (a ``ValueError``).
    """
    root = Path(root)
    spec = parse_dataset_json(root)
    layout = dataset_layout(kind, spec)
    images, labels = root / images_dir, root / labels_dir
    if not images.is_dir():
        return []
    records = []
    if kind == "msd":
        endings = (spec.file_ending,) if spec.file_ending != ".nii.gz" else NIFTI_EXTENSIONS
        for path in sorted(images.iterdir()):
            ending = next((e for e in endings if _is_image_file(path, e)), None)
            if ending is None:
                continue
            case_id = path.name[: -len(ending)]
            label = next((labels / f"{case_id}{e}" for e in NIFTI_EXTENSIONS if (labels / f"{case_id}{e}").is_file()),
                         labels / f"{case_id}{ending}")
            records.append(CaseRecord(case_id, dict.fromkeys(MODALITIES, path), label, layout, dict(spec.channels)))
    else:
        ending = spec.file_ending
        ids = sorted({m["case"] for p in images.iterdir() if _is_image_file(p, ending)
                      if (m := _CHANNEL_FILE.match(p.name[: -len(ending)]))})
        for case_id in ids:
            paths = {m: images / f"{case_id}_{spec.channels[m]:04d}{ending}" for m in MODALITIES}
            records.append(CaseRecord(case_id, paths, labels / f"{case_id}{ending}", layout))
    return records


def find_dataset_folder_cases(folder: str | Path) -> list[CaseRecord] | None:
    """The cases of an MSD or nnU-Net dataset folder (one holding dataset.json): those of ``imagesTs`` when it
    holds images, else of ``imagesTr``; or of an ``images*`` folder whose parent holds dataset.json. The kind
    is told by the file names (``{case}_XXXX`` files: nnU-Net; otherwise MSD's 4D files). ``None`` if
    ``folder`` is neither."""
    folder = Path(folder)
    if (folder / DATASET_JSON).is_file():
        root = folder
        has = [d for d in ("imagesTs", "imagesTr") if (folder / d).is_dir() and any(
            _is_image_file(p, ".nii") or _is_image_file(p, ".nii.gz") for p in (folder / d).iterdir())]
        if not has:
            return None
        images = has[0]
    elif folder.name.startswith("images") and (folder.parent / DATASET_JSON).is_file():
        root, images = folder.parent, folder.name
    else:
        return None
    names = [p.name for p in (root / images).iterdir() if _is_image_file(p, ".nii") or _is_image_file(p, ".nii.gz")]
    stems = [n.removesuffix(".gz").removesuffix(".nii") for n in names]
    kind = "nnunet" if stems and all(_CHANNEL_FILE.match(s) for s in stems) else "msd"
    return dataset_json_cases(root, kind, images, images.replace("images", "labels", 1))


def _is_channel_file(case: CaseRecord, path: Path) -> bool:
    return bool(case.channels) and path != case.label_path and path in case.image_paths.values()


def _open_header(case: CaseRecord, path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        name = next((m for m, p in case.image_paths.items() if p == path), "seg")
        kind = ("segmentation" if path == case.label_path else
                "image (all four modalities)" if _is_channel_file(case, path) else f"modality {name!r}")
        raise BadCaseError(case.case_id, path, f"missing {kind} (expected this .nii.gz or .nii file)")
    try:
        img = nib.load(str(path))
        shape, _ = img.shape, img.affine
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise BadCaseError(case.case_id, path, f"unreadable NIfTI header: {exc}") from exc
    if _is_channel_file(case, path):
        needed = 1 + max(c for m, c in case.channels.items() if case.image_paths[m] == path)
        if len(shape) != 4 or shape[3] < needed:
            raise BadCaseError(case.case_id, path, f"expected a 4D image with at least {needed} channels "
                                                   f"(dataset.json), got shape {tuple(shape)}")
    elif len(shape) != 3:
        raise BadCaseError(case.case_id, path, f"expected a 3D volume, got shape {tuple(shape)}")
    return img


def validate_case(case: CaseRecord, *, full: bool = False) -> None:
    """Cheap checks of one case: every file exists, headers are readable, shapes and affines agree.

    With ``full=True`` the voxel data are read too (truncated data, NaN/inf, labels outside the
    layout's set), which is what :func:`load_case` does anyway.

    Raises:
        BadCaseError: naming the case and the offending file.
    """
    _check_layout(case.layout)
    reference_path = case.image_paths[MODALITIES[0]]
    reference = _open_header(case, reference_path)
    for path in list(dict.fromkeys(case.files()))[1:]:
        img = _open_header(case, path)
        if img.shape[:3] != reference.shape[:3]:
            raise BadCaseError(case.case_id, path,
                               f"shape {img.shape[:3]} differs from {reference.shape[:3]} of {reference_path.name}")
        if not np.allclose(img.affine, reference.affine, rtol=0.0, atol=AFFINE_TOLERANCE):
            raise BadCaseError(case.case_id, path,
                               f"affine differs from that of {reference_path.name} (tolerance {AFFINE_TOLERANCE})")
    if full:
        read_case(case)


def map_labels(seg: np.ndarray, layout: str) -> np.ndarray:
    """BraTS labels -> model classes 0..3 as uint8 (4 -> 3 for 2018/2021; 2023 unchanged).

    Raises:
        ValueError: non-integer values or labels outside the layout's label set.
    """
    spec = _check_layout(layout)
    seg = np.asarray(seg)
    if not np.issubdtype(seg.dtype, np.integer):
        if not np.all(np.isfinite(seg)):
            raise ValueError("segmentation contains NaN or inf values")
        if not np.array_equal(seg, np.round(seg)):
            raise ValueError("segmentation contains non-integer values")
    values = np.unique(seg).astype(np.int64)
    unexpected = sorted(set(values.tolist()) - spec.labels)
    if unexpected:
        raise ValueError(f"labels {unexpected} outside the {layout} label set {sorted(spec.labels)}")
    lut = np.zeros(max(spec.labels) + 1, dtype=np.uint8)
    for value in spec.labels:
        lut[value] = spec.label_map.get(value, value)
    return lut[seg.astype(np.int64)]


def normalize_modality(volume: np.ndarray, percentiles: tuple[float, float] = CLIP_PERCENTILES) -> np.ndarray:
    """Z-score the non-zero (brain) voxels after clipping them to their percentiles; float32.

    Background (exact zeros) stays 0; an all-zero volume stays all zero; a constant brain
    (std 0) is only mean-subtracted.  Pure: the input is not modified.
    """
    lower, upper = percentiles
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {percentiles}")
    volume = np.asarray(volume, dtype=np.float32)
    out = np.zeros(volume.shape, dtype=np.float32)
    mask = volume != 0
    if not mask.any():
        return out
    values = volume[mask]
    lo, hi = np.percentile(values, [lower, upper])
    values = np.clip(values, lo, hi)
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    values = values - np.float32(mean)
    if std > 0:
        values /= np.float32(std)
    out[mask] = values
    return out


@dataclass
class RawCase:
    """Voxel data of one case as stored, in (Z, Y, X) order: images (4, Z, Y, X) float32 in canonical
    modality order, label (Z, Y, X) uint8 model classes, spacing (z, y, x) and the NIfTI affine."""

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def _read_volume(case: CaseRecord, path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = _open_header(case, path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError for truncated files
        raise BadCaseError(case.case_id, path, f"unreadable or truncated NIfTI data: {exc}") from exc
    return data.transpose(2, 1, 0, *range(3, data.ndim)), img


def _modality_volumes(case: CaseRecord):
    """(modality, path, (Z, Y, X) array, image) in canonical order; a 4D file is read once, its channels taken."""
    read: dict[Path, tuple[np.ndarray, nib.Nifti1Image]] = {}
    for modality in MODALITIES:
        path = case.image_paths[modality]
        if path not in read:
            read[path] = _read_volume(case, path)
        data, img = read[path]
        if case.channels:
            data = data[..., case.channels[modality]]
        yield modality, path, data, img


def read_case(case: CaseRecord) -> RawCase:
    """Read and check all voxel data of a case (not normalised).

    Raises:
        BadCaseError: missing/unreadable/truncated file, shape or affine mismatch, NaN/inf voxels,
            labels outside the layout's set.
    """
    validate_case(case)
    images = []
    affine = None
    for modality, path, data, img in _modality_volumes(case):
        data = data.astype(np.float32)
        if not np.all(np.isfinite(data)):
            raise BadCaseError(case.case_id, path, f"modality {modality!r} contains NaN or inf voxels")
        images.append(data)
        affine = img.affine if affine is None else affine
    seg, img = _read_volume(case, case.label_path)
    try:
        label = map_labels(seg, case.layout)
    except ValueError as exc:
        raise BadCaseError(case.case_id, case.label_path, str(exc)) from exc
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3][::-1])
    return RawCase(np.stack(images), label, spacing, np.asarray(affine, dtype=np.float64))


def load_case(case: CaseRecord) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Image (4, Z, Y, X) float32 normalised per modality, label (Z, Y, X) uint8, spacing (z, y, x)."""
    raw = read_case(case)
    image = np.stack([normalize_modality(volume) for volume in raw.image])
    return image, raw.label, raw.spacing


def unmap_labels(classes: np.ndarray, layout: str) -> np.ndarray:
    """Model classes 0..3 -> the layout's BraTS labels as uint8 (3 -> 4 for 2018/2021; 2023 unchanged):
    the inverse of :func:`map_labels`, for writing predictions in the dataset's convention."""
    spec = _check_layout(layout)
    inverse = {spec.label_map.get(label, label): label for label in sorted(spec.labels, reverse=True)}
    lut = np.zeros(max(inverse) + 1, dtype=np.uint8)
    for cls, label in inverse.items():
        lut[cls] = label
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() >= len(lut)):
        raise ValueError(f"model classes must lie in 0..{len(lut) - 1}, got {classes.min()}..{classes.max()}")
    return lut[classes.astype(np.int64)]


def find_case(folder: str | Path, prefer: str | None = None) -> CaseRecord | None:
    """The case in ``folder`` (named by its case id) in the first layout whose four modality files are
    all there, ``prefer`` tried first; ``None`` if no layout fits. The segmentation may be absent."""
    for name in dict.fromkeys([prefer, *LAYOUTS] if prefer in LAYOUTS else LAYOUTS):
        record = _case_record(Path(folder), LAYOUTS[name])
        if all(p.is_file() for p in record.image_paths.values()):
            return record
    return None


def read_images(case: CaseRecord) -> RawCase:
    """The four modalities as :func:`read_case` reads and checks them, without the segmentation (which
    may be missing: a new case to predict); ``label`` is all background, spacing and affine are T1's."""
    reference_path = case.image_paths[MODALITIES[0]]
    reference = _open_header(case, reference_path)
    images = []
    for modality, path, data, img in _modality_volumes(case):
        if img.shape[:3] != reference.shape[:3] or not np.allclose(img.affine, reference.affine, rtol=0.0,
                                                           atol=AFFINE_TOLERANCE):
            raise BadCaseError(case.case_id, path, f"shape or affine differs from that of {reference_path.name}")
        if not np.all(np.isfinite(data := data.astype(np.float32))):
            raise BadCaseError(case.case_id, path, f"modality {modality!r} contains NaN or inf voxels")
        images.append(data)
    spacing = tuple(float(z) for z in reference.header.get_zooms()[:3][::-1])
    return RawCase(np.stack(images), np.zeros(images[0].shape, dtype=np.uint8), spacing,
                   np.asarray(reference.affine, dtype=np.float64))


def _has_nifti(folder: Path) -> bool:
    return any(p.is_file() and p.name.endswith(NIFTI_EXTENSIONS) for p in folder.iterdir())


def _cases_in(folder: Path, prefer: str | None, depth: int) -> list[CaseRecord]:
    dataset_cases = find_dataset_folder_cases(folder)  # MSD / nnU-Net folder (dataset.json), or its images*
    if dataset_cases is not None:
        return dataset_cases
    case = find_case(folder, prefer)
    if case is not None:
        return [case]
    if _has_nifti(folder):
        raise BadCaseError(folder.name, folder, "its NIfTI files fit no BraTS layout: the four modalities are "
                           "needed ({case}_{t1,t1ce,t2,flair}.nii.gz, or {case}-{t1n,t1c,t2w,t2f}.nii.gz)")
    if depth == 0:
        return []
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [c for sub in subfolders for c in _cases_in(sub, prefer, depth - 1)]


def find_input_cases(input_dir: str | Path, prefer: str | None = None) -> list[CaseRecord]:
    """The cases of ``input_dir`` (new scans to predict): a case folder, or a folder of case folders (or of
    group folders of case folders, e.g. BraTS 2018's HGG/LGG), in any supported layout (``prefer`` tried
    first), sorted by id. An MSD or nnU-Net dataset folder (holding dataset.json) gives the cases of its
    ``imagesTs`` (else ``imagesTr``), its ``images*`` folder those of that folder; their labels are written
    back in the dataset.json's numbering."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    cases = sorted(_cases_in(root, prefer, depth=2), key=lambda c: c.case_id)
    if not cases:
        raise FileNotFoundError(f"no cases in {root} (a case folder CASE holds CASE_t1.nii.gz, CASE_t1ce.nii.gz, "
                                "CASE_t2.nii.gz, CASE_flair.nii.gz, or the BraTS 2023 names CASE-t1n.nii.gz ...)")
    check_unique_ids([c.case_id for c in cases], root)
    return cases
