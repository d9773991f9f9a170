"""Encoding noisy images for a vision API, within the provider's documented limits.

Encoding happens after the noise (and the denoiser), so clipping to [0, 1],
quantising to 8 bits, resizing and compressing are all part of the base classifier:
the certificate, which is about the image before the noise, stays valid.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidImageError, InvalidInputError

__all__ = ["IMAGE_FORMATS", "ImageLimits", "encode_image", "fit_size", "to_pil"]

IMAGE_FORMATS = ("png", "jpeg")
_SMALL = ("upscale", "reject")


@dataclass(frozen=True)
class ImageLimits:
    """What a provider accepts: encoded bytes (before any base64) and pixel dimensions."""

    max_bytes: int | None = None
    min_side: int = 1
    max_side: int | None = None
    max_pixels: int | None = None


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``(C, H, W)`` float tensor (any range) as an 8-bit PIL image, clipped to [0, 1]."""
    array = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    array = np.ascontiguousarray(array.transpose(1, 2, 0))
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=6)
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _resize_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size == image.size:
        return image
    up = size[0] * size[1] > image.size[0] * image.size[1]
    return image.resize(size, Image.Resampling.BICUBIC if up else Image.Resampling.LANCZOS)


def _resize(image: Image.Image, scale: float) -> Image.Image:
    width, height = image.size
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return _resize_to(image, size)


def fit_size(
    width: int, height: int, limits: ImageLimits, small: str = "upscale"
) -> tuple[int, int]:
    """The size a ``width x height`` image is sent at: scaled (keeping its aspect ratio to
    within a pixel) so that both sides lie in ``[min_side, max_side]`` and its pixels
    within ``max_pixels``; unchanged when it already fits.

    Raises :class:`~smoothapi.errors.InvalidImageError` when no size satisfies all the
    limits (too elongated), or when the image is too small and ``small="reject"``.
    """
    short, long = min(width, height), max(width, height)
    low = limits.min_side / short  # the smallest scale that keeps the short side legal
    high = math.inf
    if limits.max_side:
        high = limits.max_side / long
    if limits.max_pixels:
        high = min(high, math.sqrt(limits.max_pixels / (width * height)))
    if low > high or (limits.max_pixels and limits.min_side**2 > limits.max_pixels):
        raise InvalidImageError(
            f"no size of a {width}x{height} image fits the provider's limits (sides "
            f"{limits.min_side}..{limits.max_side or 'any'} px, pixels "
            f"{limits.max_pixels or 'any'}): its aspect ratio is too extreme"
        )
    if low > 1 and small == "reject":
        raise InvalidImageError(
            f"{width}x{height} image is below the provider's minimum of "
            f"{limits.min_side} px per side"
        )
    scale = low if low > 1 else min(1.0, high)
    if scale == 1.0:
        return width, height
    size = [max(limits.min_side, round(side * scale)) for side in (width, height)]
    if limits.max_side:
        size = [min(limits.max_side, side) for side in size]
    while limits.max_pixels and size[0] * size[1] > limits.max_pixels:
        index = 0 if size[0] >= size[1] else 1  # trim the long side (rounding only)
        size[index] -= 1
    return size[0], size[1]


def encode_image(
    image: torch.Tensor,
    limits: ImageLimits = ImageLimits(),
    *,
    fmt: str = "png",
    quality: int = 95,
    small: str = "upscale",
) -> bytes:
    """Encode one ``(C, H, W)`` image as PNG (lossless, default) or JPEG within ``limits``.

    Too large (bytes, sides or pixels): scaled down until it fits. Below the minimum
    side: scaled up (``small="upscale"``) or refused (``"reject"``) with
    :class:`~smoothapi.errors.InvalidImageError`; so is an image so elongated that no
    size fits both side limits (:func:`fit_size`). Nothing out of limits is ever sent.
    """
    if fmt not in IMAGE_FORMATS:
        raise InvalidInputError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    if small not in _SMALL:
        raise InvalidInputError(f"small must be one of {_SMALL}, got {small!r}")
    pil = to_pil(image)
    pil = _resize_to(pil, fit_size(*pil.size, limits, small))
    width, height = pil.size
    raw = width * height * len(pil.getbands())
    if limits.max_bytes and fmt == "png" and raw > limits.max_bytes:
        # Noise barely compresses: start near the size that fits instead of encoding it all.
        pil = _shrink(pil, 0.95 * math.sqrt(limits.max_bytes / raw), limits)
    data = _encode(pil, fmt, quality)
    while limits.max_bytes and len(data) > limits.max_bytes:
        pil = _shrink(pil, 0.95 * math.sqrt(limits.max_bytes / len(data)), limits)
        data = _encode(pil, fmt, quality)
    return data


def _shrink(image: Image.Image, scale: float, limits: ImageLimits) -> Image.Image:
    """``image`` scaled down by ``scale`` for the byte limit, never below ``min_side``."""
    smaller = _resize(image, scale)
    if min(smaller.size) < limits.min_side:
        raise InvalidImageError(
            f"cannot fit the image into {limits.max_bytes} bytes without going below "
            f"{limits.min_side} px per side; use fmt='jpeg'"
        )
    return smaller
