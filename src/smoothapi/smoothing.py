"""SmoothedClassifier: Gaussian noise, an optional denoiser, a base classifier, and counting.

The async methods (:meth:`SmoothedClassifier.acertify`, :meth:`~SmoothedClassifier.apredict`)
do the work; the sync ones run them to completion. Noisy samples go out in requests
of the adapter's size (``adapter.max_batch``; a local model takes a whole batch), with
up to ``adapter.max_in_flight`` requests outstanding; while they are in flight the next
batch is noised and denoised in a worker thread, so neither side waits on the other.
With a :class:`~smoothapi.journal.Journal` every answer is committed before it counts
and a rerun sends only what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import sys
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ._images import ImageLike, as_image_tensor
from .adapters.base import Adapter
from .adapters.remote import run_sync
from .certification import (
    ABSTAIN,
    Certification,
    Label,
    Outcome,
    Prediction,
    RadiusCertification,
    SequentialTest,
    certify_counts,
    check_alpha,
    check_count,
    check_radius,
    check_sigma,
    predict_counts,
    top_label,
)
from .errors import BudgetExceededError, InvalidInputError, ProviderError, RateLimitError
from .journal import CLEAN_SELECTION, ESTIMATION, PREDICTION, SELECTION, SEQUENTIAL, Journal

__all__ = ["ClientStats", "ImageOutcome", "RateLimits", "RetryPolicy", "SmoothedClassifier"]

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 256

# Sampling phases. Noise is keyed by (seed, image hash, occurrence, phase, batch): every
# batch of every phase of every certification draws fresh noise, and a rerun with the
# same seed draws the same noise again. Bump NOISE_SCHEME if that derivation changes.
_SELECTION, _ESTIMATION, _PREDICTION = SELECTION, ESTIMATION, PREDICTION
_SEQUENTIAL, _CLEAN_SELECTION = SEQUENTIAL, CLEAN_SELECTION
NOISE_SCHEME = 1


@dataclass(frozen=True)
class RetryPolicy:
    """Client option: how failed requests are retried.

    Only retryable errors (rate limits, 5xx, timeouts, dropped connections) are
    retried, at most ``max_attempts`` tries in all, waiting a random time up to
    ``initial_wait * 2**k`` seconds (capped at ``max_wait``) before try ``k + 2``, and at
    least the server's ``Retry-After``. Only the images that failed are sent again.
    """

    max_attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 60.0


@dataclass(frozen=True)
class RateLimits:
    """Client option: how hard the provider is pushed.

    ``None`` takes the adapter's documented default (``adapter.requests_per_second``,
    ``adapter.max_in_flight``); ``images_per_second`` is unlimited unless given.
    Requests are spaced evenly (no bursts), so a steady run draws no 429s.
    """

    requests_per_second: float | None = None
    images_per_second: float | None = None
    max_in_flight: int | None = None


@dataclass
class ClientStats:
    """What a classifier has sent so far."""

    requests: int = 0
    images: int = 0
    retries: int = 0
    rate_limited: int = 0
    errors: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class ImageOutcome:
    """One image of :meth:`SmoothedClassifier.certify_many`: its certificate, or the error
    that stopped it; ``queries`` were sent for it (answers found in the journal are free)."""

    index: int
    image_id: str | None
    certification: Certification | RadiusCertification | None
    error: ProviderError | None
    queries: int
    seconds: float
    cost: float | None = None


class _Throttle:
    """In-flight slots and evenly spaced request/image tokens, for one event loop."""

    def __init__(self, in_flight: int, rps: float | None, ips: float | None, batch: int):
        self.slots = asyncio.Semaphore(in_flight)
        self.requests = AsyncLimiter(1, 1 / rps) if rps else None
        self.images = AsyncLimiter(batch, batch / ips) if ips else None

    @contextlib.asynccontextmanager
    async def request(self, images: int) -> AsyncIterator[None]:
        async with self.slots:
            if self.requests is not None:
                await self.requests.acquire()
            if self.images is not None:
                await self.images.acquire(min(images, self.images.max_rate))
            yield


async def _all_or_nothing(*coroutines: Coroutine[Any, Any, T]) -> list[T]:
    """Run coroutines together; if one fails, cancel the others before raising."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def module_digest(module: torch.nn.Module | None) -> str | None:
    """SHA-256 of a module's class and state dict: identifies a denoiser or model."""
    if module is None:
        return None
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class _Draw:
    """One image being sampled: its pixels, key (hash of its pixels or id), occurrence."""

    x: torch.Tensor
    image: str
    occurrence: int


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
        journal: a :class:`~smoothapi.journal.Journal` (or a path for one) where every
            answer is committed before it counts; rerunning with the same seed resumes.
        retry: how failed requests are retried (:class:`RetryPolicy`).
        limits: request rate, image rate and requests in flight (:class:`RateLimits`).

    Use it as a context manager, or call :meth:`close`, to release the adapter's
    connections and the journal.
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
        journal: Journal | str | os.PathLike | None = None,
        retry: RetryPolicy = RetryPolicy(),
        limits: RateLimits = RateLimits(),
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
        self._owns_journal = journal is not None and not isinstance(journal, Journal)
        self.journal = Journal(journal) if self._owns_journal else journal
        self._occurrences: Counter[str] = Counter()
        self._run_key: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.retry = retry
        self.in_flight = check_count(
            "max_in_flight", limits.max_in_flight or max(1, adapter.max_in_flight)
        )
        self.requests_per_second = limits.requests_per_second or adapter.requests_per_second
        self.images_per_second = limits.images_per_second
        self.stats = ClientStats()
        self._throttles: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __enter__(self) -> SmoothedClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the adapter's connections made by this classifier, and an owned journal."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self.adapter.aclose())
            self._loop.close()
        if self._owns_journal and self.journal is not None:
            self.journal.close()

    @property
    def run_key(self) -> str:
        """What decides the noise and the answers, hashed: the journal's run key."""
        if self._run_key is None:
            config = self.run_config()
            self._run_key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
            if self.journal is not None:
                self.journal.start_run(self._run_key, config)
        return self._run_key

    def run_config(self) -> dict[str, Any]:
        """The settings a journal run is keyed by (no credentials: adapter identities only)."""
        return {
            "adapter": self.adapter.identity(),
            "denoiser": module_digest(self.denoiser),
            "sigma": self.sigma,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "noise_scheme": NOISE_SCHEME,
        }

    # --- Cohen et al.'s algorithms ----------------------------------------------------

    def predict(self, image: ImageLike, n: int = 1_000, alpha: float = 0.001) -> Prediction:
        """PREDICT: ``g(x)``, or ``ABSTAIN``; wrong with probability at most ``alpha``.

        Draws ``n`` noisy samples and returns the top class when a two-sided binomial
        test of the top two counts rejects a tie at level ``alpha``.
        """
        return self._run(self.apredict(image, n, alpha))

    def certify(
        self,
        image: ImageLike,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        radius: float | None = None,
        selection: str | Adapter = "samples",
        futility: bool | float = True,
        budget: int | None = None,
    ) -> Certification | RadiusCertification:
        """CERTIFY: a class and an l2 radius around ``image`` where ``g`` cannot change.

        The candidate class comes from ``n0`` samples; ``p_A`` is bounded from ``n``
        fresh samples. With probability at least ``1 - alpha`` over the noise, the
        returned class is ``g(x')`` for every ``x'`` with ``||x' - x||_2 < radius``.
        ``radius`` is at most :func:`~smoothapi.max_certifiable_radius` ``(n, alpha, sigma)``.

        With ``radius=r``, certify that one radius with as few queries as possible
        instead (a :class:`~smoothapi.certification.RadiusCertification`; ``n`` is then the
        budget of estimation samples); see :meth:`acertify`. ``budget=`` is another name
        for ``n``.
        """
        return self._run(
            self.acertify(
                image,
                n0,
                n,
                alpha,
                radius=radius,
                selection=selection,
                futility=futility,
                budget=budget,
            )
        )

    async def apredict(
        self, image: ImageLike, n: int = 1_000, alpha: float = 0.001, *, image_id: str | None = None
    ) -> Prediction:
        """Async :meth:`predict`; ``image_id`` as in :meth:`acertify`."""
        x = as_image_tensor(image)
        n, alpha = check_count("n", n), check_alpha(alpha)
        draw = self._draw(x, image_id)
        return predict_counts(await self.sample_counts(draw, _PREDICTION, n), alpha)

    async def acertify(
        self,
        image: ImageLike,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        radius: float | None = None,
        selection: str | Adapter = "samples",
        futility: bool | float = True,
        budget: int | None = None,
        image_id: str | None = None,
    ) -> Certification | RadiusCertification:
        """Async :meth:`certify`.

        ``image_id`` names the image for the noise streams and the journal (e.g. its
        dataset index); by default it is the SHA-256 of the pixels.

        **Certifying a given radius** (``radius=r``): instead of spending ``n`` samples to
        find the largest radius, test "the smoothed classifier's radius is at least ``r``"
        with the anytime-valid :class:`~smoothapi.certification.SequentialTest`, looking
        after every answer and stopping as soon as it decides. ``n`` is the budget
        (``max_n``) of estimation samples. The outcome is "certified" (false with
        probability at most ``alpha``), "not_certifiable" (the answers say ``p_A`` is below
        ``Phi(r/sigma)``; see ``futility`` in the test) or "budget_exhausted".

        ``selection`` picks the candidate class before any estimation sample is used:

        * ``"samples"``: the top class of ``n0`` noisy samples (as CERTIFY does);
        * ``"clean"``: ONE query of ``f(D(x))`` on the clean image (no noise);
        * an :class:`~smoothapi.adapters.Adapter` (a local surrogate, e.g. a
          :class:`~smoothapi.LocalModelAdapter` speaking the same labels), asked once on
          ``D(x)``; it costs no query of ``self.adapter``.

        All three are valid because the candidate is a function of data independent of
        the estimation noise (the clean image, a surrogate, or separate noise draws):
        conditionally on the candidate, the estimation samples are still i.i.d.
        Bernoulli(``p_candidate``), so the test's level-``alpha`` guarantee holds given the
        candidate, and hence overall. A candidate that is not the top class only has a
        smaller ``p``, and cannot certify more often than ``alpha`` beyond its true radius.

        Estimation samples are drawn in batches through the usual fan-out (throttle,
        retries, journal phase ``SEQUENTIAL``). Answers can complete out of order; the
        test only ever sees the prefix of sample indices answered so far, in index
        order, so its decisions do not depend on completion order. No new batch is sent
        once it stops; requests already in flight are awaited and journaled (paid for,
        so counted in ``estimation_queries``), but not fed to the test.
        """
        x = as_image_tensor(image)
        n = n if budget is None else budget  # ``budget`` names ``n``: the samples to spend
        n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
        if radius is not None:
            return await self._acertify_radius(
                x, n0, n, alpha, check_radius(radius), selection, futility, image_id
            )
        if not (isinstance(selection, str) and selection == "samples"):
            raise InvalidInputError("selection is only used with radius=...; leave it 'samples'")
        draw = self._draw(x, image_id)
        # The two sample sets are independent, so they are drawn at the same time: the
        # candidate is still chosen from the selection samples alone.
        selection, estimation = await _all_or_nothing(
            self.sample_counts(draw, _SELECTION, n0), self.sample_counts(draw, _ESTIMATION, n)
        )
        return certify_counts(selection, estimation, self.sigma, alpha)

    async def _acertify_radius(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        radius: float,
        selection: str | Adapter,
        futility: bool | float,
        image_id: str | None,
    ) -> RadiusCertification:
        test = SequentialTest(radius, self.sigma, alpha, n, futility)
        if not isinstance(selection, Adapter) and selection not in ("samples", "clean"):
            raise InvalidInputError(
                f"selection must be 'samples', 'clean' or an Adapter, got {selection!r}"
            )
        draw = self._draw(x, image_id)
        candidate, selection_queries = await self._select(draw, selection, n0)
        counts: Counter = Counter()
        evaluated = 0
        if candidate is None:  # nothing to test: no class was ever returned
            test.outcome = Outcome.NOT_CERTIFIABLE
        else:
            counts, evaluated = await self._sequential_counts(draw, candidate, test)
        certified = test.outcome is Outcome.CERTIFIED
        return RadiusCertification(
            label=candidate if certified else ABSTAIN,
            radius=radius if certified else 0.0,
            outcome=test.outcome or Outcome.BUDGET_EXHAUSTED,
            n=test.t,
            alpha=alpha,
            sigma=self.sigma,
            tested_radius=radius,
            candidate=candidate,
            counts=dict(counts),
            selection_queries=selection_queries,
            estimation_queries=evaluated,
            max_n=n,
        )

    async def _select(
        self, draw: _Draw, selection: str | Adapter, n0: int
    ) -> tuple[Label | None, int]:
        """The candidate class and the queries of ``self.adapter`` it takes."""
        if isinstance(selection, str) and selection == "samples":
            return top_label(await self.sample_counts(draw, _SELECTION, n0)), n0
        clean = self._clean(draw)
        if isinstance(selection, Adapter):
            return (await selection.atop_labels(clean))[0], 0
        known = (
            self.journal.answers(self.run_key, draw.image, draw.occurrence, _CLEAN_SELECTION)
            if self.journal is not None
            else {}
        )
        if 0 in known:
            return known[0], 1
        return (await self._ask(clean, [0], draw, _CLEAN_SELECTION))[0], 1

    def _clean(self, draw: _Draw) -> torch.Tensor:
        """``D(x)`` for the clean image, as a batch of one."""
        batch = draw.x.to(self.device).unsqueeze(0)
        if self.denoiser is not None:
            with torch.inference_mode():
                batch = self.denoiser(batch)
        return batch

    async def _sequential_counts(
        self, draw: _Draw, candidate: Label, test: SequentialTest
    ) -> tuple[Counter, int]:
        """Feed ``test`` noisy answers until it stops; returns the labels of the samples
        it used and how many estimation answers were paid for (now or in an earlier run)."""
        answered: dict[int, Label | None] = {}
        fed = 0  # the test has seen samples 0 .. fed - 1
        async for indices, labels in self._answers(
            draw, _SEQUENTIAL, test.max_n, stop=lambda: test.outcome is not None
        ):
            answered.update(zip(indices, labels, strict=True))
            start = fed
            while fed < test.max_n and fed in answered:
                fed += 1
            if fed > start and test.outcome is None:
                test.feed([answered[i] == candidate for i in range(start, fed)])
        return Counter(answered[i] for i in range(test.t)), len(answered)

    # --- datasets ---------------------------------------------------------------------

    def certify_many(
        self,
        images: Iterable[ImageLike],
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        **options: Any,
    ) -> Iterator[ImageOutcome]:
        """Certify a stream of images, yielding one :class:`ImageOutcome` each, in order.

        Options as in :meth:`acertify_many`. Use :meth:`acertify_many` from async code.
        """
        outcomes = self.acertify_many(images, n0, n, alpha, **options)
        while True:
            try:
                yield self._run(outcomes.__anext__())
            except StopAsyncIteration:
                return

    async def acertify_many(
        self,
        images: Iterable[ImageLike],
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        ids: Sequence[str] | None = None,
        max_queries: int | None = None,
        max_cost: float | None = None,
        price_per_1000: float | None = None,
        target_radius: float | None = None,
        shard: bool = True,
        progress: bool = False,
        radius: float | None = None,
        selection: str | Adapter = "samples",
    ) -> AsyncIterator[ImageOutcome]:
        """Certify images one after another, each with its requests fanned out.

        * An image whose request fails for good (a non-retryable error, or retries spent)
          gets an outcome with ``error`` set, and the run goes on to the next image.
        * ``max_queries`` and ``max_cost`` (USD, at ``price_per_1000``, by default the
          adapter's entry in :data:`smoothapi.pricing.PRICES`) cap what this run sends:
          before an image that could take it past a cap, the run stops with
          :class:`~smoothapi.errors.BudgetExceededError`; what was done is already yielded
          (and journaled).
        * ``target_radius``: refuse at once, saying why, if ``n`` samples could never
          certify it. ``progress=True`` prints the plan (queries, cost, best radius) and
          shows a bar with queries, cost, requests per second and the ETA.
        * Under ``torchrun`` (``WORLD_SIZE`` > 1) with ``shard=True`` each process takes
          every ``WORLD_SIZE``-th image, starting at its ``RANK``; outcomes keep the
          dataset index so the processes' logs merge.
        * ``ids`` name the images for the noise and the journal (default: pixel hashes).
        * ``radius`` / ``selection``: certify that radius sequentially for each image
          (see :meth:`acertify`); ``n`` is then each image's budget.
        """
        from .pricing import PRICES, plan_run

        rank = int(os.environ.get("RANK", "0")) if shard else 0
        world = int(os.environ.get("WORLD_SIZE", "1")) if shard else 1
        per_image = check_count("n0", n0) + check_count("n", n)
        total = len(images) if hasattr(images, "__len__") else None  # type: ignore[arg-type]
        plan = plan_run(
            total or 1,
            n0,
            n,
            alpha,
            self.sigma,
            provider=self.adapter.name,
            target_radius=target_radius,
        )
        if price_per_1000 is None and self.adapter.name in PRICES:
            price_per_1000 = PRICES[self.adapter.name].per_1000
        if max_cost is not None:
            if price_per_1000 is None:
                raise InvalidInputError("max_cost needs price_per_1000 for this adapter")
            by_cost = int(max_cost / price_per_1000 * 1000)
            max_queries = by_cost if max_queries is None else min(max_queries, by_cost)
        spent, run_started = 0, asyncio.get_running_loop().time()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(
                f"plan: {plan}" if total is not None else f"plan per image: {plan}", file=sys.stderr
            )
            bar = tqdm(
                total=None if total is None else len(range(rank, total, world)),
                unit="img",
                desc=f"certify {self.adapter.name}",
            )
        try:
            for index, image in enumerate(images):
                if index % world != rank:
                    continue
                if max_queries is not None and spent + per_image > max_queries:
                    raise BudgetExceededError(
                        f"stopped before image {index}: {spent} queries sent, the next image "
                        f"may need {per_image} and max_queries is {max_queries}; the results "
                        "so far were returned (and journaled, if a journal is set)"
                    )
                before, started = self.stats.images, asyncio.get_running_loop().time()
                image_id = None if ids is None else str(ids[index])
                certification, error = None, None
                try:
                    certification = await self.acertify(
                        image,
                        n0,
                        n,
                        alpha,
                        radius=radius,
                        selection=selection,
                        image_id=image_id,
                    )
                except ProviderError as exc:
                    error = exc
                queries = self.stats.images - before
                spent += queries
                seconds = asyncio.get_running_loop().time() - started
                cost = None if price_per_1000 is None else queries * price_per_1000 / 1000
                if bar is not None:
                    elapsed = asyncio.get_running_loop().time() - run_started
                    bar.update(1)
                    bar.set_postfix(
                        queries=self.stats.images,
                        cost="-"
                        if price_per_1000 is None
                        else f"${spent * price_per_1000 / 1000:.2f}",
                        qps=f"{self.stats.requests / max(elapsed, 1e-9):.1f}",
                        retries=self.stats.retries,
                    )
                yield ImageOutcome(index, image_id, certification, error, queries, seconds, cost)
        finally:
            if bar is not None:
                bar.close()

    # --- the pieces -------------------------------------------------------------------

    async def sample_counts(self, draw: _Draw, phase: int, num: int) -> Counter:
        """How often ``f(D(x + delta))`` returns each label over ``num`` noise draws.

        Answers already in the journal are counted without being asked again.
        """
        counts: Counter = Counter()
        async for _, labels in self._answers(draw, phase, num):
            counts.update(labels)
        return counts

    async def _answers(
        self,
        draw: _Draw,
        phase: int,
        num: int,
        stop: Callable[[], bool] = lambda: False,
    ) -> AsyncIterator[tuple[list[int], list[Label | None]]]:
        """Answers for samples ``0 .. num - 1`` of a phase, as ``(indices, labels)`` chunks
        in completion order: first those in the journal, then fresh ones, in requests of
        the adapter's size with at most ``2 * in_flight`` queued (the throttle bounds what
        is really outstanding). Once ``stop()`` holds no new request is made; requests
        already sent are still awaited and yielded, since they are paid for."""
        known = (
            self.journal.answers(self.run_key, draw.image, draw.occurrence, phase)
            if self.journal is not None
            else {}
        )
        if known:
            yield list(known), list(known.values())
        request_size = self.adapter.max_batch or self.batch_size
        queue = self.in_flight if self.in_flight == 1 else 2 * self.in_flight
        pending: dict[asyncio.Future, list[int]] = {}
        try:
            for index, start in enumerate(range(0, num, self.batch_size)):
                if stop():
                    break
                indices = range(start, min(start + self.batch_size, num))
                todo = [i for i in indices if i not in known]
                if not todo:
                    continue
                batch = await self._noisy_denoised(draw, phase, index, len(indices))
                for first in range(0, len(todo), request_size):
                    chunk = todo[first : first + request_size]
                    images = batch[[i - start for i in chunk]]
                    pending[asyncio.ensure_future(self._ask(images, chunk, draw, phase))] = chunk
                    while len(pending) >= queue:
                        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                        for task in done:
                            yield pending.pop(task), task.result()
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield pending.pop(task), task.result()
        finally:  # an error (or the caller leaving): nothing may keep sending
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _ask(
        self, images: torch.Tensor, indices: list[int], draw: _Draw, phase: int
    ) -> list[Label | None]:
        """One request, retried per :attr:`retry` for the images that failed; every answer
        is committed to the journal before it counts."""
        answers: dict[int, Label | None] = {}
        todo = list(range(len(indices)))
        throttle = self._throttle()
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
            stop=stop_after_attempt(self.retry.max_attempts),
            wait=self._retry_wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with throttle.request(len(todo)):
                    self.stats.requests += 1
                    self.stats.images += len(todo)
                    outcomes = await self.adapter.ascored_or_errors(images[todo])
                done = [
                    (i, o)
                    for i, o in zip(todo, outcomes, strict=True)
                    if not isinstance(o, ProviderError)
                ]
                if self.journal is not None and done:
                    self.journal.record(
                        self.run_key,
                        draw.image,
                        draw.occurrence,
                        phase,
                        [(indices[i], label, score) for i, (label, score) in done],
                    )
                answers.update((i, label) for i, (label, _) in done)
                failed = [
                    (i, o)
                    for i, o in zip(todo, outcomes, strict=True)
                    if isinstance(o, ProviderError)
                ]
                if failed:
                    todo = [i for i, _ in failed]
                    errors = [error for _, error in failed]
                    raise next((e for e in errors if not e.retryable), errors[0])
        return [answers[i] for i in range(len(indices))]

    def _retry_wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        ceiling = min(
            self.retry.max_wait, self.retry.initial_wait * 2 ** (state.attempt_number - 1)
        )
        wait = random.uniform(0, ceiling)  # full jitter: retries from many tasks spread out
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait

    def _count_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self.stats.retries += 1
        self.stats.rate_limited += isinstance(error, RateLimitError)
        self.stats.errors[type(error).__name__] += 1

    def _throttle(self) -> _Throttle:
        loop = asyncio.get_running_loop()
        if loop not in self._throttles:
            self._throttles[loop] = _Throttle(
                self.in_flight,
                self.requests_per_second,
                self.images_per_second,
                self.adapter.max_batch or self.batch_size,
            )
        return self._throttles[loop]

    async def _noisy_denoised(self, draw: _Draw, phase: int, index: int, size: int) -> torch.Tensor:
        """Batch ``index`` of a phase; in a worker thread when requests are in flight."""
        if self.in_flight > 1:
            return await asyncio.to_thread(self.noisy_batch, draw, phase, index, size)
        return self.noisy_batch(draw, phase, index, size)

    def noisy_batch(self, draw: _Draw, phase: int, index: int, size: int) -> torch.Tensor:
        """``D(x + delta)`` for ``size`` fresh noise draws: batch ``index`` of ``phase``.

        The noise comes from a generator seeded by ``(seed, image hash, occurrence,
        phase, index)`` through numpy's ``SeedSequence``, so no noise is shared between
        samples, batches, phases or certifications, and the same seed replays it.
        """
        x = draw.x.to(self.device)
        words = [int(draw.image[i : i + 8], 16) for i in (0, 8)]
        seed_seq = np.random.SeedSequence(
            self.seed, spawn_key=(*words, draw.occurrence, phase, index)
        )
        state = seed_seq.generate_state(2, np.uint32)
        generator = torch.Generator(self.device).manual_seed((int(state[0]) << 31) ^ int(state[1]))
        noise = torch.randn((size, *x.shape), generator=generator, device=self.device)
        batch = noise.mul_(self.sigma).add_(x)
        if self.denoiser is not None:
            with torch.inference_mode():
                batch = self.denoiser(batch)
        return batch

    def _draw(self, x: torch.Tensor, image_id: str | None) -> _Draw:
        if image_id is None:
            digest = hashlib.sha256(str(tuple(x.shape)).encode())
            digest.update(x.contiguous().numpy().tobytes())
        else:
            digest = hashlib.sha256(f"id:{image_id}".encode())
        image = digest.hexdigest()
        occurrence = self._occurrences[image]
        self._occurrences[image] += 1
        return _Draw(x, image, occurrence)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine from sync code on this classifier's own event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
                weakref.finalize(self, self._loop.close)  # if close() is never called
            return self._loop.run_until_complete(coroutine)

        async def scoped() -> T:  # inside a running loop (a notebook): a loop of its own
            try:
                return await coroutine
            finally:
                await self.adapter.aclose()

        return run_sync(scoped())
