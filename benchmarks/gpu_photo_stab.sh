#!/usr/bin/env bash
# STAB+MSE from the photo MSE denoiser at GPU scale, in at most MINUTES minutes (default 9)
# on a lent GPU: STAB_SCALES["gpu"] in src/smoothapi/studies/photo_stab.py (a pool of
# 20,000 tiles of 240 px, batches of 32 random 160-224 px views, at most 12 epochs, the
# epoch chosen on the validation photos by how often Lite2 keeps its clean label). ONLY
# names the stages (default: full access at sigma 0.25, Lite2 guiding itself, then query
# access: Lite0 + Lite1). Training resumes by epoch and saves the best epoch after each,
# so a run stopped by the clock keeps its best weights.
#
# Prepare here, then call the device tool (see benchmarks/device_tree.sh):
#   bash benchmarks/device_tree.sh prepare && bash benchmarks/device_tree.sh slim
#   device run: carry [build/gpu-photos, build/gpu-zoo, .whl], timeout_s 600, command
#     KEEP=$OUT bash benchmarks/gpu_photo_stab.sh
#   bash benchmarks/device_tree.sh back
# KEEP=$OUT brings back the report, each stage's best weights and epoch log (flat names).
# Ship them only if they measure better here, on the CPU, with the wheels' classifiers.
# Smoke test here (CPU, tiny scale, the pip photos):
#   SCALE=tiny DEVICE=cpu ONLY=stab:query@0.25 MINUTES=2 bash benchmarks/gpu_photo_stab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-9}
SCALE=${SCALE:-gpu}
DEVICE=${DEVICE:-cuda}
ONLY=${ONLY:-stab:full@0.25,stab:query@0.25}
START=${START:-results/photo-mse/photo-mse.safetensors}
WORK=${WORK:-/tmp/gpu-photo-stab}
PYTHON=${PYTHON:-python3}
source benchmarks/gpu_env.sh
run() { "$PYTHON" -m smoothapi.cli experiment photo-stab --scale "$SCALE" --out "$WORK" \
        --start "$START" --device "$DEVICE" "$@"; }
# Stopped by the clock: an interrupted epoch is lost, the finished ones and the best are kept.
timeout --signal=INT "$((MINUTES * 60))" bash -c "$(declare -f run); SCALE=$SCALE WORK=$WORK \
    START=$START DEVICE=$DEVICE PYTHON=$PYTHON run --only $ONLY" || echo "stopped after $MINUTES minutes"
run --only report  # no stage is named so: only the report is rewritten
cat "$WORK/README.md"
keep "$WORK/README.md" README.md
for stage in ${ONLY//,/ }; do  # stab:full@0.25 -> full@0.25/
    name="${stage#stab:}" file="stab-${stage#stab:}"; file="${file/@/-sigma}"
    keep "$WORK/$name/denoiser.safetensors" "$file.safetensors"  # stopped: the best so far
    keep "$WORK/$file.safetensors" "$file.safetensors"  # finished: moved here
    keep "$WORK/$name/log.jsonl" "$file-log.jsonl"
done
