#!/usr/bin/env bash
# The whole GPU comparison in one call, on a machine with an NVIDIA GPU
# (about 8 minutes). Run from the repository root with the project's Python:
#
#   PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_check.sh
#
# Writes benchmarks/results/gpu-<device>.json (the table: torch CUDA fp32 and
# bf16, ORT CUDA / TensorRT providers and the TensorRT backend where
# installed, at 512/1024/2048 px, with the CPU at 512 px as the GPU-vs-CPU
# baseline) and benchmarks/results/gpu-<device>-limit.json (--limit for
# torch on the GPU), plus the plots and reports next to them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT=benchmarks/results
mkdir -p "$OUT"

echo "== onnxruntime providers"
"$PY" -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
echo "== torch"
"$PY" -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
echo "== tensorrt"
"$PY" -c "import tensorrt; print(tensorrt.__version__)" 2>&1 | tail -1
echo "== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"

NAME=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-') if torch.cuda.is_available() else 'no-gpu')")
echo "== device tag: $NAME"

# 1. the comparison (fixed per-config timeout so one slow TensorRT build cannot eat the budget)
time "$PY" -m styleengine bench --res 512,1024,2048 --backends torch,ort,tensorrt --providers cpu,cuda,tensorrt \
    --devices cpu,cuda --precision fp32,bf16 --iters 5 --warmup 2 --timeout 150 --time-budget 60 \
    --json "$OUT/gpu-$NAME.json" --csv "$OUT/gpu-$NAME.csv" --plot "$OUT/gpu-$NAME.png" --report "$OUT/gpu-$NAME.md"

# 2. the resolution limit of the torch CUDA step (80% of free GPU memory, 2 s per iteration)
time "$PY" -m styleengine bench --limit --backends torch --devices cuda --precision fp32 --time-budget 2 \
    --timeout 120 --json "$OUT/gpu-$NAME-limit.json" --plot "$OUT/gpu-$NAME-limit.png"

ls -l "$OUT"
