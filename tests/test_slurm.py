"""examples/slurm: every script passes ``bash -n``; their command lines, run under bash with the SLURM variables
set by hand and stub ``sbatch``/``srun``/``scontrol`` on PATH (DRY_RUN=1 prints the suite's commands), are the
ones the README describes, and the suite's parser accepts them. The preprocessing job runs for real."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import data_loader as dl
from experiment.config import build_parser

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "examples" / "slurm"
SCRIPTS = ["submit_sweep.sh", "preprocess.sbatch", "sweep_array.sbatch", "merge.sbatch", "multinode.sbatch",
           "common.sh"]
SHAPE = (48, 48, 40)

SBATCH_STUB = """#!/usr/bin/env bash
# records its arguments, one call per line, and answers like sbatch --parsable
printf '%q ' "$@" >> "$STUB_LOG"; printf '\\n' >> "$STUB_LOG"
echo "$(( 1000 + $(wc -l < "$STUB_LOG") ));cluster"
"""
SRUN_STUB = """#!/usr/bin/env bash
# runs the command once per node, as srun --ntasks-per-node=1 does, with the node's SLURM variables
while [[ "$1" == --* ]]; do shift; done
for ((node = 0; node < SLURM_NNODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" || exit $?
done
"""
SCONTROL_STUB = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && printf 'gpu-node-07\\ngpu-node-08\\n'
"""


def test_every_script_passes_bash_n():
    for name in SCRIPTS:
        proc = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    assert (SLURM / "submit_sweep.sh").stat().st_mode & 0o111, "submit_sweep.sh is executable"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("sbatch", SBATCH_STUB), ("srun", SRUN_STUB), ("scontrol", SCONTROL_STUB)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    data = tmp_path / "data"
    args = (f"--dataset_version synthetic --data_path {data} --synthetic_cases 6 --synthetic_shape 48 48 40 "
            f"--cache_dir {data / 'cache'} --dim 3d --patch_size 32 32 32 --models unet3d_xs unet3d_stride_xs "
            "--seeds 24 42 --epochs 1 --device cpu")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "MASTER_"))}
    return base | {"PATH": f"{stubs}:{os.environ['PATH']}", "SUITE_DIR": str(ROOT), "PYTHON": sys.executable,
                   "BRATS_ARGS": args, "SWEEP_DIR": str(tmp_path / "sweep"), "STUB_LOG": str(tmp_path / "sbatch.log"),
                   "OMP_NUM_THREADS": "1", "SLURM_SUBMIT_DIR": str(ROOT)}


def bash(script: str, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM / script)], cwd=ROOT, env=env | extra, capture_output=True, text=True,
                          timeout=300)


def suite_args(line: str, entry: str = "integrated_experiment.py") -> list[str]:
    words = shlex.split(line)
    return words[words.index(entry) + 1:]


def test_submit_chains_preprocess_array_and_merge_with_dependencies(env, tmp_path):
    proc = bash("submit_sweep.sh", env, SHARDS="3", MAX_PARALLEL="2")
    assert proc.returncode == 0, proc.stderr
    calls = [shlex.split(line) for line in (tmp_path / "sbatch.log").read_text().splitlines()]
    assert [Path(c[-1]).name for c in calls] == ["preprocess.sbatch", "sweep_array.sbatch", "merge.sbatch"]
    prep, train, merge = (dict(zip(c[:-1:2], c[1:-1:2])) for c in (call[1:] for call in calls))
    assert calls[0][0] == "--parsable" and "--dependency" not in prep
    assert train["--dependency"] == "afterok:1001" and train["--array"] == "0-2%2"
    assert merge["--dependency"] == "afterany:1002"
    assert "3 shards of 4 units" in proc.stdout and str(tmp_path / "sweep") in proc.stdout
    # more shards than units: one task per unit
    (tmp_path / "sbatch.log").unlink()
    proc = bash("submit_sweep.sh", env, SHARDS="9")
    assert proc.returncode == 0 and "4 shards of 4 units" in proc.stdout
    assert "--array 0-3 " in (tmp_path / "sbatch.log").read_text()


def test_the_preprocessing_job_builds_the_cache(env, tmp_path):
    dl.generate_synthetic_dataset(tmp_path / "data", n_cases=6, seed=0, shape=SHAPE)
    proc = bash("preprocess.sbatch", env, SLURM_CPUS_PER_TASK="1", SLURM_JOB_ID="1001")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preprocessed 6 cases into" in proc.stdout and (tmp_path / "data" / "cache").is_dir()
    dry = bash("preprocess.sbatch", env, SLURM_CPUS_PER_TASK="4", DRY_RUN="1")
    args = build_parser().parse_args(suite_args(dry.stdout.strip()))
    assert args.preprocess_only and args.preprocess_workers == 4 and args.models == ["unet3d_xs", "unet3d_stride_xs"]


def test_an_array_task_runs_its_shard_and_a_rerun_resumes_its_folder(env, tmp_path):
    task = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_JOB_ID": "1002", "SLURM_CPUS_PER_TASK": "6", "DRY_RUN": "1"}
    proc = bash("sweep_array.sbatch", env, **task)
    assert proc.returncode == 0, proc.stderr
    args = build_parser().parse_args(suite_args(proc.stdout.strip()))
    assert args.shard == "1/3" and args.results_dir == str(tmp_path / "sweep") and args.num_workers == 6
    assert args.seeds == [24, 42] and args.dim == "3d"
    folder = tmp_path / "sweep" / "integrated_experiment_results_20260101_000000_shard_1_of_3"
    folder.mkdir(parents=True)
    proc = bash("sweep_array.sbatch", env, **task)
    args = build_parser().parse_args(suite_args(proc.stdout.strip()))
    assert args.resume == str(folder) and args.shard is None
    proc = bash("sweep_array.sbatch", env, **(task | {"SLURM_ARRAY_TASK_MIN": "1"}))
    assert proc.returncode == 2 and "must be 0-2" in proc.stderr


def test_the_merge_job_merges_the_shards_it_finds_and_fails_when_one_is_missing(env, tmp_path):
    sweep = tmp_path / "sweep"
    for i in (0, 2):
        folder = sweep / f"integrated_experiment_results_2026010{i}_000000_shard_{i}_of_3"
        folder.mkdir(parents=True)
        (folder / "integrated_experiment_results.csv").write_text("model,seed,fold\nunet3d_xs,24,0\n")
    (sweep / "integrated_experiment_results_20260101_000000_shard_1_of_3").mkdir()  # nothing finished there
    proc = bash("merge.sbatch", env, SHARDS="3", DRY_RUN="1")
    assert proc.returncode == 1 and "shard 1/3: no finished unit" in proc.stderr
    words = shlex.split(proc.stdout.strip())
    assert words[1:3] == ["-m", "visualization"] and words[-2:] == ["--output", str(sweep / "merged")]
    assert [Path(w).name[-6:] for w in words[3:-2]] == ["0_of_3", "2_of_3"]
    proc = bash("merge.sbatch", env, SHARDS="4", DRY_RUN="1")
    assert proc.returncode == 1 and "nothing to merge" in proc.stderr, "no folder of 4 shards"


def test_multinode_starts_one_launcher_per_node_meeting_on_the_first_node(env):
    job = {"SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
           "GPUS_PER_NODE": "4", "DRY_RUN": "1", "SLURM_CPUS_PER_TASK": "32"}
    proc = bash("multinode.sbatch", env, **job)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for node, line in enumerate(lines):
        words = shlex.split(line)
        launcher = words[:words.index("integrated_experiment.py")]
        options = dict(zip(launcher[1::2], launcher[2::2]))
        assert launcher[0] == "torchrun" and options == {
            "--nnodes": "2", "--node_rank": str(node), "--nproc_per_node": "4", "--rdzv_id": "4242",
            "--rdzv_backend": "c10d", "--rdzv_endpoint": "gpu-node-07:29500", "--max_restarts": "0"}
        args = build_parser().parse_args(suite_args(line))
        assert args.models == ["unet3d_xs", "unet3d_stride_xs"] and args.num_workers == 32
        assert args.results_dir == "baseline_results"
    proc = bash("multinode.sbatch", env, **job, RESUME="/shared/integrated_experiment_results_x", RDZV_PORT="29611")
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 2, (proc.stdout, proc.stderr)
    args = build_parser().parse_args(suite_args(proc.stdout.strip().splitlines()[1]))
    assert args.resume == "/shared/integrated_experiment_results_x" and "gpu-node-07:29611" in proc.stdout
