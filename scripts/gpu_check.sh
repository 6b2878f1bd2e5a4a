#!/usr/bin/env bash
# The GPU check, prepared before a GPU is lent: at most 8 minutes on an NVIDIA machine.
#
#   bash scripts/gpu_check.sh            # OUT=dir for the results (default gpu_out/)
#
# 1. installs the wheels that scripts/gpu_wheels.sh packed (staged in /tmp/rsvl-wheels by earlier calls);
# 2. records the machine (GPU, driver, compute capability, library versions);
# 3. tsmnet-tiny at 256 px (the shipped trained weights): rsvl-export builds the bundle with image and text
#    engines (TensorRT-RTX, on this machine); rsvl-bench measures torch eager FP32, ONNX Runtime and the engine
#    at B = 1, 8, 32 and a tiled 1024² scene; benchmarks.engine_parity checks engine vs ONNX Runtime FP32
#    (cosine >= 0.999, argmax >= 99.5 %) and times a second launch (TensorRT-RTX runtime cache); then
#    rsvl-bench measures AMP FP16, torch.compile and CUDA graphs;
# 4. the paper-scale tsmnet (random weights, 256 px): the same, without the scene run.
# If TensorRT-RTX refuses the GPU (Hopper, compute capability 9.0, is outside its support matrix), the exact
# message lands in *_parity.json and in the TensorRT rows; the torch rows are measured regardless.
# Three files come back from $OUT: machine.txt, log.txt and results.json (every bench.json and parity
# report, {tiny,paper}_{fast,amp,compile,parity}, merged after each stage).
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

collect() {  # merge every result written so far into $OUT/results.json (at most 8 files come back)
  python3 - "$WORK/collect" "$OUT/results.json" <<'PY'
import json, pathlib, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
doc = {p.stem: json.loads(p.read_text()) for p in sorted(src.glob("*.json"))}
dst.write_text(json.dumps(doc, indent=1, default=str))
PY
}

bench() {  # bench NAME KEY SECONDS ARGS... : one rsvl-bench run on the model's bundle
  local name=$1 key=$2 limit=$(( $3 * SLACK )); shift 3
  stage "bench $name $key ($*)"
  timeout "$limit" python3 -m benchmarks.cli --bundle "$WORK/$name/bundle" --out "$WORK/$name/$key" \
    --batch 1,8,32 --budget 2 --no-ort-optimize --no-flops "$@" || echo "bench $name $key ended with $?"
  cp "$WORK/$name/$key/bench.json" "$WORK/collect/${name}_${key}.json" 2>/dev/null
  collect
}

run_model() {  # run_model NAME EXPORT_S MODEL_ARGS... : export once (with engines), then the measurements
  local name=$1 export_s=$(( $2 * SLACK )); shift 2
  case " $STAGES " in *" $name "*) ;; *) echo "skipping $name (STAGES=$STAGES)"; return;; esac
  local b="$WORK/$name/bundle"
  stage "export $name ($*): image + text engines with TensorRT-RTX on this GPU"
  timeout "$export_s" python3 -m rsvl_export.cli "$@" --precision fp16 --max-batch 32 --out "$b" \
    || echo "export $name ended with $?"
  [ -f "$b/manifest.json" ] || { echo "no bundle for $name"; return; }
  python3 -m rsvl_export.cli inspect "$b" | grep -A8 "TensorRT engine" || true
  bench "$name" fast "${FAST_S[$name]}" --backends torch-eager ort-cpu-fp32 tensorrt "${EXTRA[@]}"
  stage "engine parity $name"
  timeout $(( 20 * SLACK )) python3 -m benchmarks.engine_parity --bundle "$b" --out "$WORK/collect/${name}_parity.json" \
    || echo "engine parity $name ended with $?"
  collect
  bench "$name" amp "${AMP_S[$name]}" --no-scene --no-text --backends torch-amp torch-cudagraph
  bench "$name" compile "${COMPILE_S[$name]}" --no-scene --no-text --backends torch-compile
}

# Every stage has its own cap, so an overrun loses one measurement, not the rest: at most 480 s in all.
# A second call can redo one model with more time: STAGES=paper SLACK=2 bash scripts/gpu_check.sh
STAGES=${STAGES:-tiny paper}
SLACK=${SLACK:-1}
mkdir -p "$WORK/collect"
declare -A FAST_S=([tiny]=40 [paper]=35) AMP_S=([tiny]=30 [paper]=25) COMPILE_S=([tiny]=45 [paper]=40)
EXTRA=(--scene-size 1024)
run_model tiny 100 --model tsmnet-tiny --tile 256
EXTRA=(--no-scene --no-text)
run_model paper 125 --model tsmnet
stage "done"
ls -la "$OUT"
