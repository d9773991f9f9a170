"""Denoiser architectures behind a registry, with checkpoints that rebuild them.

Registered architectures (see :func:`list_denoisers`):

- ``dncnn``: DnCNN (Zhang et al., 2017), ``depth`` conv layers of ``width`` 64 that predict
  the noise; output ``x - noise``.
- ``dncnn_wide``: DnCNN-Wide, the same with ``width`` 128.
- ``ffdnet``: FFDNet (Zhang, Zuo & Zhang, 2018), convolutions at half resolution after a
  2x2 pixel-unshuffle, with a noise-level map as input; output ``x - noise``.
- ``drunet``: a small DRUNet (Zhang et al., 2021), a residual U-Net with a noise-level
  map as input; output ``x - noise``.
- ``memnet``: MemNet (Tai et al., 2017), memory blocks of residual blocks with gated
  long-term connections; output ``x + reconstruction``.

``ffdnet`` and ``drunet`` are noise-level aware (:mod:`~smoothapi.denoisers.noise_level`):
called as ``model(x, sigma)``, one network serves every sigma it was trained on, and
:class:`~smoothapi.SmoothedClassifier` passes its own sigma.

Every denoiser maps ``(N, C, H, W)`` to ``(N, C, H, W)`` for any ``H, W``, with
``C = in_channels``. The defaults are the papers' sizes; small variants such as
``create_denoiser("dncnn", in_channels=1, depth=5, width=32)`` fit a CPU.

Save a trained denoiser with :func:`save_denoiser` (safetensors weights plus JSON metadata:
architecture, sigma, objective, surrogates, ...) and rebuild it with :func:`load_denoiser`.
Denoisers that ship in the package load by name, ``load_denoiser("photo-sigma0.25")``;
:func:`pretrained_denoisers` lists them with what each was trained for.
Any other ``torch.nn.Module`` with the same input/output shapes can also be passed as
``SmoothedClassifier(..., denoiser=...)``.
"""

from . import dncnn, drunet, ffdnet, memnet  # noqa: F401  (importing registers the architectures)
from .pretrained import PretrainedDenoiser, default_denoiser, pretrained_denoisers
from .registry import (
    create_denoiser,
    list_denoisers,
    load_denoiser,
    register_denoiser,
    save_denoiser,
)

__all__ = [
    "PretrainedDenoiser",
    "create_denoiser",
    "default_denoiser",
    "pretrained_denoisers",
    "list_denoisers",
    "load_denoiser",
    "register_denoiser",
    "save_denoiser",
]
