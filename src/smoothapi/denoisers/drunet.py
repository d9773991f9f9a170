"""A small DRUNet (Zhang et al., IEEE TPAMI 2021): a residual U-Net with a noise-level map.

Layout, written from the paper (its published weights are not used), for ``widths =
(w1, ..., wL)`` and ``blocks`` residual blocks per stage::

    concatenate the noise-level map:          (N, C + 1, H, W)
    conv(C + 1 -> w1)
    down, for each level l < L:  blocks x ResBlock(w_l), conv 2x2 stride 2 (w_l -> w_l+1)
    bottom:                      blocks x ResBlock(w_L)
    up, for each level l < L:    transposed conv 2x2 stride 2 (w_l+1 -> w_l), add the
                                 skip from the same level, blocks x ResBlock(w_l)
    conv(w1 -> C)

with ``ResBlock(w) = x + conv(relu(conv(x)))`` (3x3, no batch norm, no biases, as in the
paper). The paper uses four levels of widths 64-512 and four blocks (32M parameters); the
default here, ``(32, 64, 128, 256)`` with one block, is about 2M parameters and fits a
CPU. Every halving doubles the receptive field: three halvings see over 100 px. Unlike
the paper, the network predicts the noise and returns ``x - noise``. Sizes that are not
multiples of ``2 ** (L - 1)`` are padded by replication and cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .noise_level import NoiseLevelAware
from .registry import register_denoiser

__all__ = ["DRUNet", "drunet"]


class _ResBlock(nn.Sequential):
    def __init__(self, width: int) -> None:
        super().__init__(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _stage(width: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(_ResBlock(width) for _ in range(blocks)))


class DRUNet(NoiseLevelAware):
    """Residual U-Net mapping ``(N, C, H, W)`` noisy images and a noise level to denoised ones.

    Args:
        in_channels: image channels ``C``.
        widths: channels per level, finest first (at least one level).
        blocks: residual blocks per stage.
    """

    def __init__(
        self, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128, 256), blocks: int = 1
    ) -> None:
        super().__init__()
        widths = list(widths)
        values = [in_channels, blocks, *widths]
        if not widths or not all(isinstance(v, int) and v >= 1 for v in values):
            raise InvalidInputError(
                f"DRUNet needs positive ints: in_channels={in_channels!r}, widths={widths!r}, "
                f"blocks={blocks!r}"
            )
        self.head = nn.Conv2d(in_channels + 1, widths[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            nn.Sequential(_stage(w, blocks), nn.Conv2d(w, nxt, 2, stride=2, bias=False))
            for w, nxt in zip(widths, widths[1:], strict=False)
        )
        self.bottom = _stage(widths[-1], blocks)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(nxt, w, 2, stride=2, bias=False)
            for w, nxt in zip(widths, widths[1:], strict=False)
        )
        self.up_blocks = nn.ModuleList(_stage(w, blocks) for w in widths[:-1])
        self.tail = nn.Conv2d(widths[0], in_channels, 3, padding=1, bias=False)
        nn.init.zeros_(self.tail.weight)  # starts as the identity: output = input

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` noisy images and ``(N,)`` noise levels -> denoised images."""
        height, width = x.shape[-2:]
        multiple = 2 ** len(self.down)
        pad_h, pad_w = -height % multiple, -width % multiple
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        level = sigma.to(x.dtype).view(-1, 1, 1, 1).expand(-1, 1, *padded.shape[-2:])
        h = self.head(torch.cat([padded, level], dim=1))
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        h = self.bottom(h)
        stages = zip(reversed(self.up), reversed(self.up_blocks), reversed(skips), strict=True)
        for up, blocks, skip in stages:
            h = blocks(up(h) + skip)
        return (padded - self.tail(h))[..., :height, :width]


@register_denoiser
def drunet(
    in_channels: int = 3, widths: Sequence[int] = (32, 64, 128, 256), blocks: int = 1
) -> nn.Module:
    """Small DRUNet: a 4-level residual U-Net with a noise-level map (about 2M parameters)."""
    return DRUNet(in_channels=in_channels, widths=tuple(widths), blocks=blocks)
