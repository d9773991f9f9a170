"""Classifier architectures (a registry): targets and surrogates for 28x28 / 32x32 images.

Build one with ``create_classifier(name, in_channels=..., num_classes=...)``; list them
with ``list_classifiers()``. Each architecture is a small factory function registered
with ``@register_classifier``, taking ``(in_channels=1, num_classes=10, **size_args)``.
All map ``(N, C, H, W)`` to logits ``(N, num_classes)``, have well under 1M parameters
at their defaults, and train quickly on a CPU:

- ``small_cnn``: four 3x3 conv-BN-ReLU layers in two pooled stages, two-layer head.
- ``lenet``: LeNet-5 (conv5-pool-conv5-pool-fc-fc-fc), adaptive pooling for 28 or 32.
- ``mlp``: fully connected layers on the flattened image; fixed ``input_size`` (28 by
  default, pass 32 for CIFAR-sized inputs), unlike the others which take any size.
- ``resnet_small``: CIFAR-style ResNet, three stages of BasicBlocks
  (``blocks_per_stage``, ``width``).
- ``vgg_small``: stacked 3x3 conv-BN-ReLU pairs with max-pooling (``width``).
- ``mobilenet_small``: depthwise-separable convolutions, MobileNet v1 style (``width``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._registry import Registry

__all__ = ["create_classifier", "list_classifiers", "register_classifier"]

_REGISTRY: Registry[nn.Module] = Registry("classifier")
register_classifier = _REGISTRY.register


def create_classifier(name: str, **kwargs) -> nn.Module:
    """Build the classifier ``name`` (see :func:`list_classifiers`) with its keyword arguments."""
    return _REGISTRY.create(name, **kwargs)


def list_classifiers() -> list[str]:
    """Names accepted by :func:`create_classifier`."""
    return _REGISTRY.names()


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register_classifier
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Module:
    """Four 3x3 conv layers in two pooled stages, then a two-layer head (about 0.2M parameters
    at width 32). Any input of at least 8x8 pixels works (adaptive pooling to 4x4)."""
    return nn.Sequential(
        *_conv_block(in_channels, width),
        *_conv_block(width, width),
        nn.MaxPool2d(2),
        *_conv_block(width, 2 * width),
        *_conv_block(2 * width, 2 * width),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


@register_classifier
def lenet(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """LeNet-5 style: conv5-pool-conv5-pool, then three fully connected layers (about 62k
    parameters). The first conv is padded, so 28x28 inputs reach the classic 5x5 feature map;
    adaptive pooling to 5x5 lets 32x32 (and any input of at least 12x12) work too."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(5),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )


@register_classifier
def mlp(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    hidden: Sequence[int] = (256, 128),
) -> nn.Module:
    """Flatten, then fully connected ReLU layers of sizes ``hidden`` (about 0.24M parameters
    for 1x28x28). The flatten fixes the input: it takes only ``input_size x input_size``
    images (pass ``input_size=32`` for CIFAR-sized inputs)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * input_size * input_size
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (a strided 1x1 conv-BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


@register_classifier
def resnet_small(
    in_channels: int = 1, num_classes: int = 10, blocks_per_stage: int = 2, width: int = 16
) -> nn.Module:
    """CIFAR-style ResNet: a 3x3 stem, three stages of ``blocks_per_stage`` BasicBlocks with
    ``width``, ``2*width``, ``4*width`` channels (the last two start with stride 2), global
    average pooling and a linear head. Defaults give a ResNet-14 of about 0.18M parameters."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    c_in = width
    for stage in range(3):
        c_out = width * 2**stage
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(_BasicBlock(c_in, c_out, stride))
            c_in = c_out
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
    )


@register_classifier
def vgg_small(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Module:
    """VGG style: three stages of two 3x3 conv-BN-ReLU layers (``width``, ``2*width``,
    ``4*width`` channels), each followed by 2x2 max-pooling, then global average pooling and
    a linear head (about 0.29M parameters at width 32)."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for stage in range(3):
        c_out = width * 2**stage
        layers += [*_conv_block(c_in, c_out), *_conv_block(c_out, c_out), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
    )


def _separable_block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    """Depthwise 3x3 conv-BN-ReLU, then pointwise 1x1 conv-BN-ReLU (MobileNet v1)."""
    return [
        nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


@register_classifier
def mobilenet_small(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Module:
    """MobileNet v1 style: a 3x3 conv stem of ``width`` channels, then five depthwise-separable
    blocks up to ``8*width`` channels (two of them stride 2), global average pooling and a
    linear head (about 0.13M parameters at width 32)."""
    plan = [(2 * width, 1), (4 * width, 2), (4 * width, 1), (8 * width, 2), (8 * width, 1)]
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    c_in = width
    for c_out, stride in plan:
        layers += _separable_block(c_in, c_out, stride)
        c_in = c_out
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
    )
