# Sourced by the scripts of examples/slurm (not run by itself): their settings, from the environment.
#
#   SUITE_DIR     the repository (default: the folder sbatch was called from, $SLURM_SUBMIT_DIR)
#   VENV          a virtual environment to activate first (optional)
#   PYTHON        the interpreter (default: python)
#   BRATS_ARGS    the flags of the experiment, e.g. "--dataset_version brats2021 --dim 3d --models unet3d_s
#                 swin_unetr --seeds 24 42 123 --use_5fold --epochs 100" (words split on spaces)
#   SWEEP_DIR     the sweep's results folder: every shard's run folder, and merged/ (submit_sweep.sh sets it)
#   NUM_WORKERS   DataLoader workers per process (default: the job's CPUs per task, else 8)
#   DRY_RUN=1     print each suite command instead of running it (tests/test_slurm.py)
# BRATS_DATA_PATH (the data root), BRATS_DIST_TIMEOUT_MIN and BRATS_FAILURE_TIMEOUT_S are read by the suite
# itself; sbatch reads SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT ... itself.

SUITE_DIR=${SUITE_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$SUITE_DIR" || { echo "SUITE_DIR=$SUITE_DIR: no such folder (set SUITE_DIR to the repository)" >&2; exit 2; }
if [ -n "${VENV:-}" ]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
PYTHON=${PYTHON:-python}
NUM_WORKERS=${NUM_WORKERS:-${SLURM_CPUS_PER_TASK:-8}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export PYTHONUNBUFFERED=1

run_cmd() {  # run a command, or with DRY_RUN=1 print it (shell-quoted) instead
  if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}
