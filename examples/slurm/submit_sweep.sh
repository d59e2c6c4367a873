#!/usr/bin/env bash
# Submit a sweep as three SLURM jobs chained by dependencies:
#   1. preprocess.sbatch   --preprocess_only: validate the cases and build the cache once (CPUs only);
#   2. sweep_array.sbatch  an array of SHARDS tasks, one GPU each: task I runs --shard I/SHARDS (after 1 succeeded);
#   3. merge.sbatch        python -m visualization over the shards' run folders -> $SWEEP_DIR/merged (after 2
#                          ended, whatever its tasks' status: it says which units are missing).
#
#   BRATS_ARGS="--dataset_version brats2021 --dim 3d --models unet3d_s swin_unetr --seeds 24 42 123 --use_5fold" \
#   BRATS_DATA_PATH=/shared/data SHARDS=10 bash examples/slurm/submit_sweep.sh
#
# Settings (environment): BRATS_ARGS (required), SHARDS (array tasks; default and maximum: the number of units,
# from --list_units), MAX_PARALLEL (at most that many tasks at once), SWEEP_DIR (default
# $SUITE_DIR/baseline_results/sweep_YYYYMMDD_HHMMSS), and those of common.sh. sbatch passes the environment
# on to the jobs. Run it from the repository (or set SUITE_DIR); the results folder must be on a file system
# every node shares.
set -euo pipefail
: "${BRATS_ARGS:?set BRATS_ARGS to the flags of the experiment (see the top of this script)}"
export SUITE_DIR=${SUITE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
source "$SUITE_DIR/examples/slurm/common.sh"
HERE="$SUITE_DIR/examples/slurm"
export BRATS_ARGS SWEEP_DIR=${SWEEP_DIR:-$SUITE_DIR/baseline_results/sweep_$(date +%Y%m%d_%H%M%S)}

# shellcheck disable=SC2086  # BRATS_ARGS is a list of flags
units=$("$PYTHON" integrated_experiment.py $BRATS_ARGS --list_units | tail -n 1 | cut -d ' ' -f 1)
SHARDS=${SHARDS:-$units}
if [ "$SHARDS" -gt "$units" ]; then
  echo "SHARDS=$SHARDS but the experiment has $units units: using $units shards" >&2
  SHARDS=$units
fi
export SHARDS
mkdir -p "$SWEEP_DIR/logs"

jobid() { cut -d ';' -f 1; }  # sbatch --parsable prints "id" or "id;cluster"
prep=$(sbatch --parsable --job-name brats-preprocess --output "$SWEEP_DIR/logs/preprocess_%j.out" \
  "$HERE/preprocess.sbatch" | jobid)
train=$(sbatch --parsable --job-name brats-shard --dependency "afterok:$prep" \
  --array "0-$((SHARDS - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}" --output "$SWEEP_DIR/logs/shard_%a_%A.out" \
  "$HERE/sweep_array.sbatch" | jobid)
merge=$(sbatch --parsable --job-name brats-merge --dependency "afterany:$train" \
  --output "$SWEEP_DIR/logs/merge_%j.out" "$HERE/merge.sbatch" | jobid)
echo "preprocess job $prep -> array job $train ($SHARDS shards of $units units) -> merge job $merge"
echo "results: $SWEEP_DIR (merged: $SWEEP_DIR/merged)"
