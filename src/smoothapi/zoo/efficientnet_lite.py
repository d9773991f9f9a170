"""EfficientNet-Lite (Tan & Le 2019, the "lite" variants for mobile accelerators).

Lite drops squeeze-and-excitation, uses ReLU6 and keeps the stem (32 channels) and the
head (1,280 channels) and the first and last stage's depth fixed across sizes. Module
names match the published PyTorch state dicts (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_fc``...), so those load with ``strict=True`` and no key mapping.

Convolutions pad TensorFlow-"same" style, computed from each input's size, so the model
runs at any resolution (the weights were trained at 224 / 240 / 260 px for lite0 / 1 / 2).
Inputs are RGB normalised per channel with mean 0.498 and std 0.502 (see :mod:`smoothapi.zoo`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetLite", "LITE_VARIANTS"]

#: name -> (width multiplier, depth multiplier, native resolution, dropout)
LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}

# Stages of EfficientNet-B0: (repeats, kernel, stride, expand ratio, in channels, out channels).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_MOMENTUM, _BN_EPS = 0.01, 1e-3  # TensorFlow's decay 0.99, epsilon 1e-3


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM, eps=_BN_EPS)


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width`` to a multiple of ``divisor`` (never 10% below)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding for the actual input size.

    Symmetric padding (every stride-1 layer) goes to the convolution itself; only the
    uneven padding of stride-2 layers costs a padded copy of the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]),
                            self.dilation, self.groups)  # fmt: skip
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project (no SE in Lite)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel, stride=stride, groups=hidden, bias=False
        )
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _batch_norm(c_out)
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and drop_rate > 0:  # stochastic depth, per sample
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= drop_rate
            y = y * keep / (1 - drop_rate)
        return x + y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite mapping ``(B, 3, H, W)`` normalised images to ``(B, 1000)`` logits."""

    def __init__(
        self,
        width: float,
        depth: float,
        dropout: float = 0.2,
        num_classes: int = 1000,
        drop_connect: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _batch_norm(32)
        blocks = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_STAGES):
            c_in = 32 if i == 0 else _round_channels(c_in, width)
            c_out = _round_channels(c_out, width)
            if i not in (0, last):  # Lite keeps the first and last stage's depth
                repeats = int(math.ceil(depth * repeats))
            for r in range(repeats):
                blocks.append(
                    MBConv(
                        c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(c_out, 1280, 1, bias=False)
        self._bn1 = _batch_norm(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x, self.drop_connect * i / len(self._blocks))
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(x.mean(dim=(2, 3))))
