#!/usr/bin/env bash
# The photo MSE denoiser at GPU scale, in at most MINUTES minutes (default 9) on a lent GPU:
# the bake-off of architectures on more crops, then the chosen one on 224-256 px crops in
# batches of 64 (MSE_SCALES["gpu"] in src/smoothapi/studies/photo_mse.py). Training resumes
# by epoch and keeps the best epoch on validation, so a run stopped by the clock leaves its
# best weights in WORK/photo-mse.safetensors and a report beside them.
#
# Prepare here, then call the device tool (see benchmarks/device_tree.sh):
#   bash benchmarks/device_tree.sh prepare && bash benchmarks/device_tree.sh slim
#   device run: carry [build/gpu-photos, build/gpu-zoo, .whl], timeout_s 600, command
#     KEEP=$OUT bash benchmarks/gpu_photo_mse.sh
#   bash benchmarks/device_tree.sh back
# KEEP=$OUT brings back the report, the best weights and the epochs' log.
# Smoke test here (CPU, the pip photos only): SCALE=tiny DEVICE=cpu bash benchmarks/gpu_photo_mse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-9}
SCALE=${SCALE:-gpu}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/gpu-photo-mse}
PYTHON=${PYTHON:-python3}
source benchmarks/gpu_env.sh
run() { "$PYTHON" -m smoothapi.cli experiment photo-mse --scale "$SCALE" --out "$WORK" \
        --device "$DEVICE" "$@"; }
# Stopped by the clock: an interrupted epoch is lost, the finished ones and the best are kept.
timeout --signal=INT "$((MINUTES * 60))" bash -c "$(declare -f run); SCALE=$SCALE WORK=$WORK \
    DEVICE=$DEVICE PYTHON=$PYTHON run" || echo "stopped after $MINUTES minutes"
run --only report  # no stage is named so: only the report is rewritten
cat "$WORK/README.md"
keep "$WORK/README.md" README.md
keep "$WORK/photo-mse.safetensors" photo-mse.safetensors
keep "$WORK/mse/log.jsonl" photo-mse-log.jsonl
keep "$WORK/curves.png" curves.png
