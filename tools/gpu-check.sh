#!/usr/bin/env bash
# GPU check of the ONNX Runtime CUDA path (issue 3), for a machine with one NVIDIA GPU, CUDA 13 user-space
# libraries from pip (`nvidia-*` wheels, as PyTorch cu130 installs them) and no internet.
#
# The onnxruntime-gpu 1.31.1 wheel's libraries travel pre-extracted and xz-compressed in ARTIFACTS:
#   prov.00 prov.01 prov.02   libonnxruntime_providers_cuda.so.xz split in three (a transfer carries 64 MiB)
#   libonnxruntime.so.1.31.1.xz  libonnxruntime_providers_shared.so.xz  conjure.xz (a release build)
# Usage: tools/gpu-check.sh ARTIFACTS OUT
set -uo pipefail
A=${1:?artifacts dir}
OUT=${2:?output dir}
L=/tmp/conjure-gpu/lib
mkdir -p "$L" "$OUT"
cat "$A"/prov.00 "$A"/prov.01 "$A"/prov.02 | xz -dc > "$L"/libonnxruntime_providers_cuda.so || exit 3
xz -dc "$A"/libonnxruntime.so.1.31.1.xz > "$L"/libonnxruntime.so.1.31.1 || exit 3
xz -dc "$A"/libonnxruntime_providers_shared.so.xz > "$L"/libonnxruntime_providers_shared.so || exit 3
xz -dc "$A"/conjure.xz > /tmp/conjure-gpu/conjure && chmod +x /tmp/conjure-gpu/conjure || exit 3
B=/tmp/conjure-gpu/conjure
export ORT_DYLIB_PATH="$L/libonnxruntime.so.1.31.1"
NV=$(python3 -c 'import nvidia, sys; print(list(nvidia.__path__)[0])' 2>/dev/null)
[ -n "$NV" ] && export LD_LIBRARY_PATH="$(ls -d "$NV"/*/lib | tr '\n' ':')$L:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
echo "== model inspect (default providers: tensorrt, cuda, cpu)"
"$B" model inspect models/fmnist-ddpm 2>&1
# 256 inputs: the 8 sr4 examples copied 32 times.
mkdir -p /tmp/conjure-gpu/many
for i in $(seq -w 0 31); do for f in examples/sr4/*.png; do cp "$f" "/tmp/conjure-gpu/many/$i-$(basename "$f")"; done; done
for run in cuda:16 cuda:64 cpu:64; do
  prov=${run%:*}; bs=${run#*:}
  {
    echo "== run sr4-c-pigdm, 256 images, providers [$prov], batch $bs"
    /usr/bin/time -f "wall %e s, max rss %M KiB" "$B" run pipelines/sr4-c-pigdm.yaml --quiet \
      --input /tmp/conjure-gpu/many --output "$OUT/$prov-$bs" --set "runtime.providers=[$prov]" \
      --set runtime.batch_size=$bs 2>&1 | grep -v '^$' | tail -4
  }
done
echo "== cuda vs cpu outputs (bytes identical?)"
cmp -s "$OUT/cuda-64/00-coat-6.png" "$OUT/cpu-64/00-coat-6.png" && echo identical || echo differ
python3 - "$OUT" <<'PY'
import sys, numpy as np
from PIL import Image
o = sys.argv[1]
a = np.asarray(Image.open(f"{o}/cuda-64/00-coat-6.png"), dtype=float)
b = np.asarray(Image.open(f"{o}/cpu-64/00-coat-6.png"), dtype=float)
print("max |cuda - cpu| in 8-bit levels:", np.abs(a - b).max())
PY
