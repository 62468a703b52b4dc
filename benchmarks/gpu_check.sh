#!/usr/bin/env bash
# What needs a GPU, in one call of at most ~6 minutes, on a lent NVIDIA machine:
#
#   . .gpu/last/setup.sh && bash benchmarks/gpu_check.sh [PART ...]   (../shared/tools/gpu: onnxruntime-gpu)
#
# PARTS: correct loop step bench profile (default: all, in that order).
# Every part has its own timeout and writes its files into $OUT (default benchmarks/results/gpu) as
# soon as it ends, so a part that fails or hangs loses nothing else. With WORK set (the device tool
# brings back at most 8 files), the files go into $WORK and $OUT gets one archive of them,
# gpu-check.tgz, remade after every part:  WORK=/tmp/gpu-check bash benchmarks/gpu_check.sh
#   env.txt      the GPU, torch, onnxruntime and its providers
#   correct.json the CUDA-graph loop vs the eager loop; the ORT CUDA step vs torch
#   loop.json    the whole loop at 384x512 (naive vs ours), and each step alone
#   step.json    the step at 512 and 2048 in every precision
#   bench.json   `styleengine bench --res 384x512 --backends naive,auto,torch,ort --loop 20` on the GPU
#   profile.json where the step's time goes at 512 and 2048: kernels, and ORT's ONNX ops
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
DIR="${WORK:-$OUT}"
mkdir -p "$OUT" "$DIR"
pack() {  # the archive is replaced whole: a call cut short still brings back the last complete one
  if [ "$DIR" != "$OUT" ]; then
    tar czf "$OUT/gpu-check.tgz.part" -C "$DIR" . && mv "$OUT/gpu-check.tgz.part" "$OUT/gpu-check.tgz"
  fi
}
export STYLEENGINE_CACHE_DIR="${STYLEENGINE_CACHE_DIR:-/tmp/styleengine-cache}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  nvidia-smi -L
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
} > "$DIR/env.txt" 2>&1
cat "$DIR/env.txt"
pack
check() {  # check NAME SECONDS: one part of gpu_check.py into NAME.json, its log into NAME.log
  timeout "$2" "$PY" -m styleengine.benchmarks.gpu_check "$1" > "$DIR/$1.json" 2> "$DIR/$1.log"
  echo "== $1: exit $?"; head -c 3000 "$DIR/$1.json"; echo; tail -3 "$DIR/$1.log"
}
for part in ${*:-correct loop step bench profile}; do
  case "$part" in
    correct) check correct 60 ;;
    loop) check loop 130 ;;
    step) check step 80 ;;
    bench)
      # --rounds 1: one process per row, as before rows took turns (3 rounds would triple the ~14 processes
      # past this part's share of the lease; a dedicated GPU drifts little)
      timeout 150 "$PY" -m styleengine bench --res 384x512 --backends naive,auto,torch,ort --devices cuda \
          --providers cuda --precision fp32,bf16,fp16 --loop 20 --iters 10 --warmup 3 --rounds 1 --timeout 60 \
          --json "$DIR/bench.json" > "$DIR/bench.log" 2>&1
      echo "== bench: exit $?"; tail -30 "$DIR/bench.log" ;;
    profile) check profile 90 ;;
  esac
  pack
done
