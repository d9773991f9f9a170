"""Weights: safetensors files whose metadata alone rebuilds the model (no pickle), and the
digest that identifies a module by its weights."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

_KEY = "smoothapi"


def save_checkpoint(
    path: str | os.PathLike, module: torch.nn.Module, metadata: dict[str, Any]
) -> None:
    """Write ``module``'s state dict and JSON ``metadata`` (must name ``kind`` and ``arch``)."""
    for required in ("kind", "arch"):
        if required not in metadata:
            raise CheckpointError(f"checkpoint metadata must include {required!r}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={_KEY: json.dumps(metadata, sort_keys=True)})


def load_checkpoint(
    path: str | os.PathLike, kind: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; check it holds a ``kind`` model."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if raw is None:
        raise CheckpointError(f"{path} has no smoothapi metadata, so its model cannot be rebuilt")
    try:
        metadata = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{path}: its smoothapi metadata is not JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: its smoothapi metadata is not a JSON object")
    if metadata.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {metadata.get('kind')!r}, not a {kind!r}")
    return tensors, metadata


def module_digest(module: torch.nn.Module | None) -> str | None:
    """SHA-256 of a module's class and state dict: identifies a denoiser or model."""
    if module is None:
        return None
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        # Raw bytes, so that every dtype (bfloat16 included) has a digest; for dtypes numpy
        # knows these are the bytes ``numpy().tobytes()`` gave, so older digests still match.
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter or buffer (float32 if none):
    the dtype its inputs are cast to, so a ``module.to(torch.bfloat16)`` runs in bfloat16."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def module_memory_format(module: torch.nn.Module) -> torch.memory_format:
    """``torch.channels_last`` if a module's convolution weights are stored channels-last (a
    ``module.to(memory_format=torch.channels_last)``), else ``torch.contiguous_format``."""
    for tensor in module.parameters():
        if tensor.dim() == 4:
            dense = tensor.is_contiguous()
            if dense != tensor.is_contiguous(memory_format=torch.channels_last):
                return torch.contiguous_format if dense else torch.channels_last
    return torch.contiguous_format  # no 4-D weights, or only 1x1 ones (both layouts at once)


def as_module_input(module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` in the dtype and memory format of ``module``'s weights: a bfloat16 module
    runs in bfloat16, a channels-last one gets channels-last inputs (oneDNN's fast path: 1.7x
    for EfficientNet-Lite2 and 1.5x for a DnCNN on this project's CPU, bench_classifier.py)."""
    images = images.to(module_dtype(module))
    if images.dim() == 4:
        images = images.contiguous(memory_format=module_memory_format(module))
    return images
