"""FFDNet (Zhang, Zuo & Zhang, IEEE TIP 2018): a noise-level-aware CNN at half resolution.

Layout, written from the paper (its published weights are not used)::

    pixel-unshuffle 2x2:  (N, C, H, W) -> (N, 4C, H/2, W/2)
    concatenate the noise-level map sigma: (N, 4C + 1, H/2, W/2)
    conv(4C + 1 -> W) + ReLU
    (depth - 2) x [conv(W -> W, no bias), BatchNorm, ReLU]
    conv(W -> 4C)
    pixel-shuffle 2x2:    (N, 4C, H/2, W/2) -> (N, C, H, W)

Working on the four sub-images at half resolution quadruples the receptive field per
operation (``depth = 12`` sees about 50 px), and the noise-level input lets one network
serve every sigma in the range it was trained on. Unlike the paper, the stack predicts
the noise and the output is ``x - noise`` (residual learning, as DnCNN), which trains
faster from scratch. Odd heights and widths are padded by reflection and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .dncnn import _check_positive
from .noise_level import NoiseLevelAware
from .registry import register_denoiser

__all__ = ["FFDNet", "ffdnet"]


class FFDNet(NoiseLevelAware):
    """FFDNet mapping ``(N, C, H, W)`` noisy images and a noise level to denoised images.

    Args:
        in_channels: image channels ``C`` (1 for grey, 3 for RGB).
        depth: conv layers at half resolution (the paper: 15 for grey, 12 for RGB).
        width: channels of the hidden layers (the paper: 64 for grey, 96 for RGB).
    """

    def __init__(self, in_channels: int = 3, depth: int = 12, width: int = 96) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, width=width)
        if not isinstance(depth, int) or depth < 2:
            raise InvalidInputError(f"FFDNet depth must be an int >= 2, got {depth!r}")
        sub = 4 * in_channels
        layers: list[nn.Module] = [nn.Conv2d(sub + 1, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width, sub, 3, padding=1))
        self.body = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        last = layers[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)  # starts as the identity: output = input

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` noisy images and ``(N,)`` noise levels -> denoised images."""
        height, width = x.shape[-2:]
        padded = F.pad(x, (0, width % 2, 0, height % 2), mode="reflect") if (
            height % 2 or width % 2) else x  # fmt: skip
        sub = F.pixel_unshuffle(padded, 2)
        level = sigma.to(sub.dtype).view(-1, 1, 1, 1).expand(-1, 1, *sub.shape[-2:])
        noise = F.pixel_shuffle(self.body(torch.cat([sub, level], dim=1)), 2)
        return (padded - noise)[..., :height, :width]


@register_denoiser
def ffdnet(in_channels: int = 3, depth: int = 12, width: int = 96) -> nn.Module:
    """FFDNet: 2x2 pixel-unshuffle, a noise-level map, ``depth`` convs of ``width`` at half
    resolution (about 0.85M parameters at the RGB defaults; ``width=64`` about 0.39M)."""
    return FFDNet(in_channels=in_channels, depth=depth, width=width)
