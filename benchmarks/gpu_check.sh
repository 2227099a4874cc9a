#!/usr/bin/env bash
# One short GPU run (well under 10 minutes): parity on the GPU, training-step timing against
# torch+cuDNN, and a short tinyshakespeare run trained on the GPU and sampled on the CPU.
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default: $OUT, else ./gpu-results)
# Needs CuPy and PyTorch with CUDA. The corpus is read from $RNNLAB_DATA, else
# .device_data/tinyshakespeare.txt (copy it there; the folder is git-ignored).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia-smi.txt" 2>&1
python3 benchmarks/gpu_check.py --out "$out" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/gpu_check.log"
status=${PIPESTATUS[0]}
data=${RNNLAB_DATA:-.device_data/tinyshakespeare.txt}
if [ -f "$data" ]; then
  run=$(mktemp -d)/ts
  python3 -m rnnlab.cli train "$data" --out "$run" --device cuda --max-time "${GPU_TRAIN_SECONDS:-90}" \
    --max-steps 100000 --hidden 512 --layers 2 --batch 64 --seq-len 100 --eval-every 250 --schedule constant \
    --quiet 2>&1 | tee "$out/train_gpu.log"
  # the checkpoint written on the GPU, sampled on the CPU
  python3 -m rnnlab.cli sample "$run" --prime "ROMEO:" --length 400 --seed 0 --temperature 0.8 \
    2>&1 | tee "$out/sample_cpu.txt"
  python3 -m rnnlab.cli info "$run" 2>&1 | tee -a "$out/train_gpu.log"
else
  echo "no corpus at $data: skipped the training run" | tee "$out/train_gpu.log"
fi
exit "$status"
