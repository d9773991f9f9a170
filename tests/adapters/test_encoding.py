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


# --- nothing out of limits is ever sent: a seeded sweep over sizes and aspect ratios ---------

from smoothapi.adapters.azure import API_VERSIONS  # noqa: E402
from smoothapi.adapters.encoding import fit_size  # noqa: E402

PROVIDER_LIMITS = {
    "aws": ImageLimits(max_bytes=5 * 1024 * 1024, min_side=80, max_side=10_000),
    "azure v3.2": API_VERSIONS["v3.2"],
    "azure 4.0": API_VERSIONS["4.0"],
    "google": ImageLimits(max_bytes=7_300_000, min_side=1),
    "clarifai": ImageLimits(max_bytes=20_000_000, max_pixels=85_000_000),
    "tight": ImageLimits(max_bytes=6_000, min_side=30, max_side=200, max_pixels=20_000),
}


def _provider_limits(name):
    from smoothapi.adapters.aws import RekognitionAdapter
    from smoothapi.adapters.clarifai import ClarifaiAdapter
    from smoothapi.adapters.google import GoogleVisionAdapter

    classes = {"aws": RekognitionAdapter, "google": GoogleVisionAdapter,
               "clarifai": ClarifaiAdapter}
    return classes[name].limits if name in classes else PROVIDER_LIMITS[name]


def _sizes(seed: int, count: int, max_pixels: int = 1_500_000):
    """Seeded (width, height) pairs: sides log-uniform over 1..20,000 px, aspect ratios up to
    1:20,000, the pixel count capped so that each encode stays quick."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        long = int(np.exp(rng.uniform(0, np.log(20_000))))
        short = int(np.exp(rng.uniform(0, np.log(max(1, min(long, max_pixels // long))))))
        yield (long, short) if rng.random() < 0.5 else (short, long)


def _feasible(width, height, limits):
    short, long = min(width, height), max(width, height)
    high = min(limits.max_side / long if limits.max_side else np.inf,
               np.sqrt(limits.max_pixels / (width * height)) if limits.max_pixels else np.inf)
    return limits.min_side / short <= high


@pytest.mark.parametrize("provider", sorted(PROVIDER_LIMITS))
def test_every_encoded_image_lies_within_the_providers_limits(provider):
    """The property, over 40 seeded sizes per provider plus the two sizes that slipped
    through before (90x12000 to AWS, 60x12000 to Azure v3.2): the image sent decodes to
    sides in [min_side, max_side], pixels within max_pixels and bytes within max_bytes;
    InvalidImageError is raised only when no size fits. Deterministic (seeded)."""
    limits = _provider_limits(provider) if provider in PROVIDER_LIMITS else None
    assert limits == PROVIDER_LIMITS[provider]  # the table above is the shipped one
    sizes = [(90, 12_000), (12_000, 90), (60, 12_000), (1, 20_000), (3, 3)]
    sizes += list(_sizes(seed=sorted(PROVIDER_LIMITS).index(provider), count=40))
    sent = refused = 0
    for width, height in sizes:
        noisy = provider == "tight"  # noise does not compress: the byte limit binds
        image = torch.rand(1, height, width) if noisy else torch.full((1, height, width), 0.5)
        try:
            encoded = encode_image(image, limits)
        except InvalidImageError:
            assert not _feasible(width, height, limits) or noisy, (width, height)
            refused += 1
            continue
        sent += 1
        with _decode(encoded) as decoded:
            w, h = decoded.size
        assert limits.min_side <= min(w, h), (provider, width, height, w, h)
        assert limits.max_side is None or max(w, h) <= limits.max_side, (width, height, w, h)
        assert limits.max_pixels is None or w * h <= limits.max_pixels, (width, height, w, h)
        assert limits.max_bytes is None or len(encoded) <= limits.max_bytes
        assert abs(w / h - width / height) <= (width / height) * (1 / min(w, h) + 1 / max(w, h))
    assert sent >= 10, "the sweep should exercise images that fit"
    if provider in ("aws", "azure v3.2"):
        assert refused >= 2  # 90x12000 and 60x12000 are refused, not sent out of limits


def test_the_sizes_that_used_to_slip_below_the_minimum_are_refused():
    aws, azure = PROVIDER_LIMITS["aws"], PROVIDER_LIMITS["azure v3.2"]
    with pytest.raises(InvalidImageError, match="aspect ratio"):
        encode_image(torch.zeros(1, 12_000, 90), aws)  # was sent as 75x10000 (minimum 80)
    with pytest.raises(InvalidImageError, match="aspect ratio"):
        encode_image(torch.zeros(1, 60, 12_000), azure)  # was sent as 10000x50 (must be > 50)
    assert fit_size(100, 12_000, aws) == (83, 10_000)  # feasible: long side fitted, short kept
    assert fit_size(40, 2_000, aws) == (80, 4_000)  # upscaled to the minimum, within max_side
