"""Whether bfloat16 is fast on a device, and the ``"auto"`` dtype that follows it.

bfloat16 halves a denoiser's memory traffic, and CPUs with bfloat16 instructions
(AVX-512-BF16, AMX) run the photo denoisers 2.7x faster in it. A CPU without them
emulates it: measured on an AVX2-only AMD EPYC with torch 2.14, ``photo-mse`` at 160 px
ran 8.6x *slower* in bfloat16 than in float32 (``benchmarks/bench_denoiser.py`` times
both dtypes on the machine at hand), and a DRUNet training step on 8 crops of 192 px 10x
slower (timed by hand: 38 s against 3.7 s). So the studies ask
for ``"auto"``, and the training loop's ``cpu_bfloat16`` is honoured only where it helps.
"""

from __future__ import annotations

import torch

__all__ = ["bfloat16_is_fast", "resolve_dtype"]


def bfloat16_is_fast(device: str | torch.device = "cpu") -> bool:
    """True on a CUDA device that supports bfloat16, or a CPU with bfloat16 instructions."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, may go away
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_dtype(
    dtype: str | torch.dtype | None, device: str | torch.device | None = None
) -> str | torch.dtype | None:
    """``"auto"``: ``"bfloat16"`` where :func:`bfloat16_is_fast` on ``device`` (default
    CPU), else ``"float32"``; any other value unchanged."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bfloat16_is_fast(device or "cpu") else "float32"
