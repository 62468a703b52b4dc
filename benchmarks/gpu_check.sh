#!/usr/bin/env bash
# The whole GPU comparison in one call, on a machine with an NVIDIA GPU
# (at most about 8.5 minutes). Run it with the project's Python:
#
#   PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_check.sh
#
# (install nvidia-ml-py for the device memory of the ORT and TensorRT rows)
#
# Writes into benchmarks/results/: gpu-<device>.json (torch and ORT on the
# CPU and on CUDA, fp32 and bf16, at 512/1024/2048 px: the speed-up column is
# GPU vs CPU and ORT vs torch), gpu-<device>-tensorrt.json (ORT's TensorRT
# provider and the TensorRT backend) and gpu-<device>-limit.json (--limit
# for torch on the GPU), plus a plot and a report.
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

# Each bench rewrites its JSON after every row, so `timeout` never loses the
# rows already measured; --time-budget stops any one iteration that is too slow.
# 1. GPU vs CPU, torch vs ORT, fp32 vs bf16 (~4.5 min)
timeout 280 "$PY" -m styleengine bench --res 512,1024,2048 --backends torch,ort --providers cpu,cuda \
    --devices cpu,cuda --precision fp32,bf16 --iters 5 --warmup 2 --time-budget 10 --timeout 90 \
    --json "$OUT/gpu-$NAME.json" --plot "$OUT/gpu-$NAME.png" --report "$OUT/gpu-$NAME.md"
# 2. TensorRT: ORT's TensorRT provider and the TensorRT backend (engine builds are slow; ~2 min)
timeout 120 "$PY" -m styleengine bench --res 512,1024 --backends ort,tensorrt --providers tensorrt \
    --devices cuda --precision fp32,fp16 --iters 5 --warmup 2 --time-budget 10 --timeout 100 \
    --json "$OUT/gpu-$NAME-tensorrt.json"
# 3. the resolution limit of the torch CUDA step: 80% of free GPU memory, 2 s per iteration (~1.5 min)
timeout 100 "$PY" -m styleengine bench --limit --backends torch --devices cuda --precision fp32 --time-budget 2 \
    --timeout 60 --json "$OUT/gpu-$NAME-limit.json"

ls -l "$OUT"
