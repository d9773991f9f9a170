#!/usr/bin/env bash
# The photo MSE denoiser at GPU scale, in at most MINUTES minutes (default 9) on a lent GPU:
# the bake-off of architectures on more crops, then the chosen one on 224-256 px crops in
# batches of 64 (MSE_SCALES["gpu"] in src/smoothapi/studies/photo_mse.py). Training resumes
# by epoch and keeps the best epoch on validation, so a run stopped by the clock leaves its
# best weights in OUT/photo-mse/photo-mse.safetensors and a report beside them.
#
# Prepared on the CPU machine (the GPU machine has torch but no network and no photos):
#   .venv/bin/python -m smoothapi.photos export build/gpu-photos   # ~40 photos, a few MB
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 -d .whl aiolimiter tenacity               # pure-Python wheels
# Then, with the device tool: carry [build/gpu-photos, .whl], command
#   bash benchmarks/gpu_photo_mse.sh
# Smoke test here (CPU, the pip photos only): SCALE=tiny DEVICE=cpu bash benchmarks/gpu_photo_mse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-9}
SCALE=${SCALE:-gpu}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-photo-mse}
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -d build/gpu-photos ] && export SMOOTHAPI_PHOTOS="$PWD/build/gpu-photos"
run() { "$PYTHON" -m smoothapi.cli experiment photo-mse --scale "$SCALE" --out "$OUT/photo-mse" \
        --device "$DEVICE" "$@"; }
# Stopped by the clock: an interrupted epoch is lost, the finished ones and the best are kept.
timeout --signal=INT "$((MINUTES * 60))" bash -c "$(declare -f run); SCALE=$SCALE OUT=$OUT \
    DEVICE=$DEVICE PYTHON=$PYTHON run" || echo "stopped after $MINUTES minutes"
run --only report  # no stage is named so: only the report is rewritten
cat "$OUT/photo-mse/README.md"
