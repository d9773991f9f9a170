"""Which noise, reproducibly: image keys, noisy and clean batches, the noise scheme (torch only).

Noise is keyed by ``(seed, image key, phase, batch index)``. The image key names one
certification of one image: the SHA-256 of its pixels (or of a caller's id), the
**attempt** (a hash of the call's settings: the method, ``n0``, ``n``, ``alpha``, the
radius...), and which occurrence of that image and attempt this is. So every batch of every
phase of every certification draws fresh noise; a call with other settings (a larger ``n``,
say) draws a stream of its own instead of extending an earlier one, with or without a
journal; and a rerun of the same call with the same seed draws the same noise again.
Sample ``i`` is sample ``i % batch_size`` of batch ``i // batch_size`` whatever size the
requests carrying it have. Bump :data:`NOISE_SCHEME` if that derivation ever changes:
journals keyed by the old scheme then start a new run.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._checkpoint import as_module_input
from .denoisers.noise_level import denoise
from .errors import InvalidInputError

__all__ = ["NOISE_SCHEME", "ImageKey", "Phase", "Sampler", "attempt_digest", "image_digest"]

NOISE_SCHEME = 2
"""2: the attempt (the call's settings) is part of the noise key (1: it was not, so a rerun
with a larger ``n`` extended the same stream)."""


class Phase(enum.IntEnum):
    """What a stream of samples is for; part of the noise key and of the journal's key."""

    SELECTION = 0
    """CERTIFY's ``n0`` samples that choose the candidate class."""
    ESTIMATION = 1
    """CERTIFY's ``n`` separate samples that bound ``p_A``."""
    PREDICTION = 2
    """PREDICT's ``n`` samples."""
    SEQUENTIAL = 3
    """The estimation samples of the sequential test of "R >= r"."""
    CLEAN_SELECTION = 4
    """The single clean-image query of ``selection="clean"`` (sample index 0)."""


@dataclass(frozen=True)
class ImageKey:
    """Names one certification of one image.

    ``digest`` is the SHA-256 of its pixels (or of the caller's id for it) and names the
    noise; ``attempt`` is :func:`attempt_digest` of the call's settings; ``occurrence``
    counts earlier calls with that image and attempt; ``content`` is the SHA-256 of the
    pixels themselves, which a journal checks an id against.
    """

    digest: str
    occurrence: int
    attempt: str = "0" * 16
    content: str = ""


def image_digest(x: torch.Tensor, image_id: str | None = None) -> str:
    """SHA-256 of an image's shape and pixels, or of ``image_id`` when one is given."""
    if image_id is None:
        digest = hashlib.sha256(str(tuple(x.shape)).encode())
        digest.update(x.contiguous().numpy().tobytes())
    else:
        digest = hashlib.sha256(f"id:{image_id}".encode())
    return digest.hexdigest()


def attempt_digest(settings: Mapping[str, Any]) -> str:
    """64 bits of SHA-256 of a call's settings (JSON, sorted keys), as 16 hex digits."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Sampler:
    """Draws ``D(x + delta)`` batches, delta ~ N(0, sigma^2 I), reproducibly from ``seed``.

    ``denoiser`` (optional) runs on ``device`` in inference mode (with ``denoise_channels``,
    only on images of that many channels: the others pass as they are); ``batch_size`` is
    the number of samples per batch, and so part of what decides the noise.
    """

    def __init__(
        self,
        sigma: float,
        seed: int,
        device: torch.device,
        denoiser: torch.nn.Module | None = None,
        batch_size: int = 256,
        denoise_channels: int | None = None,
    ) -> None:
        self.sigma, self.seed, self.device = sigma, seed, device
        self.denoiser, self.batch_size = denoiser, batch_size
        self.denoise_channels = denoise_channels
        self._occurrences: Counter[tuple[str, str]] = Counter()

    def key(
        self,
        x: torch.Tensor,
        image_id: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> ImageKey:
        """The key of the next call with ``x`` and ``settings``: a new occurrence each call."""
        content = image_digest(x.cpu())
        digest = content if image_id is None else image_digest(x, image_id)
        attempt = attempt_digest(settings or {})
        occurrence = self._occurrences[digest, attempt]
        self._occurrences[digest, attempt] += 1
        return ImageKey(digest, occurrence, attempt, content)

    def noisy_batch(
        self, x: torch.Tensor, key: ImageKey, phase: Phase, index: int, size: int
    ) -> torch.Tensor:
        """``D(x + delta)`` for ``size`` fresh noise draws: batch ``index`` of ``phase``.

        The noise comes from a generator seeded by ``(seed, image digest, attempt,
        occurrence, phase, index)`` through numpy's ``SeedSequence``, so no noise is shared
        between samples, batches, phases or certifications, and the same seed replays it.
        """
        x = x.to(self.device)
        words = [int(key.digest[i : i + 8], 16) for i in (0, 8)]
        words += [int(key.attempt[i : i + 8], 16) for i in (0, 8)]
        seed_seq = np.random.SeedSequence(
            self.seed, spawn_key=(*words, key.occurrence, int(phase), index)
        )
        state = seed_seq.generate_state(2, np.uint32)
        generator = torch.Generator(self.device).manual_seed((int(state[0]) << 31) ^ int(state[1]))
        noise = torch.randn((size, *x.shape), generator=generator, device=self.device)
        noisy = _finite(noise.mul_(self.sigma).add_(x), f"the noisy batch at sigma={self.sigma}")
        return self._denoise(noisy, self.sigma)

    def clean_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x)`` for the clean image, as a batch of one (a noise-level-aware denoiser is
        told the noise level is 0)."""
        return self._denoise(x.to(self.device).unsqueeze(0), 0.0)

    def _denoise(self, batch: torch.Tensor, sigma: float) -> torch.Tensor:
        """``D(batch)``, run in the denoiser's own dtype (``denoiser.to(torch.bfloat16)`` runs
        in bfloat16, several times faster on CPUs with bfloat16 instructions) and returned
        in the batch's; a denoiser that cannot take the batch, or returns NaN or infinite
        values (damaged weights), is an :class:`~smoothapi.errors.InvalidInputError`. A
        noise-level-aware denoiser (:mod:`smoothapi.denoisers.noise_level`) gets ``sigma``."""
        if self.denoiser is None:
            return batch
        if self.denoise_channels is not None and batch.shape[1] != self.denoise_channels:
            return batch
        try:
            with torch.inference_mode():  # in the denoiser's dtype; the result in the batch's
                inputs = as_module_input(self.denoiser, batch)
                denoised = denoise(self.denoiser, inputs, sigma).to(batch.dtype)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # a shape or dtype the denoiser cannot take
            shape = "x".join(map(str, batch.shape[1:]))
            raise InvalidInputError(
                f"the denoiser cannot take {shape} images: {_first_line(exc)}"
            ) from exc
        return _finite(denoised, "the denoiser's output")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _finite(batch: torch.Tensor, what: str) -> torch.Tensor:
    """``batch``, if every value is finite: NaN or infinity would certify garbage."""
    if not bool(torch.isfinite(batch).all()):
        raise InvalidInputError(f"{what} has NaN or infinite values; it was not sent")
    return batch
