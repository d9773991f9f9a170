"""The one interface every base classifier implements, local model or vision API."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..certification import Label

__all__ = ["Adapter", "Answer"]


class Answer(NamedTuple):
    """One image's answer as the client keeps it.

    ``label`` is the adapter's top label (renamed by its ``label_map``), ``score`` that
    label's score (``None`` if the adapter gives none), ``ranked`` the whole answer as
    ``((label, score), ...)``, highest first, as the provider returned it (``None`` for an
    adapter that answers with a top label only): what a decision reads.
    """

    label: Label | None
    score: float | None = None
    ranked: tuple[tuple[Label, float], ...] | None = None


class Adapter(abc.ABC):
    """A base classifier ``f``: images in the [0, 1] pixel space -> one label (or ``None``) each.

    Images arrive as float tensors ``(B, C, H, W)`` in the pixel space where noise was
    added, so after noise (and denoising) values may lie outside [0, 1]. Whatever
    the classifier needs next (clipping, resizing, normalisation, encoding) happens
    inside the adapter and so is part of ``f``: the certificate stays valid.

    Subclasses implement :meth:`top_labels` and :meth:`ranked_labels`; the single
    and async forms derive from them.
    """

    #: A short name for logs and journals.
    name: str = "adapter"
    #: Most images one request may carry; ``None``: any batch (a local model).
    max_batch: int | None = None
    #: Requests the smoothing client may have outstanding at once (its default).
    max_in_flight: int = 1
    #: The provider's documented request rate, the smoothing client's default limit.
    requests_per_second: float | None = None

    @abc.abstractmethod
    def top_labels(self, images: torch.Tensor) -> list[Label | None]:
        """The top label of each image in a ``(B, C, H, W)`` batch; ``None`` for "no label"."""

    @abc.abstractmethod
    def ranked_labels(self, image: torch.Tensor) -> Sequence[tuple[Label, float]]:
        """All labels of one ``(C, H, W)`` image with their scores, highest score first."""

    def top_label(self, image: torch.Tensor) -> Label | None:
        """The top label of one ``(C, H, W)`` image."""
        return self.top_labels(image.unsqueeze(0))[0]

    async def atop_labels(self, images: torch.Tensor) -> list[Label | None]:
        """Async :meth:`top_labels`. The default runs the sync form in a worker thread;
        network adapters override it with a native async call."""
        return await asyncio.to_thread(self.top_labels, images)

    #: Whether :meth:`aanswers_or_errors` gives ranked answers (needed by decisions).
    ranks: bool = False

    async def aanswers_or_errors(self, images: torch.Tensor) -> list:
        """One :class:`Answer` per image, for the client and its journal.

        An adapter that can fail single images of a batch puts the
        :class:`~smoothapi.errors.ProviderError` in that image's place (so the client
        retries just those). The default fails or succeeds as a whole, with top labels
        only (no scores, no ranked answer).
        """
        return [Answer(label) for label in await self.atop_labels(images)]

    def identity(self) -> dict:
        """What decides this classifier's answers, without secrets: keys journal runs."""
        return {"adapter": self.name, "class": type(self).__qualname__}

    async def aclose(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release connections made for the running event loop (nothing by default)."""
