"""Denoisers shipped in the package load by name and denoise what they were trained for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from smoothapi import InvalidInputError
from smoothapi._checkpoint import module_memory_format
from smoothapi.denoisers import default_denoiser, load_denoiser, pretrained_denoisers
from smoothapi.denoisers.pretrained import pretrained_path

SHIPPED = pretrained_denoisers()
PHOTO = [name for name in SHIPPED if name.startswith("photo-sigma")]  # one sigma each
RESULTS = Path(__file__).resolve().parents[2] / "results"


def test_shipped_names_are_listed_with_what_they_were_trained_for():
    assert {"fashion-mnist-sigma0.25-query", "fashion-mnist-sigma0.25-full"} <= set(SHIPPED)
    for name, entry in SHIPPED.items():
        model = load_denoiser(name)
        meta = model.checkpoint_metadata
        assert meta["sigma"] == pytest.approx(entry.sigma) and entry.description
        assert meta["objective"] == ("mse" if name == "photo-mse" else "stab+mse")
        if entry.sigma_max is not None:  # noise-level aware: the range it was trained on
            assert meta["sigma_range"] == [0.0, entry.sigma_max]


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(InvalidInputError, match="fashion-mnist-sigma0.25-query"):
        load_denoiser("photo-sigma0.3")


def test_default_denoiser_is_the_noise_level_aware_one_wherever_it_serves():
    """photo-mse was chosen on the validation photos over the per-sigma ones, which stay
    loadable by name; beyond its range a per-sigma one would be next, and none ships."""
    for sigma in (0.0, 0.12, 0.25, 0.3, 0.49, 0.5):
        assert default_denoiser(sigma) == "photo-mse"
    assert default_denoiser(0.51) is None and default_denoiser(1.0) is None
    assert list(SHIPPED)[0] == "photo-mse"  # the order of preference
    for name in PHOTO:
        assert SHIPPED[name].serves(SHIPPED[name].sigma) and not SHIPPED[name].serves(0.3)


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.4, 0.5])
def test_the_photo_mse_denoiser_serves_every_sigma_up_to_half(sigma):
    """One network, told the noise level: at each sigma it removes most of the noise
    (PSNR at least 8 dB above the noisy crop's; measured 9.3-13 dB above at these levels)."""
    from smoothapi import photos
    from smoothapi.denoisers.noise_level import denoise

    held_out = [photos.load_photo(p) for p in photos.available_photos("test")]
    tiles, _ = photos.test_crops(held_out, 96)
    clean = torch.from_numpy(tiles[::6]).float() / 255
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    model = load_denoiser("photo-mse")
    assert model.checkpoint_metadata["surrogates"] == []  # no classifier guided it
    with torch.inference_mode():
        denoised = denoise(model, noisy, sigma).clamp(0, 1)
    gain = 10 * torch.log10((noisy.clamp(0, 1) - clean).pow(2).mean()
                            / (denoised - clean).pow(2).mean())  # fmt: skip
    assert gain.item() > 8


def test_the_shipped_photo_mse_denoiser_is_the_runs_best_epoch():
    shipped = pretrained_path("photo-mse").read_bytes()
    assert shipped == (RESULTS / "photo-mse" / "photo-mse.safetensors").read_bytes()


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
    study = RESULTS / "natural-photos" / "denoisers"
    trained = study / f"stab+mse-query@{SHIPPED[name].sigma:g}" / "denoiser.safetensors"
    assert trained.is_file(), "ship only denoisers the committed study trained"
    assert pretrained_path(name).read_bytes() == trained.read_bytes()
