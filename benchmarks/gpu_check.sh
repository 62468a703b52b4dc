#!/usr/bin/env bash
# What needs a GPU, in one call of at most ~6 minutes, on a lent NVIDIA machine:
#
#   . .gpu/last/setup.sh && bash benchmarks/gpu_check.sh [PART ...]   (../shared/tools/gpu: onnxruntime-gpu)
#
# PARTS: correct loop step bench (default: all, in that order).
# Every part has its own timeout and writes its file into $OUT (default benchmarks/results/gpu) as
# soon as it ends, so a part that fails or hangs loses nothing else:
#   env.txt      the GPU, torch, onnxruntime and its providers
#   correct.json the CUDA-graph loop vs the eager loop; the ORT CUDA step vs torch
#   loop.json    the whole loop at 384x512 (naive vs ours), and each step alone
#   step.json    the step at 512 and 2048 in every precision
#   bench.json   `styleengine bench --res 512 --backends naive,torch,ort --loop 20` on the GPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export STYLEENGINE_CACHE_DIR="${STYLEENGINE_CACHE_DIR:-/tmp/styleengine-cache}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  nvidia-smi -L
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
check() {  # check NAME SECONDS: one part of gpu_check.py into NAME.json, its log into NAME.log
  timeout "$2" "$PY" -m styleengine.benchmarks.gpu_check "$1" > "$OUT/$1.json" 2> "$OUT/$1.log"
  echo "== $1: exit $?"; cat "$OUT/$1.json"; tail -3 "$OUT/$1.log"
}
for part in ${*:-correct loop step bench}; do
  case "$part" in
    correct) check correct 60 ;;
    loop) check loop 130 ;;
    step) check step 80 ;;
    bench)
      timeout 150 "$PY" -m styleengine bench --res 384x512 --backends naive,torch,ort --devices cuda \
          --providers cuda --precision fp32,bf16,fp16 --loop 20 --iters 10 --warmup 3 --timeout 60 \
          --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
      echo "== bench: exit $?"; tail -30 "$OUT/bench.log" ;;
  esac
done
