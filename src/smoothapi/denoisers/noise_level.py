"""Denoisers that take the noise level as an input, so one network serves many sigmas.

A :class:`NoiseLevelAware` denoiser is called as ``model(x, sigma)``: ``sigma`` is a
float or an ``(N,)`` tensor of per-image noise levels (standard deviations on the [0, 1]
pixel scale). Any module whose class sets ``takes_noise_level = True`` is treated the same
way. Called as ``model(x)`` it uses ``model.noise_level``, which
:func:`~smoothapi.denoisers.load_denoiser` sets to the sigma stored in the checkpoint
and a user may set to any other value in the range the network was trained on.
:class:`~smoothapi.SmoothedClassifier` always passes its own sigma.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError

__all__ = ["NoiseLevelAware", "denoise", "takes_noise_level"]


class NoiseLevelAware(nn.Module):
    """Base class: subclasses implement :meth:`denoise` ``(x, sigma of shape (N,))``."""

    #: Read by :func:`takes_noise_level`; any module of one's own may set it to opt in.
    takes_noise_level = True

    def __init__(self) -> None:
        super().__init__()
        self.noise_level: float | None = None

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C, H, W)`` noisy images -> ``(N, C, H, W)`` denoised images."""
        if sigma is None:
            sigma = self.noise_level
        if sigma is None:
            raise InvalidInputError(
                f"{type(self).__name__} needs the noise level: call it as model(x, sigma) "
                "or set model.noise_level"
            )
        level = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if level.numel() == 1:
            level = level.expand(x.shape[0])
        elif level.numel() != x.shape[0]:
            raise InvalidInputError(
                f"sigma must be one number or one per image; got {level.numel()} for "
                f"{x.shape[0]} images"
            )
        return self.denoise(x, level)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def takes_noise_level(model: nn.Module | None) -> bool:
    """Whether ``model`` is a noise-level-aware denoiser (called as ``model(x, sigma)``):
    one whose class sets ``takes_noise_level = True``, as :class:`NoiseLevelAware` does."""
    return getattr(type(model), "takes_noise_level", False) is True


def denoise(denoiser: nn.Module, batch: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """``denoiser(batch, sigma)`` for a noise-level-aware denoiser (under
    ``DistributedDataParallel`` too), else ``denoiser(batch)``."""
    if takes_noise_level(getattr(denoiser, "module", denoiser)):
        return denoiser(batch, sigma)
    return denoiser(batch)
