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

__all__ = ["IMAGE_FORMATS", "ImageLimits", "encode_image", "to_pil"]

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


def _resize(image: Image.Image, scale: float) -> Image.Image:
    width, height = image.size
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)


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
    :class:`~smoothapi.errors.InvalidImageError`. Nothing out of limits is ever sent.
    """
    if fmt not in IMAGE_FORMATS:
        raise InvalidInputError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    if small not in _SMALL:
        raise InvalidInputError(f"small must be one of {_SMALL}, got {small!r}")
    pil = to_pil(image)
    width, height = pil.size
    if min(width, height) < limits.min_side:
        if small == "reject":
            raise InvalidImageError(
                f"{width}x{height} image is below the provider's minimum of "
                f"{limits.min_side} px per side"
            )
        pil = _resize(pil, limits.min_side / min(width, height) + 1e-9)
    scale = 1.0
    width, height = pil.size
    if limits.max_side and max(width, height) > limits.max_side:
        scale = min(scale, limits.max_side / max(width, height))
    if limits.max_pixels and width * height > limits.max_pixels:
        scale = min(scale, math.sqrt(limits.max_pixels / (width * height)))
    raw = width * height * len(pil.getbands())
    if limits.max_bytes and fmt == "png" and raw > limits.max_bytes:
        # Noise barely compresses: start near the size that fits instead of encoding it all.
        scale = min(scale, 0.95 * math.sqrt(limits.max_bytes / raw))
    if scale < 1.0:
        pil = _resize(pil, scale)
    data = _encode(pil, fmt, quality)
    while limits.max_bytes and len(data) > limits.max_bytes:
        pil = _resize(pil, 0.95 * math.sqrt(limits.max_bytes / len(data)))
        if min(pil.size) < limits.min_side:
            raise InvalidImageError(
                f"cannot fit the image into {limits.max_bytes} bytes without going below "
                f"{limits.min_side} px per side; use fmt='jpeg'"
            )
        data = _encode(pil, fmt, quality)
    return data
