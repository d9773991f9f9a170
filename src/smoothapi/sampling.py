"""Which noise, reproducibly: image keys, noisy and clean batches, the noise scheme (torch only).

Noise is keyed by ``(seed, image key, phase, batch index)``: the image key is the
SHA-256 of the pixels (or of a caller's id) and which occurrence of that image this
is, so every batch of every phase of every certification draws fresh noise, and a
rerun with the same seed draws the same noise again. Bump :data:`NOISE_SCHEME` if that
derivation ever changes: journals keyed by the old scheme then start a new run.
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidInputError

__all__ = ["NOISE_SCHEME", "ImageKey", "Phase", "Sampler", "image_digest"]

NOISE_SCHEME = 1


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
    """Names one certification of one image: ``digest`` is the SHA-256 of its pixels (or of
    the caller's id for it), ``occurrence`` counts earlier certifications of that image."""

    digest: str
    occurrence: int


def image_digest(x: torch.Tensor, image_id: str | None = None) -> str:
    """SHA-256 of an image's shape and pixels, or of ``image_id`` when one is given."""
    if image_id is None:
        digest = hashlib.sha256(str(tuple(x.shape)).encode())
        digest.update(x.contiguous().numpy().tobytes())
    else:
        digest = hashlib.sha256(f"id:{image_id}".encode())
    return digest.hexdigest()


class Sampler:
    """Draws ``D(x + delta)`` batches, delta ~ N(0, sigma^2 I), reproducibly from ``seed``.

    ``denoiser`` (optional) runs on ``device`` in inference mode; ``batch_size`` is the
    number of samples per batch, and so part of what decides the noise.
    """

    def __init__(
        self,
        sigma: float,
        seed: int,
        device: torch.device,
        denoiser: torch.nn.Module | None = None,
        batch_size: int = 256,
    ) -> None:
        self.sigma, self.seed, self.device = sigma, seed, device
        self.denoiser, self.batch_size = denoiser, batch_size
        self._occurrences: Counter[str] = Counter()

    def key(self, x: torch.Tensor, image_id: str | None = None) -> ImageKey:
        """The key of the next certification of ``x``: a new occurrence each call."""
        digest = image_digest(x, image_id)
        occurrence = self._occurrences[digest]
        self._occurrences[digest] += 1
        return ImageKey(digest, occurrence)

    def noisy_batch(
        self, x: torch.Tensor, key: ImageKey, phase: Phase, index: int, size: int
    ) -> torch.Tensor:
        """``D(x + delta)`` for ``size`` fresh noise draws: batch ``index`` of ``phase``.

        The noise comes from a generator seeded by ``(seed, image digest, occurrence,
        phase, index)`` through numpy's ``SeedSequence``, so no noise is shared between
        samples, batches, phases or certifications, and the same seed replays it.
        """
        x = x.to(self.device)
        words = [int(key.digest[i : i + 8], 16) for i in (0, 8)]
        seed_seq = np.random.SeedSequence(
            self.seed, spawn_key=(*words, key.occurrence, int(phase), index)
        )
        state = seed_seq.generate_state(2, np.uint32)
        generator = torch.Generator(self.device).manual_seed((int(state[0]) << 31) ^ int(state[1]))
        noise = torch.randn((size, *x.shape), generator=generator, device=self.device)
        noisy = _finite(noise.mul_(self.sigma).add_(x), f"the noisy batch at sigma={self.sigma}")
        return self._denoise(noisy)

    def clean_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x)`` for the clean image, as a batch of one."""
        return self._denoise(x.to(self.device).unsqueeze(0))

    def _denoise(self, batch: torch.Tensor) -> torch.Tensor:
        """``D(batch)``; a denoiser that cannot take the batch, or returns NaN or infinite
        values (damaged weights), is an :class:`~smoothapi.errors.InvalidInputError`."""
        if self.denoiser is None:
            return batch
        try:
            with torch.inference_mode():
                denoised = self.denoiser(batch)
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
