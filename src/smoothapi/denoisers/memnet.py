"""MemNet (Tai et al., 2017): persistent memory blocks with dense long-term connections.

Every unit is pre-activation ``BN -> ReLU -> conv`` (written BRC below); 3x3 convs use
padding 1, so spatial size is preserved::

    feature extraction  BRC(C -> W)
    memory block m (m = 1..M):
        recursive unit   R residual blocks, each  h + BRC(W -> W)(BRC(W -> W)(h))
        gate unit        BRC 1x1 over the concatenation of the R residual-block outputs
                         and the long-term memory (the feature-extraction output and the
                         outputs of memory blocks 1..m-1): ((R + m) * W -> W)
    reconstruction      BRC(W -> C), then the global residual: output = x + reconstruction

This implementation uses a single reconstruction of the last memory block's output. The
paper's optional multi-supervision (a learned weighted average of per-block
reconstructions) is not used.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError
from .registry import register_denoiser

__all__ = ["MemNet", "memnet"]


class _BNReLUConv(nn.Sequential):
    """BatchNorm -> ReLU -> conv (no bias), padding keeping the spatial size."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
        )


class _ResidualBlock(nn.Module):
    """``h + BRC(BRC(h))`` with two 3x3 convs of ``width`` channels."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_BNReLUConv(width, width), _BNReLUConv(width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h)


class _MemoryBlock(nn.Module):
    """Recursive unit of ``num_resblocks`` residual blocks, then a 1x1 gate unit.

    ``index`` (1-based) is the block's position: its gate sees ``num_resblocks`` short-term
    states plus ``index`` long-term ones (feature extraction + ``index - 1`` earlier blocks).
    """

    def __init__(self, width: int, num_resblocks: int, index: int) -> None:
        super().__init__()
        self.recursive_unit = nn.ModuleList(_ResidualBlock(width) for _ in range(num_resblocks))
        self.gate_unit = _BNReLUConv((num_resblocks + index) * width, width, kernel_size=1)

    def forward(self, h: torch.Tensor, long_term: list[torch.Tensor]) -> torch.Tensor:
        short_term = []
        for block in self.recursive_unit:
            h = block(h)
            short_term.append(h)
        return self.gate_unit(torch.cat(short_term + long_term, dim=1))


class MemNet(nn.Module):
    """MemNet denoiser mapping ``(N, C, H, W)`` to ``(N, C, H, W)`` for any ``H, W``.

    Args:
        in_channels: image channels ``C`` (1 for grey, 3 for RGB).
        width: feature channels ``W``.
        num_memory_blocks: memory blocks ``M`` (original: 6).
        num_resblocks: residual blocks ``R`` per recursive unit (original: 6).
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        num_memory_blocks: int = 6,
        num_resblocks: int = 6,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("width", width),
            ("num_memory_blocks", num_memory_blocks),
            ("num_resblocks", num_resblocks),
        ):
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        self.feature_extractor = _BNReLUConv(in_channels, width)
        self.memory_blocks = nn.ModuleList(
            _MemoryBlock(width, num_resblocks, index) for index in range(1, num_memory_blocks + 1)
        )
        self.reconstructor = _BNReLUConv(width, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` noisy images -> ``(N, C, H, W)`` denoised ``x + reconstruction``."""
        h = self.feature_extractor(x)
        long_term = [h]
        for block in self.memory_blocks:
            h = block(h, long_term)
            long_term.append(h)
        return x + self.reconstructor(h)


@register_denoiser
def memnet(
    in_channels: int = 3, width: int = 64, num_memory_blocks: int = 6, num_resblocks: int = 6
) -> nn.Module:
    """MemNet with the original sizes by default (about 2.9M parameters at C=3)."""
    return MemNet(
        in_channels=in_channels,
        width=width,
        num_memory_blocks=num_memory_blocks,
        num_resblocks=num_resblocks,
    )
