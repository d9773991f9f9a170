"""Module digests (which identify denoisers and models in journals) and module dtypes."""

from __future__ import annotations

import hashlib

import torch

from smoothapi._checkpoint import module_digest, module_dtype


def _numpy_digest(module: torch.nn.Module) -> str:
    """The digest as it was computed before bfloat16 modules were supported."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_digests_of_float32_modules_are_unchanged_so_older_journals_still_match():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert module_digest(module) == _numpy_digest(module)  # int64 scalar buffer included


def test_a_bfloat16_copy_has_its_own_digest_and_dtype():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    half = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    half.load_state_dict(module.state_dict())
    half.to(torch.bfloat16)
    assert module_digest(half) != module_digest(module)
    assert module_dtype(half) == torch.bfloat16 and module_dtype(module) == torch.float32
    assert module_dtype(torch.nn.ReLU()) == torch.float32  # no parameters: float32
