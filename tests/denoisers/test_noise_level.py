"""Noise-level-aware denoisers (FFDNet, DRUNet): one network, any sigma, told by the caller."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothapi import (
    InvalidInputError,
    LocalModelAdapter,
    SmoothedClassifier,
    create_denoiser,
    load_denoiser,
)
from smoothapi.denoisers import save_denoiser
from smoothapi.denoisers.noise_level import NoiseLevelAware, denoise, takes_noise_level
from smoothapi.sampling import Phase, Sampler

SMALL = {"ffdnet": {"depth": 3, "width": 8}, "drunet": {"widths": [4, 8, 16], "blocks": 1}}


def _trained_a_little(name: str) -> nn.Module:
    """A model whose last layer is no longer zero (at creation it is the identity)."""
    torch.manual_seed(0)
    model = create_denoiser(name, **SMALL[name])
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_new_network_is_the_identity_and_any_size_comes_back(name):
    model = create_denoiser(name, **SMALL[name]).eval()
    for height, width in [(7, 9), (16, 16), (33, 20)]:  # odd sizes are padded and cropped
        x = torch.rand(2, 3, height, width)
        assert torch.equal(model(x, 0.25), x)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_noise_level_changes_the_output_and_may_differ_per_image(name):
    model = _trained_a_little(name)
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        low, high = model(x, 0.0), model(x, 0.5)
        mixed = model(x, torch.tensor([0.0, 0.5]))
    assert not torch.allclose(low, high)
    assert torch.allclose(mixed[0], low[0], atol=1e-6)
    assert torch.allclose(mixed[1], high[1], atol=1e-6)
    with pytest.raises(InvalidInputError, match="one per image"):
        model(x, torch.tensor([0.1, 0.2, 0.3]))


def test_without_a_noise_level_the_call_says_how_to_give_one():
    model = create_denoiser("ffdnet", **SMALL["ffdnet"])
    with pytest.raises(InvalidInputError, match="noise_level"):
        model(torch.rand(1, 3, 8, 8))
    model.noise_level = 0.12
    assert torch.equal(model(torch.ones(1, 3, 8, 8)), torch.ones(1, 3, 8, 8))


def test_a_loaded_checkpoint_assumes_its_stored_sigma(tmp_path):
    model = _trained_a_little("drunet")
    save_denoiser(tmp_path / "d.safetensors", model, sigma=0.25, objective="mse",
                  sigma_range=[0.0, 0.5])  # fmt: skip
    loaded = load_denoiser(tmp_path / "d.safetensors")
    assert loaded.noise_level == 0.25
    assert loaded.checkpoint_metadata["sigma_range"] == [0.0, 0.5]
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x, 0.25), atol=1e-5)


class _Recorder(nn.Module):
    """Records the sigma it is given; returns the batch unchanged."""

    takes_noise_level = True

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[float] = []

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.seen.append(float(sigma))
        return x


def test_the_sampler_gives_its_sigma_to_noisy_batches_and_zero_to_the_clean_image():
    recorder = _Recorder()
    sampler = Sampler(0.37, 0, torch.device("cpu"), recorder, batch_size=4)
    x = torch.rand(3, 8, 8)
    sampler.noisy_batch(x, sampler.key(x), Phase.ESTIMATION, 0, 4)
    sampler.clean_batch(x)
    assert recorder.seen == [pytest.approx(0.37), 0.0]


def test_a_module_opts_in_through_its_class_and_plain_modules_get_no_sigma():
    assert takes_noise_level(_Recorder()) and takes_noise_level(create_denoiser("ffdnet"))
    assert not takes_noise_level(create_denoiser("dncnn", depth=3, width=4))
    assert issubclass(type(create_denoiser("drunet")), NoiseLevelAware)
    plain = nn.Identity()
    assert torch.equal(denoise(plain, torch.ones(1, 3, 2, 2), 0.5), torch.ones(1, 3, 2, 2))


def test_smoothed_classifier_runs_a_noise_level_aware_denoiser_at_its_sigma():
    recorder = _Recorder()
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    adapter = LocalModelAdapter(classifier, class_names=[f"c{k}" for k in range(4)])
    smoothed = SmoothedClassifier(adapter, 0.5, denoiser=recorder, batch_size=16, seed=1)
    smoothed.predict(torch.rand(3, 8, 8), n=32, alpha=0.01)
    assert recorder.seen and set(recorder.seen) == {0.5}
