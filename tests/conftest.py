"""Shared test helpers: real images and the analytic linear classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from smoothapi import LocalModelAdapter

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_denoiser(tmp_path_factory):
    """A small RGB denoiser file (random weights, sigma 0.25): stands for a photo denoiser."""
    from smoothapi.denoisers import create_denoiser, save_denoiser

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("denoiser") / "tiny-photo.safetensors"
    save_denoiser(path, create_denoiser("dncnn", in_channels=3, depth=2, width=4), sigma=0.25,
                  objective="mse")  # fmt: skip
    return path


@pytest.fixture(scope="session")
def digit_images() -> torch.Tensor:
    """Real 8x8 handwritten digits (scikit-learn), as (N, 1, 8, 8) float tensors in [0, 1]."""
    images = load_digits().images.astype(np.float32) / 16.0
    return torch.from_numpy(images).unsqueeze(1)


def linear_adapter(x: torch.Tensor, distance: float, seed: int = 0) -> LocalModelAdapter:
    """f(z) = 1[w.z + b > 0] with b chosen so that x lies at signed l2 distance ``distance``
    from the decision boundary. Under N(0, sigma^2 I) noise, P[f(x + delta) = 1] =
    Phi(distance / sigma) exactly, and the smoothed classifier's robust radius at x is |distance|.
    """
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(x.numel(), generator=generator, dtype=torch.float64)
    w /= w.norm()
    b = distance - float(w @ x.flatten().double())
    layer = torch.nn.Linear(x.numel(), 2, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        layer.bias.copy_(torch.tensor([0.0, b]))
    model = torch.nn.Sequential(torch.nn.Flatten(), _ToDouble(), layer)
    return LocalModelAdapter(model)


class _ToDouble(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()
