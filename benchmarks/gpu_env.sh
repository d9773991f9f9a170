# Sourced by gpu_photo_*.sh: what a bare GPU machine needs beside its torch, from the
# folders `bash benchmarks/device_tree.sh prepare` writes and the device call carries.
if compgen -G ".whl/*.whl" > /dev/null; then  # pure-Python dependencies torch's image lacks
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -d build/gpu-photos ] && export SMOOTHAPI_PHOTOS="$PWD/build/gpu-photos"
[ -d build/gpu-zoo ] && export SMOOTHAPI_ZOO="$PWD/build/gpu-zoo"

# keep FILE NAME: copy FILE to $KEEP/NAME when both exist (the device tool brings back
# at most 8 files, 16 MB each, named in letters, digits, '.', '_' and '-').
keep() { if [ -n "${KEEP:-}" ] && [ -f "$1" ]; then mkdir -p "$KEEP" && cp "$1" "$KEEP/$2"; fi; }
