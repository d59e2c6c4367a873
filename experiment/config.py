"""``ExperimentConfig``: everything a run depends on, and the one table the CLI is built from.

Each field that is a command-line option carries its flag, help, group and choices in its
``metadata`` (see :func:`option`), so a new option is one field here: :func:`build_parser` (the parser of
``integrated_experiment.py``) is built from :func:`cli_fields`, and so is the README's options table
(``python -m experiment.config --write README.md``; a test keeps it current). Fields without metadata
(e.g. ``weight_decay``) are configuration only.

:func:`load_run_config` reads a run folder's ``config.json`` back, with explicit override rules,
for ``--resume``, ``evaluate_experiment.py`` and prediction.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from brats_data.cases import CACHE_FOLDER
from brats_data.dataset_json import DATASET_JSON
from brats_data.definitions import (
    DATASET_JSON_VERSIONS,
    DATASET_VERSIONS,
    SYNTHETIC_TASKS,
    DatasetDef,
    dataset_def,
    dataset_json_root,
)
from models import list_models, model_spec
from utils.io import read_json

CONFIG_JSON = "config.json"  # re-exported by run_folder, which owns every file name
DEFAULT_DATA_PATH = os.environ.get("BRATS_DATA_PATH", "./data")
LOSSES = ("nnunet", "standard", "nnunet_v2")
RECIPE_NAMES = ("nnunet",)
OPTIMIZERS = ("adamw", "sgd")
AUGMENTATIONS = ("flips", "nnunet")
SAMPLINGS = ("nnunet", "voxel")  # brats_data.datasets.SAMPLINGS
BLENDINGS = ("cosine", "gaussian", "constant", "nnunet")  # inference.predictor.BLENDINGS
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-5, "sgd": 3e-5}
N_FOLDS = 5  # --use_5fold
AMP_MODES = ("auto", "bf16", "fp16", "none")
TRACKERS = ("none", "tensorboard", "mlflow")  # run/tracking.py
DEFAULT_TRACKER = "tensorboard"

# What a later command may change about an existing run: where and how it runs, never what it is.
RUNTIME_FIELDS: tuple[str, ...] = ("data_path", "cache_dir", "device", "num_workers", "sharing_strategy",
                                   "preprocess_workers", "tracker", "mlflow_uri")


@dataclass(frozen=True)
class Shard:
    """``--shard I/N``: the units at positions I, I+N, I+2N ... of the experiment's order (``0 <= I < N``).

    Parsed once, when the configuration is made (:meth:`parse`); ``str()`` gives back ``"I/N"``, the form of the
    command line and of ``config.json``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got {self}")

    @classmethod
    def parse(cls, text: str | Shard) -> Shard:
        """``"I/N"`` (spaces allowed around the numbers) -> ``Shard(I, N)``; ``ValueError`` naming the rule
        otherwise."""
        if isinstance(text, Shard):
            return text
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if match is None or not 0 <= int(match[1]) < int(match[2]):
            raise ValueError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, units: Sequence[Any]) -> list[Any]:
        """This shard's part of ``units`` (the experiment's units in their one order)."""
        return list(units[self.index::self.count])


# ----------------------------------------------------------------------------- the data set's record
# Records are immutable (frozen dataclasses), so a configuration's record is computed once per distinct value of the
# fields it depends on and shared.
@functools.lru_cache(maxsize=64)
def _recorded_dataset(record: str) -> DatasetDef:
    """The record saved in a configuration (``dataset``, as sorted JSON)."""
    return DatasetDef.from_dict(json.loads(record))


def _dataset_json_stamp(version: str, data_path: str | None) -> tuple[int, int, int] | None:
    """MSD/nnU-Net: the inode, modification time and size of the dataset.json their record is read from, so that a
    rewritten file is read again; None for the records that read no file (or when it is missing: reading it
    raises, and a raised error is never cached)."""
    if version not in DATASET_JSON_VERSIONS or data_path is None:
        return None
    try:
        stat = (dataset_json_root(data_path, version) / DATASET_JSON).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _resolved_dataset(version: str, data_path: str | None, synthetic_task: str,
                      _stamp: tuple[int, int, int] | None) -> DatasetDef:
    """The record of ``--dataset_version`` (``brats_data.definitions.dataset_def``), per file version (``_stamp``)."""
    return dataset_def(version, data_path, synthetic_task)


def option(default: Any = MISSING, help: str = "", *, group: str = "run", flag: str | None = None,
           choices: Sequence[Any] | None = None, type: Any = None, nargs: Any = None, metavar: Any = None,
           default_factory: Any = MISSING, flags: dict[str, Any] | None = None, shown: str | None = None,
           negatable: bool = False) -> Any:
    """A dataclass field that is also a command-line option.

    ``flag`` renames the option (default ``--{field name}``); a bool field defaulting to False is a
    ``store_true`` switch, one defaulting to True needs ``flag`` (a ``store_false`` switch such as
    ``--no_efficiency``). ``flags`` maps several mutually exclusive switches to the values they set
    (``--use_nnunet_loss`` -> ``"nnunet"``). ``shown`` is the default as documented, where the value
    depends on the machine (an environment variable). ``negatable``: a switch also gets its opposite
    (``--no_X`` beside ``--X``, or ``--X`` beside ``--no_X``), so a value a ``--recipe`` sets can be undone.
    """
    cli = {"help": help, "group": group, "flag": flag, "choices": choices, "type": type, "nargs": nargs,
           "metavar": metavar, "flags": flags, "shown": shown, "negatable": negatable}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"cli": cli})
    return field(default=default, metadata={"cli": cli})


@dataclass
class ExperimentConfig:
    """Everything a run depends on; written to ``config.json`` of the run folder."""

    # data
    data_path: str = option(DEFAULT_DATA_PATH, "common dataset root (env BRATS_DATA_PATH, else ./data)", group="data",
                            shown="$BRATS_DATA_PATH or ./data")
    dataset_version: str = option("brats2018", "the data set (its record in brats_data/definitions.py: layout under "
                                  "--data_path, labels, regions; README 'Data'); 'synthetic' generates a BraTS-like "
                                  "data set once", group="data", choices=DATASET_VERSIONS)
    synthetic_task: str = option("brats2021", "the task whose file names, labels and regions the synthetic data "
                                 "imitate (brats2024: a resection cavity; brats_ped: a cystic component)",
                                 group="data", choices=SYNTHETIC_TASKS)
    synthetic_cases: int = option(20, "number of synthetic cases", group="data")
    synthetic_difficulty: str = option("realistic", "synthetic phantoms: 'easy' (fast cartoon phantoms) or "
                                       "'realistic' (textures, noise, varied and multi-focal tumours)",
                                       group="data", choices=("easy", "realistic"))
    synthetic_shape: list[int] | None = option(None, "volume size of synthetic cases (default 96 96 64; real "
                                               "BraTS is 240 240 155)", group="data", type=int, nargs=3,
                                               metavar=("X", "Y", "Z"))
    max_samples: int | None = option(None, "use about N cases: a seeded (seed 0) subset of whole patients, "
                                     "stratified like the splits", group="data", type=int)
    use_5fold: bool = option(False, "5-fold cross-validation instead of 80/10/10", group="data")
    folds: list[int] | None = option(None, "with --use_5fold: run only these folds (0-4; splits.json still holds all "
                                     "five)", group="data", type=int, nargs="+", metavar="K")
    skip_bad_cases: bool = option(False, "skip unreadable/inconsistent cases (listed in skipped_cases.csv) "
                                  "instead of stopping", group="data")
    cache_dir: str | None = option(None, "preprocessed cache folder (default: "
                                   "{data_path}/preprocessed/{dataset_version})", group="data", type=str)
    num_workers: int = option(8, "DataLoader workers (per process under torchrun)", group="data")
    preprocess_workers: int | None = option(None, "processes building the preprocessing cache (default: all "
                                            "cores); separate from --num_workers", group="data", type=int)
    patient_map: str | None = option(None, "CSV with columns case_id,patient_id: cases of one patient never "
                                     "cross splits (BraTS 2023 ids are grouped by patient without it)",
                                     group="data", type=str, metavar="CSV")
    sharing_strategy: str = option("file_descriptor", "torch.multiprocessing sharing strategy (file_system if "
                                   "/dev/shm or open files run out)", group="data",
                                   choices=("file_descriptor", "file_system"))
    patches_per_case: int | None = option(None, "training patches (3D) or slices (2D) drawn per training case "
                                          "per epoch (default 1 in 3D, 8 in 2D)", group="data", type=int)
    # training
    models: list[str] | None = option(None, "model names (default: every model for --dim)", group="training",
                                      type=str, nargs="+")
    dim: str = option("2d", "2D slice models or 3D volume models", group="training", choices=("2d", "3d"))
    epochs: int = option(10, "training epochs", group="training")
    batch_size: int = option(1, "per GPU/process under distributed training", group="training")
    seeds: list[int] = option(help="e.g. --seeds 24 42 123", group="training", type=int, nargs="+",
                              default_factory=lambda: [24])
    patch_size: list[int] = option(help="training patch and sliding-window ROI: Z Y X (3D); Y X or Z Y X "
                                   "(2D uses the last two)", group="training", type=int, nargs="+",
                                   default_factory=lambda: [128, 128, 128])
    overlap: float = option(0.1, "sliding-window overlap", group="training")
    blending: str = option("cosine", "how the sliding window weighs overlapping windows wherever the run predicts "
                           "(validation, test, export, predict.py): cosine: the suite's raised-cosine window; "
                           "gaussian, constant: MONAI's modes; nnunet: nnU-Net v2's nnUNetPredictor (its tile "
                           "positions at step 1 - overlap, its Gaussian, logits averaged over members and "
                           "mirrorings before the softmax)", group="training", choices=BLENDINGS)
    sw_batch_size: int | None = option(None, "windows (3D) or axial slices (2D) per inference forward "
                                       "(default 4 in 3D, 64 in 2D)", group="training", type=int)
    iters_per_epoch: int | None = option(None, "optimizer steps per epoch, whatever the number of processes "
                                         "(nnU-Net: 250); default: patches_per_case x training cases / "
                                         "global batch", group="training", type=int)
    val_every: int = option(1, "validate every K epochs (the last epoch always); the best checkpoint is "
                            "chosen among the validated epochs", group="training")
    grad_clip: float = option(12.0, "gradient-norm clipping after unscaling (nnU-Net: 12); 0 turns it off",
                              group="training")
    sync_bn: bool = option(True, "do not convert BatchNorm to SyncBatchNorm under torchrun on GPUs",
                           group="training", flag="--no_sync_bn")
    optimizer: str = option("adamw", "adamw (weight decay 1e-5), or sgd: nnU-Net's SGD with Nesterov momentum 0.99 "
                            "and weight decay 3e-5; both with polynomial decay (power 0.9) over the epochs",
                            group="training", choices=OPTIMIZERS)
    lr: float | None = option(None, "initial learning rate (default: 1e-3 with adamw, 1e-2 with sgd, nnU-Net's)",
                              group="training", type=float)
    augmentation: str = option("flips", "flips: random flips on every axis (in the loader); nnunet: nnU-Net v2's "
                               "rotation, scaling, noise, blur, brightness, contrast, low resolution, gamma and "
                               "mirroring, batched on the device (README 'Training recipe')", group="training",
                               choices=AUGMENTATIONS)
    sampling: str = option("nnunet", "patch sampling: nnunet: nnU-Net v2's (the last 33%% of every batch centred on a "
                           "voxel of a class, or region with --region_based, chosen uniformly among those present; "
                           "nnU-Net's crop bounds); voxel: the suite's earlier one (each patch with probability 1/3 "
                           "on a voxel drawn over all tumour voxels)", group="training", choices=SAMPLINGS)
    region_based: bool = option(False, "train the data set's regions (BraTS: WT, TC, ET) with sigmoid outputs and "
                                "Dice + BCE; labels painted back in nnU-Net's order", group="training", negatable=True)
    postprocess: bool = option(False, "after training, choose on the unit's validation cases an ET-volume threshold "
                               "(0-750 voxels) and small-component removals; applied at test, export and predict.py",
                               group="training", negatable=True)
    loss: str = option("nnunet", group="training", flags={
        "--use_nnunet_loss": ("nnunet", "Dice 70%% + CE 30%% (the default)"),
        "--use_standard_loss": ("standard", "Dice 50%% + CE 50%%"),
        "--use_nnunet_v2_loss": ("nnunet_v2", "Dice 100%% + CE 100%% (nnU-Net v2's DC_and_CE_loss / DC_and_BCE_loss "
                                 "weights)")})
    batch_dice: bool = option(True, "soft Dice per sample, averaged (nnU-Net's batch_dice False), instead of pooled "
                              "over the batch", group="training", flag="--no_batch_dice", negatable=True)
    deep_supervision: bool = option(False, "deep supervision (models with decoder outputs at several scales: "
                                    "nnunet*, dynunet): the loss at every scale but the lowest, weighted 1/2^i and "
                                    "normalised, against the label downsampled nearest-exact (nnU-Net v2's); "
                                    "inference uses the full resolution only", group="training", negatable=True)
    recipe: str | None = option(None, "nnunet: nnU-Net v2's default trainer (README 'Training recipe'): every "
                                "value it sets is recorded in config.json, and any flag given on the command line "
                                "wins over it", group="training", choices=RECIPE_NAMES, type=str)
    trainer: str = option("UnitTrainer", "training recipe: a registered trainer class, or module:Class of an "
                          "importable UnitTrainer subclass (docs/TRAINERS.md)", group="training")
    use_pretrained: bool = option(False, "initialise from local weights {pretrained_dir}/{model}.pth "
                                  "(nothing is downloaded)", group="training")
    pretrained_dir: str = option("pretrained", "folder of --use_pretrained weights", group="training")
    deterministic: bool = option(False, "deterministic algorithms (slower on GPU)", group="training")
    amp: str = option("auto", "mixed precision on CUDA (auto = bf16); always off on CPU", group="training",
                      choices=AMP_MODES)
    compile: bool = option(False, "torch.compile the model for training and for sliding-window inference "
                           "(checkpoints hold the uncompiled weights)", group="training")
    channels_last: bool = option(False, "channels-last memory format (channels_last_3d in 3D) for the model "
                                 "and its training inputs", group="training")
    grad_checkpoint: bool = option(False, "activation checkpointing to cut training memory: MONAI's "
                                   "use_checkpoint where the model has it (SwinUNETR), else each top-level "
                                   "stage is recomputed in the backward pass", group="training")
    nsd_tolerance: float = option(1.0, "tolerance (mm) of the normalised surface Dice", group="training")
    # run
    results_dir: str = option("baseline_results", "where run folders are created")
    device: str = option("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    resume: str | None = option(None, "continue an interrupted run in that folder", type=str, metavar="RUN_DIR")
    shard: Shard | None = option(None, "run only the units whose position in --list_units modulo N is I (0 <= I < "
                               "N); the run folder's name ends with _shard_I_of_N", type=str, metavar="I/N")
    measure_efficiency: bool = option(True, "skip FLOPs/PAM/latency measurement", flag="--no_efficiency")
    gradcam: bool = option(False, "Grad-CAM slice overlays of the first test case per model (MONAI)")
    tracker: str = option(DEFAULT_TRACKER, "live tracking of each unit on rank 0: TensorBoard runs in "
                          "RUN_DIR/tensorboard/{unit}, one MLflow run per unit (--mlflow_uri), or none",
                          choices=TRACKERS)
    mlflow_uri: str | None = option(None, "MLflow tracking URI of --tracker mlflow: a server (http://host:5000) "
                                    "or a store (sqlite:///path.db); default: sqlite:///RUN_DIR/mlflow.db",
                                    type=str, metavar="URI")
    # configuration only (no flag)
    weight_decay: float | None = None  # default: 1e-5 with adamw, 3e-5 with sgd (nnU-Net's)
    augmentation_params: dict[str, Any] | None = None  # the nnunet augmentation's ranges, recorded when a run opens
    dataset: dict[str, Any] | None = None  # the data set's record (DatasetDef.to_dict()), filled when a run opens

    def __post_init__(self) -> None:
        if self.dim not in ("2d", "3d"):
            raise ValueError(f"--dim must be 2d or 3d, got {self.dim!r}")
        choices = {"dataset_version": DATASET_VERSIONS, "loss": LOSSES, "amp": AMP_MODES,
                   "sharing_strategy": ("file_descriptor", "file_system"), "synthetic_task": SYNTHETIC_TASKS,
                   "optimizer": OPTIMIZERS, "augmentation": AUGMENTATIONS, "tracker": TRACKERS,
                   "sampling": SAMPLINGS, "blending": BLENDINGS}
        if self.recipe is not None and self.recipe not in RECIPE_NAMES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPE_NAMES)}, got {self.recipe!r}")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "val_every", "iters_per_epoch", "sw_batch_size", "preprocess_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError(f"--grad_clip must be >= 0 (0 turns it off), got {self.grad_clip}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"--overlap must be in [0, 1), got {self.overlap}")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        if self.folds is not None:
            self.folds = sorted({int(k) for k in self.folds})
            if not self.use_5fold:
                raise ValueError("--folds chooses folds of a 5-fold run: add --use_5fold")
            if not self.folds or not all(0 <= k < N_FOLDS for k in self.folds):
                raise ValueError(f"--folds takes fold numbers 0 to {N_FOLDS - 1}, got {self.folds}")
        if self.shard is not None:  # "I/N" from the command line or config.json
            self.shard = Shard.parse(self.shard)
        if len(self.patch_size) not in (2, 3) or (self.dim == "3d" and len(self.patch_size) != 3):
            raise ValueError(f"--patch_size takes Z Y X (3 values; 2D also Y X), got {list(self.patch_size)}")
        self.seeds = [int(s) for s in self.seeds]
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        self.patch_size = [int(p) for p in self.patch_size]
        if self.deep_supervision:
            flat = [m for m in self.model_names if m in list_models() and not model_spec(m).deep_supervision]
            if flat:
                with_ds = [m for m in list_models() if model_spec(m).deep_supervision]
                raise ValueError(f"--deep_supervision: {', '.join(flat)} has no decoder outputs at several scales "
                                 f"(models with them: {', '.join(with_ds)}); name those with --models")

    @property
    def spatial_patch(self) -> tuple[int, ...]:
        """The patch for ``dim``: (Z, Y, X) in 3D, (Y, X) in 2D."""
        return tuple(self.patch_size[-2:]) if self.dim == "2d" else tuple(self.patch_size)

    @property
    def model_names(self) -> list[str]:
        names = self.models or [m for m in list_models() if self.dim in model_spec(m).dims]
        return list(dict.fromkeys(names))

    def resolved_sw_batch_size(self) -> int:
        """Windows per forward: 3D windows are large (4); 2D windows are slices, batched by the dozen (64)."""
        return self.sw_batch_size or (4 if self.dim == "3d" else 64)

    def resolved_preprocess_workers(self) -> int:
        return self.preprocess_workers or os.cpu_count() or 1

    def resolved_patches_per_case(self) -> int:
        return self.patches_per_case or (1 if self.dim == "3d" else 8)

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        name = self.dataset_version
        if name == "synthetic" and self.synthetic_task != "brats2021":
            name = f"synthetic_{self.synthetic_task}"
        return Path(self.data_path) / CACHE_FOLDER / name  # never a case: brats_data.cases.is_data_folder

    def dataset_def(self) -> DatasetDef:
        """The data set's record, one immutable value per configuration: the one the run was made with
        (``dataset``, saved in config.json), else the record of ``--dataset_version`` (MSD/nnU-Net: their
        dataset.json under ``--data_path``, read when first asked for, not when the configuration is made: the
        data may not be there yet). Nothing is written here; ``run.loop.preflight`` records it in ``dataset``
        when a run opens."""
        if self.dataset is not None:
            try:
                return _recorded_dataset(json.dumps(self.dataset, sort_keys=True))
            except TypeError:  # not a plain JSON value (made in code): nothing to key a cache with
                return DatasetDef.from_dict(self.dataset)
        return _resolved_dataset(self.dataset_version, self.data_path, self.synthetic_task,
                                 _dataset_json_stamp(self.dataset_version, self.data_path))

    def output_channels(self) -> int:
        """The model's output channels: the data set's classes (with background), or its regions with
        ``--region_based`` (``scheme.region_order``)."""
        scheme = self.dataset_def().scheme
        return scheme.region_channels if self.region_based else scheme.num_classes

    def resolved_amp(self, device: torch.device) -> str:
        if device.type != "cuda":
            return "none"
        return "bf16" if self.amp == "auto" else self.amp

    def to_dict(self) -> dict[str, Any]:
        """The plain values of config.json (``shard`` as its ``"I/N"`` string)."""
        return asdict(self) | {"shard": None if self.shard is None else str(self.shard)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def cli_fields() -> list[Field]:
    """The fields of :class:`ExperimentConfig` that are command-line options, in declaration order."""
    return [f for f in fields(ExperimentConfig) if "cli" in f.metadata]


# ----------------------------------------------------------------------------- recipes
# --recipe nnunet: what nnU-Net v2's default trainer (nnUNetTrainer, 2.8.1) and its plans for BraTS-shaped data set.
# The patch, batch and batch Dice are nnunetv2's ExperimentPlanner on generated cases of BraTS 2021's shape
# (240x240x155 at 1 mm, 4 channels, brain-sized foreground, 1,251 training cases as BraTS 2021; docs/NNUNET.md):
# per --dim, Z Y X order.
MODELS_WITH_DS = "if every model of the run has decoder outputs at several scales"
NESTED_REGIONS = "if the data set's regions nest"  # BraTS: WT > TC > ET, trained as regions by nnU-Net's BraTS plans
RECIPES: dict[str, dict[str, Any]] = {
    "nnunet": {
        "dim": "3d", "models": ["nnunet"], "optimizer": "sgd", "epochs": 1000, "iters_per_epoch": 250,
        "augmentation": "nnunet", "deep_supervision": MODELS_WITH_DS, "loss": "nnunet_v2", "postprocess": True,
        "overlap": 0.5, "blending": "nnunet", "grad_clip": 12.0,
        "region_based": NESTED_REGIONS,
        "3d": {"patch_size": [112, 160, 128], "batch_size": 2, "batch_dice": False},
        "2d": {"patch_size": [192, 160], "batch_size": 105, "batch_dice": True},
    },
}


def _regions_nest(values: dict[str, Any]) -> bool:
    """Whether the data set's regions share classes (BraTS: WT, TC, ET nest): nnU-Net trains those as regions."""
    scheme = dataset_def(values["dataset_version"], values["data_path"], values["synthetic_task"]).scheme
    regions = [set(r.classes) for r in scheme.regions]
    return any(a & b for i, a in enumerate(regions) for b in regions[i + 1:])


def apply_recipe(values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """``values`` (field -> value, as parsed) with the recipe of ``values["recipe"]`` filling every field it sets
    that is not in ``given`` (the options the user gave on the command line, which always win). The per-dim
    values follow the dim the run ends up with."""
    name = values.get("recipe")
    if name is None:
        return dict(values)
    recipe = RECIPES[name]
    out = dict(values)
    for key, value in recipe.items():
        if key in ("2d", "3d") or key in given:
            continue
        if value == NESTED_REGIONS:
            out[key] = _regions_nest(out)
        elif value == MODELS_WITH_DS:
            names = out["models"] or RECIPES[name]["models"]
            out[key] = all(n in list_models() and model_spec(n).deep_supervision for n in names)
        else:
            out[key] = list(value) if isinstance(value, list) else value
    for key, value in recipe[out["dim"]].items():
        if key not in given:
            out[key] = list(value) if isinstance(value, list) else value
    return out


def given_fields(argv: Sequence[str] | None) -> set[str]:
    """The fields whose options appear in ``argv`` (parsed with every default suppressed, so an option given with
    its default value still counts as given)."""
    parser = build_parser(suppress_defaults=True)
    return set(vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv))))


# ----------------------------------------------------------------------------- the command line
GROUPS = ("data", "training", "run")
EXTRA_SWITCHES = {  # options that are actions of the command, not configuration
    "--list_models": ("run", "print every registered model (family, modalities, dims, parameters) and exit"),
    "--list_units": ("run", "print the experiment's units (position, model, seed, fold; seeds, then folds, then "
                            "models, in the order given) and their count, and exit; with --shard only its units"),
    "--preprocess_only": ("data", "validate the cases and build the preprocessing cache (same data flags), print a "
                                  "summary and exit"),
}


def _opposite(f: Field) -> str:
    """The opposite switch of a negatable bool option: ``--no_X`` of ``--X``, ``--X`` of ``--no_X``."""
    return f"--{f.name}" if f.default else f"--no_{f.name}"


def _add_option(group: argparse._ActionsContainer, f: Field, suppress_defaults: bool = False) -> None:
    cli: dict[str, Any] = f.metadata["cli"]
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    if suppress_defaults:
        default = argparse.SUPPRESS
    if cli["flags"]:  # mutually exclusive switches that each set one value
        switches = group.add_mutually_exclusive_group()
        for flag, (value, help_text) in cli["flags"].items():
            switches.add_argument(flag, dest=f.name, action="store_const", const=value, help=help_text,
                                  **({"default": argparse.SUPPRESS} if suppress_defaults else {}))
        if not suppress_defaults:
            group.set_defaults(**{f.name: default})
        return
    flag = cli["flag"] or f"--{f.name}"
    field_default = f.default_factory() if f.default_factory is not MISSING else f.default
    if isinstance(field_default, bool):
        action = "store_false" if field_default else "store_true"
        if cli["negatable"]:
            pair = group.add_mutually_exclusive_group()
            pair.add_argument(flag, dest=f.name, action=action, default=default, help=cli["help"])
            pair.add_argument(_opposite(f), dest=f.name, action="store_true" if field_default else "store_false",
                              default=default, help=f"undo {flag} (e.g. where --recipe sets it)")
            return
        group.add_argument(flag, dest=f.name, action=action, default=default, help=cli["help"])
        return
    kwargs = {k: cli[k] for k in ("choices", "nargs", "metavar") if cli[k] is not None}
    value_type = cli["type"] or type(field_default)
    group.add_argument(flag, dest=f.name, type=value_type, default=default, help=cli["help"], **kwargs)


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The parser of ``integrated_experiment.py``: one option per field of :func:`cli_fields`, and the
    command switches of :data:`EXTRA_SWITCHES`; ``suppress_defaults``: options not given are left out of the
    namespace (:func:`given_fields`)."""
    p = argparse.ArgumentParser(
        prog="integrated_experiment.py",
        description="Train, evaluate and compare BraTS brain-tumour segmentation models (accuracy and efficiency). "
                    "Research use only, not for diagnosis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for f in cli_fields():
        _add_option(groups[f.metadata["cli"]["group"]], f, suppress_defaults)
    for flag, (group, help_text) in EXTRA_SWITCHES.items():
        groups[group].add_argument(flag, action="store_true", help=help_text,
                                   **({"default": argparse.SUPPRESS} if suppress_defaults else {}))
    return p


def _shown_default(f: Field, flag: str) -> str:
    cli = f.metadata["cli"]
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    if cli["shown"]:
        return f"`{cli['shown']}`"
    if cli["flags"]:
        return "on" if cli["flags"][flag][0] == default else "off"
    if isinstance(default, bool):
        return "off"  # a switch: on when given
    if default is None:
        return ""
    return f"`{' '.join(map(str, default)) if isinstance(default, list) else default}`"


def _placeholder(f: Field) -> str:
    """What follows the flag in the table: ``{a,b}`` for choices, the metavar or the field name, ``...`` for lists."""
    cli = f.metadata["cli"]
    if cli["flags"] or isinstance(f.default, bool):
        return ""
    if cli["choices"]:
        return " {" + ",".join(map(str, cli["choices"])) + "}"
    if isinstance(cli["metavar"], tuple):
        return " " + " ".join(cli["metavar"])
    name = cli["metavar"] or f.name.upper()
    return f" {name} [...]" if cli["nargs"] == "+" else f" {name}"


def options_table() -> str:
    """The README's options table: every option of :func:`build_parser`, by group, with its default and help."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    by_group: dict[str, list[str]] = {g: [] for g in GROUPS}
    for f in cli_fields():
        cli = f.metadata["cli"]
        switches = cli["flags"] or {cli["flag"] or f"--{f.name}": (None, cli["help"])}
        if cli["negatable"]:
            switches = {**switches, _opposite(f): (None, f"undo {next(iter(switches))} (e.g. where --recipe sets it)")}
        for flag, (_value, help_text) in switches.items():
            by_group[cli["group"]].append(f"| `{flag}{_placeholder(f)}` | {_shown_default(f, flag)} | "
                                          f"{help_text.replace('%%', '%').replace('|', '/')} |")
    for flag, (group, help_text) in EXTRA_SWITCHES.items():
        by_group[group].append(f"| `{flag}` | | {help_text} |")
    for group in GROUPS:
        rows.append(f"| **{group}** | | |")
        rows += by_group[group]
    return "\n".join(rows)


TABLE_START = "<!-- options table: generated by `python -m experiment.config --write README.md` -->"
TABLE_END = "<!-- end of options table -->"


def readme_with_table(text: str) -> str:
    """``text`` (the README) with the part between :data:`TABLE_START` and :data:`TABLE_END` regenerated."""
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"the README has no options table markers ({TABLE_START} ... {TABLE_END})")
    return pattern.sub(lambda _m: f"{TABLE_START}\n{options_table()}\n{TABLE_END}", text)


def load_run_config(run_dir: str | Path, **overrides: Any) -> ExperimentConfig:
    """The configuration a run folder was made with, for ``--resume``, evaluation and prediction.

    Rules: everything that defines the experiment (data set, models, splits' seeds, patch, training
    and evaluation settings) comes from the run's ``config.json``. Only :data:`RUNTIME_FIELDS` —
    where the data and cache are and how the processes run — may be overridden; an override of
    ``None`` keeps the saved value, and any other field raises ``ValueError``.
    """
    path = Path(run_dir) / CONFIG_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG_JSON} there; is it a run folder?")
    saved = read_json(path)["config"]
    saved.setdefault("sampling", "voxel")  # runs made before --sampling sampled so
    saved.setdefault("blending", "cosine")  # and runs made before --blending predicted so
    unknown = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if unknown:
        raise ValueError(f"cannot override {', '.join(unknown)} of the run in {run_dir}: it defines the experiment "
                         f"(only {', '.join(RUNTIME_FIELDS)} may change)")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return ExperimentConfig.from_dict({**saved, **changes, "resume": None})


def resume_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``--resume RUN_DIR``: the run's configuration, with this command's runtime settings.

    The device, worker count and sharing strategy always come from this command; the data path and
    the cache folder only where this command sets them (the data moved since the run); the tracker and the
    MLflow URI stay the run's unless this command gives others (a server that moved), so resumed units go on
    logging into their own TensorBoard/MLflow runs.
    """
    runtime = {k: getattr(cfg, k) for k in ("device", "num_workers", "sharing_strategy", "cache_dir", "mlflow_uri")}
    if cfg.data_path and cfg.data_path != DEFAULT_DATA_PATH:
        runtime["data_path"] = cfg.data_path
    if cfg.tracker != DEFAULT_TRACKER:  # the run keeps its tracker unless this command names another one
        runtime["tracker"] = cfg.tracker
    merged = load_run_config(cfg.resume, **runtime)
    merged.resume = cfg.resume
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiment.config``: print the options table; ``--write README.md`` regenerates it there."""
    parser = argparse.ArgumentParser(prog="python -m experiment.config", description=main.__doc__)
    parser.add_argument("--write", metavar="README", help="rewrite the options table of this file in place")
    args = parser.parse_args(argv)
    if args.write:
        path = Path(args.write)
        path.write_text(readme_with_table(path.read_text()))
    else:
        print(options_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
