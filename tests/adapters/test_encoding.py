"""Encoding after the noise: clipping, formats and provider limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from smoothapi.adapters.encoding import ImageLimits, encode_image, to_pil
from smoothapi.errors import InvalidImageError


def _decode(data_bytes: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data_bytes))


def test_png_is_lossless_after_clipping_and_quantising():
    image = torch.rand(3, 9, 7) * 1.4 - 0.2  # noisy: outside [0, 1]
    decoded = np.asarray(_decode(encode_image(image)))
    expected = image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    assert decoded.shape == (9, 7, 3) and np.array_equal(decoded, expected)
    assert to_pil(torch.rand(1, 4, 5)).mode == "L"


def test_jpeg_option():
    decoded = _decode(encode_image(torch.rand(3, 32, 32), fmt="jpeg", quality=80))
    assert decoded.format == "JPEG" and decoded.size == (32, 32)


def test_a_noisy_6000_pixel_photo_fits_five_megabytes():
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    big = torch.nn.functional.interpolate(photo[None], size=(6000, 6000), mode="nearest")[0]
    noisy = big + 0.25 * torch.randn(big.shape, generator=torch.Generator().manual_seed(0))
    limits = ImageLimits(max_bytes=5 * 1024 * 1024, min_side=80, max_side=10_000)
    encoded = encode_image(noisy, limits)
    assert len(encoded) <= limits.max_bytes
    width, height = _decode(encoded).size
    assert width == height and 80 <= width < 6000


def test_small_images_are_upscaled_or_rejected():
    limits = ImageLimits(min_side=50)
    upscaled = _decode(encode_image(torch.rand(3, 40, 40), limits))
    assert min(upscaled.size) >= 50
    with pytest.raises(InvalidImageError, match="minimum of 50 px"):
        encode_image(torch.rand(3, 40, 40), limits, small="reject")
    assert _decode(encode_image(torch.rand(1, 40, 80), ImageLimits(min_side=80))).size == (160, 80)


def test_max_side_and_pixels():
    assert _decode(encode_image(torch.rand(1, 300, 100), ImageLimits(max_side=150))).size == (
        50,
        150,
    )
    w, h = _decode(encode_image(torch.rand(1, 100, 100), ImageLimits(max_pixels=2500))).size
    assert w * h <= 2500
