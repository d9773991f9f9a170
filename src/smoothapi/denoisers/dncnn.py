"""DnCNN (Zhang et al., 2017): a plain conv stack that predicts the noise (residual learning).

Layout, with 3x3 convolutions and padding 1 throughout (so spatial size is preserved)::

    conv(C -> W) + ReLU
    (depth - 2) x [conv(W -> W, no bias), BatchNorm, ReLU]
    conv(W -> C, no bias)

The stack estimates the noise ``n(x)`` and the denoiser returns ``x - n(x)``.
``dncnn`` uses width 64 (the original); ``dncnn_wide`` width 128 (the paper's DnCNN-Wide).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError
from .registry import register_denoiser

__all__ = ["DnCNN", "dncnn", "dncnn_wide"]


class DnCNN(nn.Module):
    """DnCNN denoiser mapping ``(N, C, H, W)`` to ``(N, C, H, W)`` for any ``H, W``.

    Args:
        in_channels: image channels ``C`` (1 for grey, 3 for RGB).
        depth: number of conv layers (at least 2); the original uses 17.
        width: channels of the hidden conv layers.
    """

    def __init__(self, in_channels: int = 3, depth: int = 17, width: int = 64) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, width=width)
        if not isinstance(depth, int) or depth < 2:
            raise InvalidInputError(f"DnCNN depth must be an int >= 2, got {depth!r}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` noisy images -> ``(N, C, H, W)`` denoised images ``x - n(x)``."""
        return x - self.body(x)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")


@register_denoiser
def dncnn(in_channels: int = 3, depth: int = 17, width: int = 64) -> nn.Module:
    """DnCNN with 64-channel hidden layers (about 0.56M parameters at depth 17, C=3)."""
    return DnCNN(in_channels=in_channels, depth=depth, width=width)


@register_denoiser
def dncnn_wide(in_channels: int = 3, depth: int = 17, width: int = 128) -> nn.Module:
    """DnCNN-Wide: DnCNN with 128-channel hidden layers (about 2.2M parameters at depth 17)."""
    return DnCNN(in_channels=in_channels, depth=depth, width=width)
