"""Turning what users pass (PIL images, uint8 arrays, float tensors) into one CHW tensor."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInputError

ImageLike = Image.Image | np.ndarray | torch.Tensor

_CHANNELS = (1, 3)


def as_image_tensor(image: ImageLike) -> torch.Tensor:
    """A float32 ``(C, H, W)`` tensor in [0, 1], with C = 1 (grey) or 3 (RGB).

    Accepts a PIL image (any mode; grey stays grey, everything else becomes RGB), a
    uint8 numpy array ``(H, W)`` or ``(H, W, C)`` with values 0..255, or a floating
    torch tensor ``(C, H, W)`` with finite values in [0, 1].
    """
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InvalidInputError(
                f"numpy images must be uint8 (0..255), got {image.dtype}; "
                "pass floats as a (C, H, W) torch tensor in [0, 1]"
            )
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in _CHANNELS:
            raise InvalidInputError(
                f"numpy images must be (H, W) or (H, W, C) with C in {_CHANNELS}, got {image.shape}"
            )
        tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255.0
    elif isinstance(image, torch.Tensor):
        if not image.is_floating_point():
            raise InvalidInputError(
                f"tensor images must be floating point in [0, 1], got {image.dtype}"
            )
        if image.ndim != 3 or image.shape[0] not in _CHANNELS:
            raise InvalidInputError(
                f"tensor images must be (C, H, W) with C in {_CHANNELS}, got {tuple(image.shape)}"
            )
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise InvalidInputError(f"image has no pixels: shape {tuple(image.shape)}")
        if not torch.isfinite(image).all():
            raise InvalidInputError("image contains NaN or infinite values")
        if image.min() < 0 or image.max() > 1:
            raise InvalidInputError(
                f"tensor images must lie in [0, 1], got values in "
                f"[{image.min().item():.4g}, {image.max().item():.4g}]"
            )
        tensor = image.detach().float()
    else:
        raise InvalidInputError(
            "expected a PIL image, a uint8 numpy array or a float tensor, "
            f"got {type(image).__name__}"
        )
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise InvalidInputError(f"image has no pixels: shape {tuple(tensor.shape)}")
    return tensor


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file into the tensor :func:`as_image_tensor` returns."""
    try:
        with Image.open(path) as image:
            image.load()
            return as_image_tensor(image)
    except FileNotFoundError:
        raise InvalidInputError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}") from exc
