#!/usr/bin/env bash
# Train both photo priors on ONE GPU in about 10 minutes (sized for one H200), then bring back the EMA weights.
#
#   tools/train_gpu.sh DATA OUT          DATA: the train photos of tools/photo_data.py (<cache>/train/*.png)
#
# The two models (photo-ddpm: ε-prediction, photo-flow: rectified-flow velocity) train at the same time on the
# one GPU, each for $TRAIN_SECONDS (default 450 s) at batch $BATCH (default 128, bfloat16 autocast), with the
# UNet of tools/train_prior.py at width $CH (default 48; channel multipliers 1,2,2; 2 residual blocks per level;
# about 3.5 M parameters, 14 MB of float32 weights per model). OUT receives, per model, <kind>_ema.pt (EMA
# weights + config + step count + wall time + loss log, what `train_prior.py export` reads), <kind>_log.json,
# <kind>_samples.png and <kind>.log. Afterwards, on any machine with the tools' Python environment:
#
#   python3 tools/train_prior.py export --checkpoint OUT/ddpm_ema.pt --out models/photo-ddpm
#   python3 tools/train_prior.py export --checkpoint OUT/flow_ema.pt --out models/photo-flow
#
# and record steps, wall time, hardware and final loss (OUT/<kind>_log.json) in the model cards.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: tools/train_gpu.sh DATA OUT}
OUT=${2:?usage: tools/train_gpu.sh DATA OUT}
TRAIN_SECONDS=${TRAIN_SECONDS:-450}
BATCH=${BATCH:-128}
CH=${CH:-48}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
pids=()
for kind in ddpm flow; do
    python3 tools/train_prior.py --kind "$kind" --data "$DATA" --out "$OUT/run-$kind" --device "$DEVICE" \
        --ch "$CH" --mults 1,2,2 --nres 2 --batch "$BATCH" --lr 2e-4 --warmup 500 --ema 0.9995 \
        --seconds "$TRAIN_SECONDS" --save-every 120 --threads 4 --samples 16 >"$OUT/$kind.log" 2>&1 &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for kind in ddpm flow; do
    for f in "${kind}_ema.pt" "${kind}_log.json" "${kind}_samples.png"; do
        [ -f "$OUT/run-$kind/$f" ] && cp "$OUT/run-$kind/$f" "$OUT/$f"
    done
    rm -rf "$OUT/run-$kind"  # the full checkpoint (raw weights + optimizer) is too large to bring back
    tail -n 2 "$OUT/$kind.log"
done
exit $status
