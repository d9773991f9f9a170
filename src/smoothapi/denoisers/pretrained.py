"""Denoisers shipped inside the package, loadable by name.

``load_denoiser("photo-sigma0.25")`` reads a shipped safetensors file by name;
:func:`pretrained_denoisers` lists each name with what it was trained for (read from the
file's own metadata), and :func:`default_denoiser` picks the natural-photo denoiser for
a noise level: the noise-level-aware ``photo-mse`` for any sigma up to 0.5 (chosen on
validation photos over the per-sigma ``photo-sigma*``, which stay loadable by name). A name
is listed only when its file is in the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InvalidInputError

__all__ = ["PretrainedDenoiser", "default_denoiser", "pretrained_denoisers", "pretrained_path"]


@dataclass(frozen=True)
class PretrainedDenoiser:
    """A shipped denoiser: its name, file, noise level and what it was trained for.

    ``sigma_max`` is set for a noise-level-aware denoiser (one network, called with the
    sigma, for any level in ``[0, sigma_max]``); ``sigma`` is then the level its
    ``model(x)`` assumes. ``None``: trained for ``sigma`` only.
    """

    name: str
    file: str
    sigma: float
    description: str
    sigma_max: float | None = None

    def serves(self, sigma: float) -> bool:
        """Whether this denoiser was trained for noise level ``sigma``."""
        if self.sigma_max is not None:
            return 0 <= sigma <= self.sigma_max + 1e-9
        return abs(self.sigma - sigma) < 1e-9


#: In order of preference: :func:`default_denoiser` picks the first photo denoiser that
#: serves a sigma. ``photo-mse`` comes first: on the validation photos' crops Lite2 keeps
#: its clean label after it far more often than after the per-sigma ones (43% / 29% / 11%
#: at sigma 0.12 / 0.25 / 0.5, against 25% / 9% / 2%; results/photo-mse/README.md).
_SHIPPED = (
    PretrainedDenoiser(
        "photo-mse",
        "natural_photos_drunet32_mse.safetensors",
        0.25,
        "RGB natural photos; MSE only (no classifier), noise-level aware: any sigma up to "
        "0.5; the default for any vision API, and a start to fine-tune from",
        sigma_max=0.5,
    ),
    *(
        PretrainedDenoiser(
            f"photo-sigma{sigma:g}",
            f"natural_photos_dncnn_sigma{sigma:g}_stab+mse_query.safetensors",
            sigma,
            "RGB natural photos; STAB+MSE in query access, guided by EfficientNet-Lite0 "
            "and Lite1 only (never the target); for any vision API",
        )
        for sigma in (0.12, 0.25, 0.5)
    ),
    PretrainedDenoiser(
        "fashion-mnist-sigma0.25-query",
        "fashion_mnist_dncnn_sigma0.25_stab+mse_query.safetensors",
        0.25,
        "28x28 grey Fashion-MNIST; STAB+MSE in query access (surrogates LeNet, MobileNet, VGG)",
    ),
    PretrainedDenoiser(
        "fashion-mnist-sigma0.25-full",
        "fashion_mnist_dncnn_sigma0.25_stab+mse_full.safetensors",
        0.25,
        "28x28 grey Fashion-MNIST; STAB+MSE in full access through the demo's target CNN",
    ),
)


def _file(entry: PretrainedDenoiser) -> Path:
    return Path(str(resources.files("smoothapi").joinpath("data").joinpath(entry.file)))


def pretrained_denoisers() -> dict[str, PretrainedDenoiser]:
    """Name -> :class:`PretrainedDenoiser` for every denoiser shipped in this install."""
    return {entry.name: entry for entry in _SHIPPED if _file(entry).is_file()}


def pretrained_path(name: str) -> Path:
    """The file of shipped denoiser ``name``; unknown names raise listing the known ones."""
    shipped = pretrained_denoisers()
    if name not in shipped:
        raise InvalidInputError(
            f"no shipped denoiser {name!r}; known: {', '.join(sorted(shipped)) or 'none'} "
            "(or give a path to a .safetensors file)"
        )
    return _file(shipped[name])


def default_denoiser(sigma: float) -> str | None:
    """The preferred shipped natural-photo denoiser that serves ``sigma`` (``photo-mse``
    up to 0.5, else a ``photo-sigma*`` trained for it), or ``None``."""
    for entry in pretrained_denoisers().values():
        if entry.name.startswith("photo-") and entry.serves(sigma):
            return entry.name
    return None
