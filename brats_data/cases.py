"""Case discovery, validation, label mapping, normalisation and raw case loading, for every data set of
``brats_data/definitions.py`` (the record says where the cases are, how files are named, which labels exist).

Arrays inside the suite use the axis order (Z, Y, X): nibabel's (X, Y, Z) arrays are transposed
with ``.transpose(2, 1, 0)`` and the voxel spacing is the header zooms reversed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from utils.labels import MODALITIES

from .dataset_json import DATASET_JSON, DatasetJsonError, DatasetSpec, parse_dataset_json  # noqa: F401 (re-export)
from .definitions import (
    DATASET_JSON_VERSIONS,
    DATASET_VERSIONS,
    DATASETS,
    FOLDER_LAYOUTS,
    DatasetDef,
    Layout,
    as_def,
    dataset_def,
    dataset_json_def,
    dataset_json_root,
)

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
AFFINE_TOLERANCE = 1e-3
CLIP_PERCENTILES: tuple[float, float] = (0.5, 99.5)
LAYOUTS = FOLDER_LAYOUTS  # the folder naming conventions (brats2018, brats2021, brats2023)
# The record a case found by its file names alone belongs to (predict.py on a folder of new scans)
_NAMING_DEFAULT = {"brats2018": "brats2018", "brats2021": "brats2021", "brats2023": "brats2023"}
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# The preprocessing cache (brats_data/cache.py) as discovery must recognise it wherever it lies, even among the
# case folders: the default cache is {data_path}/preprocessed/{dataset_version} (ExperimentConfig.cache_dir)
CACHE_FOLDER = "preprocessed"
CACHE_LOCK = ".lock"  # in every cache folder (held while it is built)
CACHE_FILES: tuple[str, ...] = ("image.npy", "label.npy", "fg.npy", "meta.json")  # in each cached case's folder
# (every cache version; version 2 adds mask.npy: brats_data.cache.FILES)


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
    """One case: the four modality files (canonical modality names), the segmentation, its data set's record."""

    case_id: str
    image_paths: dict[str, Path]
    label_path: Path
    dataset: DatasetDef
    channels: dict[str, int] | None = None  # modality -> index in the 4th axis of its (4D) file; None: 3D files

    @property
    def layout(self) -> str:
        """The naming convention of its files (``brats2018``/``brats2021``/``brats2023``, ``msd``, ``nnunet``)."""
        return self.dataset.layout.name if self.dataset.layout is not None else self.dataset.source

    def files(self) -> list[Path]:
        """The four modality files in canonical order, then the segmentation."""
        return [self.image_paths[m] for m in MODALITIES] + [self.label_path]


def check_unique_ids(ids: Sequence[str], where: str | Path) -> None:
    """Raise ``ValueError`` naming every case id that appears more than once in ``ids`` (found in ``where``)."""
    seen: set[str] = set()
    duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
    if duplicates:
        raise ValueError(f"duplicate case ids in {where}: {', '.join(duplicates)}")


def _definition(dataset: DatasetDef | str, data_path: str | Path) -> DatasetDef:
    return dataset if isinstance(dataset, DatasetDef) else dataset_def(dataset, data_path)


def _is_cache(folder: Path) -> bool:
    """``folder`` is a preprocessing cache: its lock file, or a sub-folder holding a cached case's files."""
    return (folder / CACHE_LOCK).is_file() or any(
        child.is_dir() and all((child / name).is_file() for name in CACHE_FILES) for child in folder.iterdir())


def is_data_folder(folder: Path) -> bool:
    """The one rule of which sub-folders case discovery looks into (case folders, or group folders of them), for
    every data set and every caller (training, ``--preprocess_only``, evaluation and export, ``predict.py``).
    Never looked into:

    - a hidden folder (``.name``; also the cache's own ``.tmp-*`` / ``.old-*`` folders);
    - a folder named :data:`CACHE_FOLDER` (``preprocessed``): the default cache,
      ``{data_path}/preprocessed/{dataset_version}``, lies among the case folders when ``--data_path`` is the
      folder of the case folders;
    - a folder holding no NIfTI file that is a preprocessing cache (its :data:`CACHE_LOCK`, or a sub-folder with
      a cached case's :data:`CACHE_FILES`) or whose sub-folders are all caches: a ``--cache_dir`` of any name
      among the case folders, or a folder of caches (a group folder holding a cache beside case folders is
      looked into).

    Every other folder is: one whose files are missing, or whose name does not fit the data set's ids, is still
    a case, which :func:`validate_case` reports (a bad case is never skipped silently)."""
    name = folder.name
    if name.startswith(".") or name == CACHE_FOLDER or not folder.is_dir():
        return False
    if _has_nifti(folder):
        return True
    if _is_cache(folder):
        return False
    subfolders = [child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")]
    return not (subfolders and all(_is_cache(child) for child in subfolders))


def data_subfolders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` that :func:`is_data_folder` lets discovery look into, sorted by name."""
    return sorted(child for child in folder.iterdir() if is_data_folder(child))


def _holds_cases(folder: Path, definition: DatasetDef) -> bool:
    """``folder`` itself holds case folders of ``definition`` (ids fitting its pattern)."""
    return definition.case_pattern is not None and folder.is_dir() and any(
        definition.fits(child.name) and is_data_folder(child) for child in folder.iterdir())


def dataset_root(data_path: str | Path, dataset: DatasetDef | str) -> Path:
    """Folder below ``data_path`` that holds the case folders (or the HGG/LGG groups) of a data set.

    ``data_path`` itself when it already holds case folders fitting the record's id pattern (whatever the
    release calls that folder); ``msd``: ``{data_path}/Task01_BrainTumour``, or ``data_path`` itself when it is
    that folder (holds a dataset.json and no Task01_BrainTumour); ``nnunet``: ``data_path`` itself
    (``{nnUNet_raw}/DatasetXXX_Name``).
    """
    path = Path(data_path)
    name = dataset if isinstance(dataset, str) else dataset.source if dataset.source != "folders" else dataset.name
    if name in DATASET_JSON_VERSIONS:
        return dataset_json_root(path, name)
    definition = as_def(dataset) if not isinstance(dataset, str) or dataset in DATASETS else None
    if definition is None:
        raise ValueError(f"Unknown dataset_version {dataset!r}; valid: {', '.join(DATASET_VERSIONS)}")
    if _holds_cases(path, definition):
        return path
    return path / definition.root


def _find_file(folder: Path, layout: Layout, case_id: str, suffix: str) -> Path:
    """The exact expected file (``.nii.gz`` preferred, ``.nii`` accepted); the ``.nii.gz`` name if absent."""
    for ext in NIFTI_EXTENSIONS:
        candidate = folder / layout.file_name(case_id, suffix, ext)
        if candidate.is_file():
            return candidate
    return folder / layout.file_name(case_id, suffix)


def _case_record(folder: Path, definition: DatasetDef) -> CaseRecord:
    case_id, layout = folder.name, definition.layout
    images = {m: _find_file(folder, layout, case_id, layout.suffix(m)) for m in MODALITIES}
    return CaseRecord(case_id, images, _find_file(folder, layout, case_id, layout.seg_suffix), definition)


def discover_cases(data_path: str | Path, dataset: DatasetDef | str, max_samples: int | None = None
                   ) -> list[CaseRecord]:
    """Every case folder of a data set (a record, or a ``--dataset_version`` name), sorted by case id.

    A case folder is any sub-directory of the dataset root (of ``HGG``/``LGG`` for BraTS 2018) that
    :func:`is_data_folder` admits (never a hidden folder nor the preprocessing cache); its files are matched
    by their exact expected names, so missing files (and ids that do not fit the data set's pattern) are
    reported by :func:`validate_case`, not skipped here.  ``max_samples`` keeps the first N cases in sorted
    order.

    Raises:
        ValueError: unknown data set or ``max_samples < 1``.
        FileNotFoundError: no case folder found (the message names the folder and the layout).
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples}")
    kind = dataset if isinstance(dataset, str) else dataset.source
    if kind in DATASET_JSON_VERSIONS:  # the record comes from the dataset.json: look for the folder first
        root = dataset_root(data_path, kind)
        if not (root / DATASET_JSON).is_file() and not (root / "imagesTr").is_dir():
            raise FileNotFoundError(f"No {kind} cases found in {root} (expected {root / DATASET_JSON} "
                                    f"and {root / 'imagesTr'}; {_EXPECTED[kind]})")
        records = dataset_json_cases(root, kind)
        if not records:
            raise FileNotFoundError(f"No {kind} cases found in {root / 'imagesTr'} ({_EXPECTED[kind]})")
        return records[:max_samples] if max_samples is not None else records
    definition = _definition(dataset, data_path)
    root = dataset_root(data_path, definition)
    layout = definition.layout
    folders = [child for group in layout.groups if (root / group).is_dir() for child in data_subfolders(root / group)]
    if not folders:
        example = Path(*(g for g in (layout.groups[0], "<case>") if g)) / layout.file_name(
            "<case>", layout.suffix("t1"))
        raise FileNotFoundError(
            f"No {definition.name} cases found in {root} (expected layout {layout.name}: {root / example})")
    records = sorted((_case_record(f, definition) for f in folders), key=lambda r: r.case_id)
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
    definition = dataset_json_def(kind, root)
    channels = dict(definition.channels)
    images, labels = root / images_dir, root / labels_dir
    if not images.is_dir():
        return []
    records = []
    if kind == "msd":
        endings = (definition.file_ending,) if definition.file_ending != ".nii.gz" else NIFTI_EXTENSIONS
        for path in sorted(images.iterdir()):
            ending = next((e for e in endings if _is_image_file(path, e)), None)
            if ending is None:
                continue
            case_id = path.name[: -len(ending)]
            label = next((labels / f"{case_id}{e}" for e in NIFTI_EXTENSIONS if (labels / f"{case_id}{e}").is_file()),
                         labels / f"{case_id}{ending}")
            records.append(CaseRecord(case_id, dict.fromkeys(MODALITIES, path), label, definition, channels))
    else:
        ending = definition.file_ending
        ids = sorted({m["case"] for p in images.iterdir() if _is_image_file(p, ending)
                      if (m := _CHANNEL_FILE.match(p.name[: -len(ending)]))})
        for case_id in ids:
            paths = {m: images / f"{case_id}_{channels[m]:04d}{ending}" for m in MODALITIES}
            records.append(CaseRecord(case_id, paths, labels / f"{case_id}{ending}", definition))
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
    data set's label values), which is what :func:`load_case` does anyway. A case id that does not fit a data set
    whose ids are fixed (the BraTS 2023+ tasks) is a bad case too.

    Raises:
        BadCaseError: naming the case and the offending file.
    """
    if case.dataset.enforce_ids and not case.dataset.fits(case.case_id):
        raise BadCaseError(case.case_id, case.label_path.parent, f"case id {case.case_id!r} does not fit the "
                           f"{case.dataset.name} ids ({case.dataset.case_pattern})")
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


def map_labels(seg: np.ndarray, dataset: DatasetDef | str) -> np.ndarray:
    """File label values -> model classes as uint8 (BraTS 2018/2021: 4 -> 3; BraTS 2023 unchanged), by the data
    set's record (or a registered ``--dataset_version`` name).

    Raises:
        ValueError: non-integer values or labels outside the data set's label set.
    """
    return as_def(dataset).map_labels(seg)


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
        label = map_labels(seg, case.dataset)
    except ValueError as exc:
        raise BadCaseError(case.case_id, case.label_path, str(exc)) from exc
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3][::-1])
    return RawCase(np.stack(images), label, spacing, np.asarray(affine, dtype=np.float64))


def load_case(case: CaseRecord) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Image (4, Z, Y, X) float32 normalised per modality, label (Z, Y, X) uint8, spacing (z, y, x)."""
    raw = read_case(case)
    image = np.stack([normalize_modality(volume) for volume in raw.image])
    return image, raw.label, raw.spacing


def unmap_labels(classes: np.ndarray, dataset: DatasetDef | str | dict[str, Any]) -> np.ndarray:
    """Model classes -> the data set's label values as uint8 (3 -> 4 for 2018/2021; 2023 unchanged; PED's ET is 1):
    the inverse of :func:`map_labels`, for writing predictions in the data set's convention."""
    return as_def(dataset).unmap_labels(classes)


def find_case(folder: str | Path, prefer: DatasetDef | None = None) -> CaseRecord | None:
    """The case in ``folder`` (named by its case id) in the first naming whose four modality files are all there,
    ``prefer``'s first (the case then belongs to that record); otherwise the record of that naming (BraTS
    2018/2021 or 2023). ``None`` if no naming fits. The segmentation may be absent."""
    candidates = [prefer] if prefer is not None and prefer.layout is not None else []
    candidates += [DATASETS[_NAMING_DEFAULT[name]] for name in FOLDER_LAYOUTS if name != "brats2018"]
    for definition in candidates:
        record = _case_record(Path(folder), definition)
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


def _cases_in(folder: Path, prefer: DatasetDef | None, depth: int) -> list[CaseRecord]:
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
    return [c for sub in data_subfolders(folder) for c in _cases_in(sub, prefer, depth - 1)]


def find_input_cases(input_dir: str | Path, prefer: DatasetDef | None = None) -> list[CaseRecord]:
    """The cases of ``input_dir`` (new scans to predict): a case folder, or a folder of case folders (or of
    group folders of case folders, e.g. BraTS 2018's HGG/LGG), in any supported naming (``prefer``'s, the
    run's data set, tried first), sorted by id; sub-folders as :func:`is_data_folder` says (never the
    preprocessing cache). An MSD or nnU-Net dataset folder (holding dataset.json) gives the
    cases of its ``imagesTs`` (else ``imagesTr``), its ``images*`` folder those of that folder; their labels are
    written back in the dataset.json's numbering."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    cases = sorted(_cases_in(root, prefer, depth=2), key=lambda c: c.case_id)
    if not cases:
        raise FileNotFoundError(f"no cases in {root} (a case folder CASE holds CASE_t1.nii.gz, CASE_t1ce.nii.gz, "
                                "CASE_t2.nii.gz, CASE_flair.nii.gz, or the BraTS 2023 names CASE-t1n.nii.gz ...)")
    check_unique_ids([c.case_id for c in cases], root)
    return cases
