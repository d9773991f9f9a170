"""Inference levers: how a noise-level-aware denoiser is run, and their figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothapi import LocalModelAdapter
from smoothapi.denoisers.noise_level import NoiseLevelAware
from smoothapi.studies.inference_levers import (
    INFERENCE_LEVERS,
    InferenceLever,
    chosen_lever,
    lever_figures,
    lever_lines,
    run_lever,
)


class Scaled(NoiseLevelAware):
    """Returns x * (1 - sigma): uses the level, and commutes with flips and turns."""

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * (1 - sigma.view(-1, 1, 1, 1))


class Ramp(NoiseLevelAware):
    """Adds a left-to-right ramp: depends on the image's orientation."""

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x + torch.linspace(0, 1, x.shape[-1])


def test_the_factor_scales_the_noise_level_the_denoiser_is_told():
    x = torch.rand(2, 3, 8, 8)
    out = run_lever(Scaled(), x, 0.25, InferenceLever("x0.8", factor=0.8))
    assert torch.allclose(out, x * (1 - 0.2))


@pytest.mark.parametrize("views", [2, 8])
def test_views_are_turned_back_before_averaging(views):
    x = torch.rand(1, 3, 6, 6)
    lever = InferenceLever("ensemble", views=views)
    # an orientation-free denoiser gives the same answer from every view...
    assert torch.allclose(run_lever(Scaled(), x, 0.1, lever), x * 0.9, atol=1e-6)
    # ...one that is not gets the views' average: a mirrored ramp averages to a constant
    out = run_lever(Ramp(), x, 0.1, lever)
    assert torch.allclose(out - x, torch.full_like(x, 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="views"):
        run_lever(Scaled(), x, 0.1, InferenceLever("bad", views=3))


def test_figures_share_the_draws_and_count_kept_labels():
    torch.manual_seed(0)
    crops = torch.rand(6, 3, 8, 8)
    classifier = LocalModelAdapter(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)))
    levers = (InferenceLever("as trained"), InferenceLever("x0.5", factor=0.5))
    figures = lever_figures(Scaled(), crops, 0.0, {"toy": classifier}, levers, draws=2)
    # at sigma = 0 the noise is nil and Scaled is the identity for every factor
    assert figures["as trained"] == figures["x0.5"]
    assert figures["as trained"]["toy"] == 1.0 and figures["as trained"]["psnr"] > 100
    noisy = lever_figures(Scaled(), crops, 0.5, {"toy": classifier}, levers, draws=2)
    assert noisy["as trained"]["psnr"] < noisy["x0.5"]["psnr"] < 100  # less shrinkage


def test_the_guides_choose_and_ties_keep_the_denoiser_as_trained():
    figures = {"as trained": {"psnr": 30.0, "a": 0.4, "b": 0.3, "api": 0.1},
               "ensemble": {"psnr": 31.0, "a": 0.3, "b": 0.4, "api": 0.9}}  # fmt: skip
    assert chosen_lever(figures, ["a", "b"]) == "as trained"  # the API's model never chooses
    assert chosen_lever(figures, []) == "ensemble"  # no guides: PSNR
    record = {"sigma": 0.25, "epoch": 3, "crops": 9, "draws": 4, "figures": figures,
              "chosen": "as trained"}  # fmt: skip
    lines = lever_lines(record, ["a", "b"], "api")
    assert "| ensemble | 31.00 | 30.0% | 40.0% | 90.0% |" in lines
    assert any("**as trained**." in line for line in lines)
    assert [lever.name for lever in INFERENCE_LEVERS][0] == "as trained"
