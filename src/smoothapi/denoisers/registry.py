"""The denoiser registry, and checkpoints whose metadata alone rebuilds the denoiser.

Architectures are small factory functions registered with ``@register_denoiser``; build
one with :func:`create_denoiser`. :func:`save_denoiser` writes a safetensors file with the
architecture and how the denoiser was trained; :func:`load_denoiser` rebuilds it from that
file alone (no pickle, no ``torch.load``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from .._checkpoint import load_checkpoint, save_checkpoint
from .._precision import resolve_dtype
from .._registry import Registry
from ..errors import CheckpointError, InvalidInputError

__all__ = [
    "create_denoiser",
    "list_denoisers",
    "load_denoiser",
    "register_denoiser",
    "save_denoiser",
]

KIND = "denoiser"

_REGISTRY: Registry[nn.Module] = Registry("denoiser")
register_denoiser = _REGISTRY.register

# Keys save_denoiser owns; ``extra`` metadata may not override them.
_RESERVED = ("kind", "arch", "kwargs")


def create_denoiser(name: str, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the denoiser ``name`` (see :func:`list_denoisers`) for ``in_channels`` images.

    The result maps ``(N, C, H, W)`` to ``(N, C, H, W)`` with ``C = in_channels``, for
    any ``H, W``. It carries ``arch_config = {"arch": name, "kwargs": {...}}`` (``in_channels``
    always included) so :func:`save_denoiser` can record how to rebuild it. Unknown names
    raise :class:`~smoothapi.InvalidInputError` listing the known ones.
    """
    return _REGISTRY.create(name, in_channels=in_channels, **kwargs)


def list_denoisers() -> list[str]:
    """Names accepted by :func:`create_denoiser`, sorted."""
    return _REGISTRY.names()


def save_denoiser(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    sigma: float,
    objective: str,
    surrogates: Sequence[str] = (),
    dataset: str | None = None,
    input_size: tuple[int, int] | None = None,
    epochs: int | None = None,
    **extra: Any,
) -> None:
    """Save ``model`` (built by :func:`create_denoiser`) as a safetensors checkpoint.

    The metadata holds ``kind="denoiser"``, the architecture (``arch``, ``kwargs``), the
    noise level ``sigma`` it was trained for, the training ``objective`` (e.g. ``"mse"``,
    ``"stab"``, ``"stab+mse"``), the ``surrogates`` classifiers used, ``dataset``,
    ``input_size`` and ``epochs``, plus any JSON-serialisable ``extra`` entries.

    Raises :class:`~smoothapi.CheckpointError` if the model was not built by
    :func:`create_denoiser` (its architecture would be unknown), and
    :class:`~smoothapi.InvalidInputError` for unusable metadata.
    """
    config = getattr(model, "arch_config", None)
    if not isinstance(config, dict) or "arch" not in config or "kwargs" not in config:
        raise CheckpointError(
            "only denoisers built by create_denoiser() can be saved with their architecture; "
            "save other modules' state_dict yourself"
        )
    if config["arch"] not in _REGISTRY.names():
        raise CheckpointError(f"{config['arch']!r} is not a registered denoiser architecture")
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise InvalidInputError(f"extra metadata may not set {', '.join(clash)}")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise InvalidInputError(f"sigma must be a number, got {sigma!r}") from None
    if not sigma >= 0.0 or sigma == float("inf"):
        raise InvalidInputError(f"sigma must be finite and non-negative, got {sigma}")
    if isinstance(surrogates, str):
        raise InvalidInputError("surrogates must be a sequence of names, not a single string")
    metadata = {
        **extra,
        "kind": KIND,
        "arch": config["arch"],
        "kwargs": dict(config["kwargs"]),
        "sigma": sigma,
        "objective": objective,
        "surrogates": list(surrogates),
        "dataset": dataset,
        "input_size": None if input_size is None else [int(s) for s in input_size],
        "epochs": None if epochs is None else int(epochs),
    }
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"denoiser metadata must be JSON-serialisable: {exc}") from exc
    save_checkpoint(path, model, metadata)


def load_denoiser(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> nn.Module:
    """Rebuild a denoiser saved by :func:`save_denoiser` from the file alone.

    ``path`` is a file, or the name of a denoiser shipped in the package (for example
    ``"photo-sigma0.25"``; see :func:`~smoothapi.denoisers.pretrained_denoisers`).

    The model is built from the stored architecture, its weights are loaded strictly, it
    is moved to ``device`` (default CPU), cast to ``dtype`` (default: as stored, float32;
    ``"bfloat16"`` runs several times faster on CPUs with bfloat16 instructions and several
    times slower on CPUs without; ``"auto"`` picks bfloat16 only where it is fast), stored
    channels-last (faster on CPU and GPU; :class:`~smoothapi.SmoothedClassifier` feeds a
    denoiser in its own dtype and memory format) and put in eval mode. The stored metadata dict is
    attached as ``model.checkpoint_metadata`` (``input_size`` as a tuple or ``None``). A
    noise-level-aware denoiser gets ``model.noise_level`` = the stored sigma, the level a
    call without one assumes.

    Raises :class:`~smoothapi.CheckpointError` for a missing or unreadable file, a
    checkpoint of another kind (e.g. a classifier), an unknown architecture, or weights
    that do not fit the architecture.
    """
    if isinstance(path, str) and not os.path.exists(path) and not path.endswith(".safetensors"):
        from .pretrained import pretrained_path

        path = pretrained_path(path)
    tensors, meta = load_checkpoint(path, kind=KIND)
    arch, kwargs = meta.get("arch"), meta.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: malformed architecture kwargs {kwargs!r}")
    try:
        # A name that is not a str is rejected by the registry (CheckpointError below).
        model = create_denoiser(cast(str, arch), **kwargs)
    except InvalidInputError as exc:
        raise CheckpointError(f"{path}: cannot rebuild denoiser {arch!r}: {exc}") from exc
    except TypeError as exc:
        raise CheckpointError(f"{path}: bad arguments for denoiser {arch!r}: {exc}") from exc
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {arch}: {exc}") from exc
    if meta.get("input_size") is not None:
        meta["input_size"] = tuple(meta["input_size"])
    model = model.to(torch.device(device) if device is not None else "cpu").eval()
    model = model.to(memory_format=torch.channels_last)
    dtype = resolve_dtype(dtype, device)
    if dtype is not None:
        model = model.to(_float_dtype(dtype))
    # Plain attributes on the module (nn.Module.__setattr__ is typed for tensors and modules).
    cast(Any, model).checkpoint_metadata = meta
    if hasattr(model, "noise_level"):  # noise-level aware: model(x) assumes the stored sigma
        cast(Any, model).noise_level = meta.get("sigma")
    return model


def _float_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``dtype`` as a floating-point torch dtype ("float32", "bfloat16", torch.float16, ...)."""
    found = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise InvalidInputError(f"dtype must be a floating-point torch dtype such as 'float32' "
                                f"or 'bfloat16', got {dtype!r}")
    return found
