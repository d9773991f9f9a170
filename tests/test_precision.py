"""bfloat16 only where the device computes it natively: "auto" denoisers, the training loop."""

from __future__ import annotations

import pytest
import torch

from smoothapi._precision import bfloat16_is_fast, resolve_dtype
from smoothapi.denoisers import load_denoiser
from smoothapi.training.loop import TrainConfig, _Precision


@pytest.fixture(params=[True, False], ids=["bf16-cpu", "avx2-cpu"])
def cpu_bf16(request, monkeypatch):
    """This CPU as one with bfloat16 instructions, then as one without."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: request.param)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return request.param


def test_auto_is_bfloat16_only_on_a_cpu_with_bfloat16_instructions(cpu_bf16):
    assert bfloat16_is_fast("cpu") is cpu_bf16
    assert resolve_dtype("auto") == ("bfloat16" if cpu_bf16 else "float32")
    assert resolve_dtype("bfloat16") == "bfloat16"  # an explicit choice is the user's
    assert resolve_dtype(None) is None and resolve_dtype(torch.float16) is torch.float16
    denoiser = load_denoiser("photo-mse", dtype="auto")
    assert next(denoiser.parameters()).dtype == (torch.bfloat16 if cpu_bf16 else torch.float32)


def test_the_training_loop_autocasts_to_bfloat16_only_where_it_is_fast(cpu_bf16):
    wanted = _Precision.of(TrainConfig(device="cpu", cpu_bfloat16=True))
    assert wanted.use_amp is cpu_bf16 and wanted.amp_dtype == torch.bfloat16
    assert not _Precision.of(TrainConfig(device="cpu", cpu_bfloat16=False)).use_amp


def test_a_torch_without_the_private_probes_means_no_fast_bfloat16(monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    assert not bfloat16_is_fast("cpu") and resolve_dtype("auto") == "float32"
    assert not bfloat16_is_fast("meta")
