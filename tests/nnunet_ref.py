"""The nnU-Net v2 reference environment of the parity tests: where it is, how to make it, how to run code in it.

nnU-Net v2 (``nnunetv2==2.8.1``) pins its own dependencies, so it lives in a separate virtual environment,
``.venv-nnunet`` at the repository root (``NNUNET_VENV`` names another; a git worktree also looks in its main
checkout). Parity tests run a script there with :func:`run_in_nnunet` and skip with :data:`SKIP_REASON` (the
command that creates it) where it is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_NAME = ".venv-nnunet"
CREATE_COMMAND = (
    "python3 -m venv .venv-nnunet && .venv-nnunet/bin/pip install torch==2.13.0 && "
    ".venv-nnunet/bin/pip install --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 && "
    ".venv-nnunet/bin/pip install acvl-utils batchgenerators batchgeneratorsv2 scikit-learn scikit-image "
    "SimpleITK pandas tifffile nibabel matplotlib seaborn imagecodecs yacs einops blosc2 tqdm scipy numpy "
    "requests graphviz")


def _main_checkout() -> Path | None:
    """The main checkout of a git worktree (the parent of the common git folder), None outside git."""
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(common).parent if common else None


def nnunet_python() -> Path | None:
    """The Python of the nnU-Net v2 environment where ``import nnunetv2`` works, else None."""
    candidates = [Path(os.environ["NNUNET_VENV"])] if os.environ.get("NNUNET_VENV") else []
    candidates.append(ROOT / VENV_NAME)
    main = _main_checkout()
    if main is not None and main != ROOT:
        candidates.append(main / VENV_NAME)
    for venv in candidates:
        python = venv / "bin" / "python"
        if python.is_file() and subprocess.run([str(python), "-c", "import nnunetv2"], capture_output=True,
                                               timeout=120).returncode == 0:
            return python
    return None


NNUNET_PYTHON = nnunet_python()
SKIP_REASON = f"nnU-Net v2 reference environment missing; create it at the repository root with: {CREATE_COMMAND}"
requires_nnunet = pytest.mark.skipif(NNUNET_PYTHON is None, reason=SKIP_REASON)


def run_in_nnunet(script: str, args: dict, timeout: float = 600) -> dict:
    """Run ``script`` (Python source) with nnU-Net's interpreter, one thread, ``ARGS`` (a dict) defined from
    ``args``; it prints one JSON object on its last line, returned here."""
    if NNUNET_PYTHON is None:
        pytest.skip(SKIP_REASON)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "nnUNet_raw": "/nonexistent", "nnUNet_preprocessed": "/nonexistent", "nnUNet_results": "/nonexistent"}
    env.pop("PYTHONPATH", None)
    source = f"import json\nARGS = json.loads({json.dumps(json.dumps(args))})\n{script}"
    done = subprocess.run([str(NNUNET_PYTHON), "-c", source], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tempfile.gettempdir())  # no repository package shadows nnU-Net's
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net reference script failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # where is it?
    print(NNUNET_PYTHON or SKIP_REASON, file=sys.stderr)
