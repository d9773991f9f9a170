"""Small classifier architectures for experiments: targets and surrogates for 28x28 / 32x32 images.

Build one with ``create_classifier(name, in_channels=..., num_classes=...)``; list them
with ``list_classifiers()``. Each architecture is a small factory function registered
with ``@register_classifier``.
"""

from __future__ import annotations

from torch import nn

from .._registry import Registry

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
