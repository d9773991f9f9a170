"""Module digests (which identify denoisers and models in journals), dtypes and layouts."""

from __future__ import annotations

import hashlib

import torch

from smoothapi._checkpoint import as_module_input, module_digest, module_dtype, module_memory_format


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


def test_a_channels_last_module_gets_channels_last_inputs_and_keeps_its_digest():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    before = module_digest(module)
    assert module_memory_format(module) == torch.contiguous_format
    x = torch.rand(2, 3, 8, 8)
    assert as_module_input(module, x).is_contiguous()
    dense = module(x)
    module.to(memory_format=torch.channels_last)
    assert module_memory_format(module) == torch.channels_last
    fed = as_module_input(module, x)
    assert fed.is_contiguous(memory_format=torch.channels_last) and not fed.is_contiguous()
    assert torch.allclose(module(fed), dense, atol=1e-5)  # same function, to float rounding
    assert module_digest(module) == before  # the same journal run resumes after the change
    half = as_module_input(module.to(torch.bfloat16), x)  # dtype and layout together
    assert half.dtype == torch.bfloat16 and half.is_contiguous(memory_format=torch.channels_last)


def test_modules_without_a_telling_weight_keep_the_default_layout():
    # 1x1 kernels are dense in both layouts at once; linear layers have no 4-D weights
    pointwise = torch.nn.Conv2d(3, 4, 1).to(memory_format=torch.channels_last)
    assert module_memory_format(pointwise) == torch.contiguous_format
    assert module_memory_format(torch.nn.Linear(3, 4)) == torch.contiguous_format
    assert as_module_input(torch.nn.Linear(3, 4), torch.rand(2, 3)).shape == (2, 3)
