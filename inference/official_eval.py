"""The official BraTS evaluation of a run's exported test predictions (``evaluate_experiment.py --official_eval``).

The official package (PyPI ``brats-evaluation``, import name ``brats_evaluation``, built on panoptica) pins
``numpy<2.3`` and ``plotly<6``, so it runs in an environment of its own (``.venv-brats-eval``), driven by a
short script in a subprocess: it scores each unit's exported folder (``predictions/{unit}/``, from
``inference/export.py``) against ``predictions/references/`` and the per-case rows go to
``RUN/official_brats_metrics.csv``. The configuration is the data set's (its record in
``brats_data/definitions.py``): the task's own (``gli``, ``mets``, ``MenPre``, ``ped``), the GLI one with ET = 4
for BraTS 2018/2021 data, and for MSD/nnU-Net data the GLI one after both files are relabelled to BraTS 2023
values (in a temporary folder; the exported files keep the data set's own values).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brats_data.definitions import DatasetDef
from experiment.run_folder import OFFICIAL_METRICS_CSV, RunFolder
from utils.io import write_csv

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BRATS_EVAL_VERSION = "0.0.10"  # PyPI brats-evaluation (import name brats_evaluation), and its panoptica
PANOPTICA_VERSION = "2.1.7"
BRATS_EVAL_INSTALL = (f"python3 -m venv .venv-brats-eval && .venv-brats-eval/bin/pip install "
                      f"brats-evaluation=={BRATS_EVAL_VERSION} panoptica=={PANOPTICA_VERSION}")
DEFAULT_BRATS_EVAL_PYTHON = PROJECT_ROOT / ".venv-brats-eval" / "bin" / "python"


class OfficialEvaluationError(RuntimeError):
    """The official BraTS evaluation could not run or failed (the message is one line)."""


# Runs in the official package's environment (no suite imports there): scores each unit's cases with the
# package's evaluate_single_exam and turns the results into the package's CSV with its parse_seg_results.
_DRIVER = r"""
import json, sys
from pathlib import Path
try:
    from brats_evaluation import config_path, evaluate_single_exam, parse_seg_results
    from panoptica import Panoptica_Evaluator
except ImportError as exc:
    sys.exit(f"the official package is not importable by {sys.executable}: {exc}")
job = json.loads(Path(sys.argv[1]).read_text())
config = job["config"] if job["config"].endswith(".yaml") else str(config_path(job["config"]))
evaluator = Panoptica_Evaluator.load_from_config(config)
for unit, cases in job["units"].items():
    metrics = [evaluate_single_exam(pred, ref, case_id, evaluator) for case_id, pred, ref in cases]
    failed = [m for m in metrics if "error" in m]
    if failed:
        sys.exit(f"{unit} {failed[0]['subject_name']}: {failed[0]['error']}")
    summary = Path(job["out"]) / f"{unit}.json"
    summary.write_text(json.dumps({"metrics": metrics, "missings": []}, default=float))
    parse_seg_results(str(summary), str(Path(job["out"]) / f"{unit}.csv"))
"""


def official_config(dataset: DatasetDef) -> tuple[str, tuple[int, ...] | None]:
    """The package configuration of a data set's record (``gli``, ``mets``, ``MenPre``, ``ped``; ET = 4 data:
    ``configs/brats_evaluation_gli_et4.yaml``, the GLI config with ET = 4) and the relabelling its files need
    first (MSD/nnU-Net: their own values -> BraTS 2023's 1 NCR/NET, 2 ED, 3 ET), or None."""
    try:
        return dataset.official()
    except ValueError as exc:
        raise OfficialEvaluationError(str(exc)) from None


def _relabel(source: Path, dataset: DatasetDef, values: tuple[int, ...], path: Path) -> str:
    """``source`` (a segmentation in the data set's values) written to ``path`` in the official ``values``."""
    image = nib.load(str(source))
    classes = dataset.map_labels(np.asanyarray(image.dataobj))
    out = type(image)(dataset.unmap_labels(classes, values), image.affine, image.header)
    out.set_data_dtype(np.uint8)
    nib.save(out, str(path))
    return str(path.resolve())


def run_official_evaluation(run_dir: str | Path, brats_eval_python: str | Path | None = None,
                            timeout: float | None = None) -> pd.DataFrame:
    """Score the exported predictions (:func:`export_run_predictions`) with the official BraTS evaluation in
    its own environment; writes and returns ``RUN/official_brats_metrics.csv``: model, seed, fold, case_id,
    then the package's lesion-wise and legacy (global) columns, as its ``parse_seg_results`` names them."""
    python = Path(brats_eval_python) if brats_eval_python else DEFAULT_BRATS_EVAL_PYTHON
    if not python.exists():
        raise OfficialEvaluationError(f"the official BraTS evaluation environment is missing ({python}); "
                                      f"create it with: {BRATS_EVAL_INSTALL}")
    run, cfg = RunFolder.open(run_dir)
    dataset = cfg.dataset_def()
    config, relabel = official_config(dataset)
    units = {run.unit(key): key for key in run.exported_units()}
    if not units:
        raise FileNotFoundError(f"no exported predictions in {run.reference_dir().parent}; run with "
                                "--export_predictions first")
    jobs: dict[str, list[list[str]]] = {}
    for name, key in units.items():
        jobs[name] = []
        for pred in sorted(run.prediction_dir(key).glob("*.nii.gz")):
            case_id, ref = pred.name.removesuffix(".nii.gz"), run.reference_dir() / pred.name
            if not ref.is_file():
                raise FileNotFoundError(f"no reference for {pred}: {ref} is missing (run --export_predictions)")
            jobs[name].append([case_id, str(pred.resolve()), str(ref.resolve())])
    with tempfile.TemporaryDirectory(prefix="brats-eval-") as tmp:
        if relabel is not None:  # files in the data set's own numbering: the official config's numbering first
            for name, cases in jobs.items():
                folder = Path(tmp) / "relabelled" / name
                folder.mkdir(parents=True)
                for case in cases:
                    case[1] = _relabel(Path(case[1]), dataset, relabel, folder / f"{case[0]}.nii.gz")
                    case[2] = _relabel(Path(case[2]), dataset, relabel, folder / f"ref_{case[0]}.nii.gz")
        job = {"config": config, "units": jobs, "out": tmp}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        done = subprocess.run([str(python), "-c", _DRIVER, str(Path(tmp) / "job.json")], capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            last = lines[-1] if lines else f"exit status {done.returncode}"  # the traceback's last line
            raise OfficialEvaluationError(f"the official BraTS evaluation failed ({python}): {last}")
        frames = []
        for name, key in units.items():
            ids = [case_id for case_id, _, _ in jobs[name]]
            if not ids:
                continue
            # the package's CSV: one row per case, then its mean/std/median rows
            rows = pd.read_csv(Path(tmp) / f"{name}.csv", dtype={"subject_id": str}).iloc[:len(ids)]
            if list(rows["subject_id"]) != ids:
                raise OfficialEvaluationError(f"{name}: the package's CSV lists {list(rows['subject_id'])}, not {ids}")
            frames.append(rows.drop(columns="subject_id").assign(**key.as_dict(), case_id=ids))
    table = pd.concat(frames, ignore_index=True)
    first = ["model", "seed", "fold", "case_id"]
    table = table[first + [c for c in table.columns if c not in first]]
    write_csv(run / OFFICIAL_METRICS_CSV, table)
    return table
