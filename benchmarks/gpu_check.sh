#!/usr/bin/env bash
# Every GPU check of the suite in one run (for a lent GPU machine; figures go to benchmarks/RESULTS.md):
#   1. benchmarks/bench_gpu.py (step vs DynUNet, compile, the suite's loop vs bare step, sliding window,
#      efficiency table of unet3d_s, unet3d_m, swin_unetr, dualbranch_01_unet_s, dualbranch_14_convnext_s);
#   2. the CLI end to end on a small synthetic set, plain and with --compile --channels_last (same metrics?);
#   3. predict.py with the plain run's checkpoint over the 20 synthetic cases: cases/s on one GPU and on all GPUs
#      (torchrun, one process per GPU), for benchmarks/RESULTS.md.
# Packages missing on the machine may be given as wheels in .whl/ (installed into /tmp/site).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export OMP_WAIT_POLICY=PASSIVE
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)" | tee -a "$OUT/gpu.txt"

timeout 300 python3 benchmarks/bench_gpu.py 2>&1 | tr '\r' '\n' | grep -v "it/s\]\|case/s\]" | tee "$OUT/bench_gpu.txt"

common=(--dataset_version synthetic --data_path /tmp/gpu_data --synthetic_cases 20 --dim 3d --models unet3d_s
        --epochs 4 --patch_size 64 64 64 --batch_size 2 --patches_per_case 8 --lr 3e-3 --num_workers 4 --seeds 24
        --no_efficiency)
for variant in plain fast; do
  extra=(); [ "$variant" = fast ] && extra=(--compile --channels_last)
  start=$(date +%s)
  timeout 120 python3 integrated_experiment.py "${common[@]}" --results_dir "/tmp/gpu_runs_$variant" "${extra[@]}" \
    > "$OUT/cli_$variant.log" 2>&1
  echo "cli $variant: exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/cli.txt"
  grep -h "epoch \|test Dice" /tmp/gpu_runs_$variant/*/run.log | sed 's/^[^]]*\] //' | tee -a "$OUT/cli.txt"
done

gpus=$(nvidia-smi -L | wc -l)
run_dir=$(ls -d /tmp/gpu_runs_plain/integrated_experiment_results_* 2>/dev/null | tail -n 1)
cases=/tmp/gpu_data/BRATS_SYNTHETIC/BraTS2021_Training_Data
if [ -n "$run_dir" ]; then
  for n in 1 "$gpus"; do
    timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node "$n" predict.py --run_dir "$run_dir" \
      --input "$cases" --output "/tmp/gpu_predict_$n" --overwrite 2>"$OUT/predict_$n.err" | tail -n 1 \
      | sed "s/^/predict, $n GPU(s): /" | tee -a "$OUT/predict.txt"
    [ "$gpus" = 1 ] && break
  done
fi
