"""SmoothedClassifier: Gaussian noise, an optional denoiser, a base classifier, and counting."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch

from ._images import ImageLike, as_image_tensor
from .adapters.base import Adapter
from .certification import (
    Certification,
    Label,
    Prediction,
    certify_counts,
    check_alpha,
    check_count,
    check_sigma,
    predict_counts,
)
from .errors import InvalidInputError

__all__ = ["SmoothedClassifier"]

DEFAULT_BATCH_SIZE = 256

# Noise streams are keyed by (call, phase, batch) so that every batch of every call
# draws fresh noise, and a run with the same seed draws the same noise again.
_SELECTION, _ESTIMATION, _PREDICTION = 0, 1, 2


class SmoothedClassifier:
    """The smoothed classifier ``g(x) = argmax_c P[f(D(x + delta)) = c]``, delta ~ N(0, sigma^2 I).

    ``f`` is the base classifier behind ``adapter`` and ``D`` the optional ``denoiser``
    (a ``torch.nn.Module`` mapping ``(B, C, H, W)`` to the same shape). The noise is
    added to the image as given, scaled to [0, 1], so ``sigma`` and every certified
    radius are l2 distances in that space; anything the model needs afterwards
    (resizing, normalisation, encoding) belongs to ``f``.

    Args:
        adapter: the base classifier.
        sigma: the noise level, > 0.
        denoiser: run on ``device`` in inference mode before ``adapter``.
        batch_size: noisy samples per batch sent through ``D`` and ``f``.
        device: where noise is drawn and the denoiser runs (default: CUDA if available).
        seed: makes runs reproducible; by default a fresh seed from OS entropy,
            kept in ``self.seed`` so a run can be repeated.
    """

    def __init__(
        self,
        adapter: Adapter,
        sigma: float,
        denoiser: torch.nn.Module | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(adapter, Adapter):
            raise InvalidInputError(
                f"adapter must be a smoothapi Adapter, got {type(adapter).__name__}; "
                "wrap a torch model in LocalModelAdapter"
            )
        self.adapter = adapter
        self.sigma = check_sigma(sigma)
        self.batch_size = check_count("batch_size", batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.denoiser = None if denoiser is None else denoiser.to(self.device).eval()
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = secrets.randbits(63) if seed is None else seed
        self._calls = 0

    # --- Cohen et al.'s algorithms ----------------------------------------------------

    def predict(self, image: ImageLike, n: int = 1_000, alpha: float = 0.001) -> Prediction:
        """PREDICT: ``g(x)``, or ``ABSTAIN``; wrong with probability at most ``alpha``.

        Draws ``n`` noisy samples and returns the top class when a two-sided binomial
        test of the top two counts rejects a tie at level ``alpha``.
        """
        x = as_image_tensor(image)
        n, alpha = check_count("n", n), check_alpha(alpha)
        call = self._next_call()
        return predict_counts(self.sample_counts(x, n, key=(call, _PREDICTION)), alpha)

    def certify(
        self, image: ImageLike, n0: int = 100, n: int = 10_000, alpha: float = 0.001
    ) -> Certification:
        """CERTIFY: a class and an l2 radius around ``image`` where ``g`` cannot change.

        The candidate class comes from ``n0`` samples; ``p_A`` is bounded from ``n``
        fresh samples. With probability at least ``1 - alpha`` over the noise, the
        returned class is ``g(x')`` for every ``x'`` with ``||x' - x||_2 < radius``.
        ``radius`` is at most :func:`~smoothapi.max_certifiable_radius` ``(n, alpha, sigma)``.
        """
        x = as_image_tensor(image)
        n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
        call = self._next_call()
        selection = self.sample_counts(x, n0, key=(call, _SELECTION))
        estimation = self.sample_counts(x, n, key=(call, _ESTIMATION))
        return certify_counts(selection, estimation, self.sigma, alpha)

    # --- the pieces -------------------------------------------------------------------

    def base_classify(self, images: torch.Tensor) -> list[Label | None]:
        """The base classifier ``f(D(images))`` on a ``(B, C, H, W)`` batch."""
        if self.denoiser is not None:
            with torch.inference_mode():
                images = self.denoiser(images.to(self.device))
        return self.adapter.top_labels(images)

    def noisy_batches(
        self, x: torch.Tensor, num: int, key: tuple[int, ...]
    ) -> Iterator[torch.Tensor]:
        """``num`` samples of ``x + delta`` in batches of at most ``batch_size``.

        Each batch draws its own noise from a generator seeded by ``(seed, *key, batch)``
        through numpy's ``SeedSequence``, so no noise is shared between samples,
        batches or calls, and the same seed replays the same noise.
        """
        x = x.to(self.device)
        for index, start in enumerate(range(0, num, self.batch_size)):
            size = min(self.batch_size, num - start)
            generator = torch.Generator(self.device).manual_seed(self._stream_seed(*key, index))
            noise = torch.randn((size, *x.shape), generator=generator, device=self.device)
            yield noise.mul_(self.sigma).add_(x)

    def sample_counts(self, x: torch.Tensor, num: int, key: tuple[int, ...]) -> Counter:
        """How often ``f(D(x + delta))`` returns each label over ``num`` noise draws."""
        counts: Counter = Counter()
        for batch in self.noisy_batches(x, num, key):
            counts.update(self.base_classify(batch))
        return counts

    def _next_call(self) -> int:
        self._calls += 1
        return self._calls

    def _stream_seed(self, *key: int) -> int:
        state = np.random.SeedSequence(self.seed, spawn_key=key).generate_state(2, np.uint32)
        return (int(state[0]) << 31) ^ int(state[1])
