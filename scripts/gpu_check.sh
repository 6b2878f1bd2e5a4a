#!/usr/bin/env bash
# The GPU check, prepared before a GPU is lent: at most 8 minutes on an NVIDIA machine.
#
#   bash scripts/gpu_check.sh            # OUT=dir for the results (default gpu_out/)
#
# 1. installs the wheels that scripts/gpu_wheels.sh packed (staged in /tmp/rsvl-wheels by earlier calls);
# 2. records the machine (GPU, driver, compute capability, library versions);
# 3. tsmnet-tiny at 256 px (the shipped trained weights): rsvl-bench exports a bundle whose image and text
#    engines TensorRT-RTX builds on this machine, then measures torch eager FP32 / AMP / torch.compile / CUDA
#    graphs / ONNX Runtime / the TensorRT engine at B = 1, 8, 32 and a tiled 1024² scene;
#    benchmarks.engine_parity checks engine vs ONNX Runtime FP32 (cosine >= 0.999, argmax >= 99.5 %) and
#    times a second launch (TensorRT-RTX runtime cache);
# 4. the paper-scale tsmnet (random weights, 256 px): the same, without the scene run.
# If TensorRT-RTX refuses the GPU (Hopper, compute capability 9.0, is outside its support matrix), the exact
# message lands in *_parity.json and in the TensorRT rows; the torch rows are measured regardless.
# At most 8 files come back from $OUT: machine.txt, log.txt, {tiny,paper}_bench.{json,md}, {tiny,paper}_parity.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
WORK=${WORK:-/tmp/rsvl-gpu}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
T0=$(date +%s)
stage() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }

stage "wheels"
export PYTHONPATH=$PWD
if [ -d /tmp/rsvl-wheels ]; then
  (cd /tmp/rsvl-wheels && for first in *.part-aa; do
     [ -e "$first" ] || continue
     base=${first%.part-aa}; cat "$base".part-* > "$base" && rm -f "$base".part-*
   done)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/rsvl-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 RSVL_CACHE_DIR=$WORK/cache

stage "machine"
{
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1
  python3 - <<'PY' 2>&1
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for mod in ("tensorrt_rtx", "tensorrt", "onnxruntime", "rasterio", "open_clip", "cuda.bindings"):
    try:
        m = __import__(mod, fromlist=["x"])
        print(mod, getattr(m, "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(mod, "missing:", e)
from rsvl_runtime.backends.tensorrt import choose_flavour, gpu_info
print("gpu_info", gpu_info())
print("engine auto ->", choose_flavour("auto"))
PY
} | tee "$OUT/machine.txt"

bench() {  # bench NAME SECONDS ARGS... : rsvl-bench into $WORK/NAME, results copied to $OUT
  local name=$1 limit=$2; shift 2
  stage "bench $name ($*)"
  timeout "$limit" python3 -m benchmarks.cli --out "$WORK/$name" "$@" || echo "bench $name ended with $?"
  cp "$WORK/$name/bench.json" "$OUT/${name}_bench.json" 2>/dev/null
  cp "$WORK/$name/bench.md" "$OUT/${name}_bench.md" 2>/dev/null
  if [ -d "$WORK/$name/bundle" ]; then
    stage "engine parity $name"
    timeout 45 python3 -m benchmarks.engine_parity --bundle "$WORK/$name/bundle" --out "$OUT/${name}_parity.json" \
      || echo "engine parity $name ended with $?"
  fi
}

bench tiny 180 --model tsmnet-tiny --tile 256 --batch 1,8,32 --budget 3 --scene-size 1024 --no-ort-optimize \
  --backends torch ort-cpu-fp32 tensorrt
bench paper 160 --model tsmnet --batch 1,8,32 --budget 2 --no-scene --no-text --no-ort-optimize --no-flops \
  --backends torch-eager torch-amp torch-compile torch-cudagraph tensorrt
stage "done"
ls -la "$OUT"
