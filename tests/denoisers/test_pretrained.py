"""Denoisers shipped in the package load by name and denoise what they were trained for."""

from __future__ import annotations

import pytest
import torch

from smoothapi import InvalidInputError
from smoothapi._checkpoint import module_memory_format
from smoothapi.denoisers import default_denoiser, load_denoiser, pretrained_denoisers

SHIPPED = pretrained_denoisers()
PHOTO = [name for name in SHIPPED if name.startswith("photo-")]


def test_shipped_names_are_listed_with_what_they_were_trained_for():
    assert {"fashion-mnist-sigma0.25-query", "fashion-mnist-sigma0.25-full"} <= set(SHIPPED)
    for name, entry in SHIPPED.items():
        model = load_denoiser(name)
        meta = model.checkpoint_metadata
        assert meta["sigma"] == pytest.approx(entry.sigma) and entry.description
        assert meta["objective"] == "stab+mse"


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(InvalidInputError, match="fashion-mnist-sigma0.25-query"):
        load_denoiser("photo-sigma0.3")


def test_default_denoiser_is_the_photo_one_for_its_sigma():
    assert default_denoiser(0.3) is None
    for name in PHOTO:
        assert default_denoiser(SHIPPED[name].sigma) == name


@pytest.mark.parametrize("name", PHOTO)
def test_photo_denoisers_lower_the_error_of_noisy_held_out_photos(name):
    from smoothapi import photos

    held_out = [photos.load_photo(p) for p in photos.available_photos("test")]
    tiles, _ = photos.test_crops(held_out, 96)
    clean = torch.from_numpy(tiles[::6]).float() / 255
    sigma = SHIPPED[name].sigma
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    model = load_denoiser(name)
    assert model.checkpoint_metadata["kwargs"]["in_channels"] == 3
    assert model.checkpoint_metadata["surrogates"] == ["lite0", "lite1"]  # query access
    with torch.inference_mode():
        denoised = model(noisy)
    noisy_mse = (noisy - clean).pow(2).mean().item()
    assert (denoised - clean).pow(2).mean().item() < 0.5 * noisy_mse


def test_a_bfloat16_photo_denoiser_denoises_as_well_as_the_float32_one():
    from smoothapi import photos

    held_out = [photos.load_photo(p) for p in photos.available_photos("test")]
    tiles, _ = photos.test_crops(held_out, 96)
    clean = torch.from_numpy(tiles[::9]).float() / 255
    noisy = clean + 0.25 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    full = load_denoiser("photo-sigma0.25")
    half = load_denoiser("photo-sigma0.25", dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert module_memory_format(half) == module_memory_format(full) == torch.channels_last
    assert half.checkpoint_metadata == full.checkpoint_metadata
    with torch.inference_mode():
        a, b = full(noisy), half(noisy.bfloat16()).float()
    psnr = [-10 * torch.log10((d - clean).pow(2).mean()).item() for d in (a, b)]
    assert abs(psnr[0] - psnr[1]) < 0.05  # dB
    assert (a - b).pow(2).mean().sqrt().item() < 1 / 255  # below 8-bit quantisation
    with pytest.raises(InvalidInputError, match="floating-point"):
        load_denoiser("photo-sigma0.25", dtype="int8")


@pytest.mark.parametrize("name", PHOTO)
def test_shipped_photo_denoisers_are_the_studys(name):
    """The file in the package is the natural-photo study's query-access denoiser."""
    from pathlib import Path

    from smoothapi.denoisers.pretrained import pretrained_path

    study = Path(__file__).resolve().parents[2] / "results" / "natural-photos" / "denoisers"
    trained = study / f"stab+mse-query@{SHIPPED[name].sigma:g}" / "denoiser.safetensors"
    assert trained.is_file(), "ship only denoisers the committed study trained"
    assert pretrained_path(name).read_bytes() == trained.read_bytes()
