#!/usr/bin/env bash
# Issue 21's GPU checks, one call on a lent NVIDIA machine (after ../shared/tools/gpu's setup.sh):
#
#   W=/tmp/w/vgg16_imagenet_features.safetensors STYLE=/tmp/w/starry_night.jpg WORK=/tmp/ga \
#       bash benchmarks/gpu_auto.sh [PART ...]
#
# PARTS (default all, in this order; each with its own timeout, its files packed into $OUT as it ends):
#   fp16     benchmarks/fp16_check.py: the fp16 step graph on ORT's CUDA provider, random and real weights
#   tune     `styleengine tune` at 512 (random VGG19) and 1024 (VGG16): auto measured on the GPU
#   ortcuda  `run --device cuda --backend ort` (must run on CUDA), and explicit fp16 with random weights
#   default  a default `styleengine run` (every choice auto) at 1024 px, real weights, 100 iterations
#   readme   the README's main command, `styleengine bench --res 512,1024`
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
DIR="${WORK:-$OUT}"
mkdir -p "$OUT" "$DIR"
pack() {
  if [ "$DIR" != "$OUT" ]; then
    tar czf "$OUT/gpu-auto.tgz.part" -C "$DIR" . && mv "$OUT/gpu-auto.tgz.part" "$OUT/gpu-auto.tgz"
  fi
}
export STYLEENGINE_CACHE_DIR="${STYLEENGINE_CACHE_DIR:-/tmp/styleengine-cache}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
W="${W:-../shared/weights/vgg16_imagenet_features.safetensors}"
STYLE="${STYLE:-../shared/images/starry_night.jpg}"
"$PY" -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('$DIR/astronaut.png')"
{
  nvidia-smi -L
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
  ls -la "$W" "$STYLE"
} > "$DIR/env.txt" 2>&1
cat "$DIR/env.txt"; pack
se() { "$PY" -m styleengine "$@"; }
for part in ${*:-fp16 tune ortcuda default readme}; do
  case "$part" in
    fp16) timeout 120 "$PY" -m styleengine.benchmarks.fp16_check "$W" > "$DIR/fp16.json" 2> "$DIR/fp16.log"
          echo "== fp16: exit $?"; head -c 2500 "$DIR/fp16.json"; echo; tail -3 "$DIR/fp16.log" ;;
    tune) { timeout 90 se tune --size 512 --weights random
            timeout 90 se tune --size 1024 --model vgg16 --weights "$W"; } > "$DIR/tune.log" 2>&1
          echo "== tune: exit $?"; cat "$DIR/tune.log" | grep -v Warning | tail -40 ;;
    ortcuda) { timeout 60 se run "$DIR/astronaut.png" "$STYLE" -o "$DIR/ort_cuda_512.png" --device cuda --backend ort \
                   --model vgg16 --weights "$W" --size 512 --iters 100 --trace "$DIR/ort_cuda_512.jsonl"
               timeout 60 se run "$DIR/astronaut.png" "$STYLE" -o "$DIR/ort_fp16_random.png" --device cuda \
                   --backend ort --precision fp16 --weights random --size 384 --iters 20; } > "$DIR/ortcuda.log" 2>&1
          echo "== ortcuda: exit $?"; grep -v Warning "$DIR/ortcuda.log" | tail -12 ;;
    default) timeout 120 se run "$DIR/astronaut.png" "$STYLE" -o "$DIR/default_1024.png" --model vgg16 --weights "$W" \
                 --size 1024 --iters 100 --trace "$DIR/default_1024.jsonl" > "$DIR/default.log" 2>&1
          echo "== default: exit $?"; grep -v Warning "$DIR/default.log" | tail -6 ;;
    readme) timeout 170 se bench --res 512,1024 --json "$DIR/readme-bench.json" > "$DIR/readme.log" 2>&1
          echo "== readme: exit $?"; tail -30 "$DIR/readme.log" ;;
  esac
  pack
done
