"""Each query sent once, within limits, committed before it counts.

:class:`Dispatcher` takes a batch producer (``(batch index, size) -> images``) and yields
the base classifier's answers: in requests of the adapter's size, with at most
``max_in_flight`` outstanding, paced by :class:`RateLimits`, retried per
:class:`RetryPolicy` for just the images that failed. While requests are in flight the
next batch is produced in a worker thread, so neither side waits on the other. Every
answer goes to an :class:`AnswerStore` (a journal's, or none) before it counts, and
answers already there are yielded without being asked again. :class:`SyncBridge` runs
all of it from sync code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import weakref
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from .certification import Label, check_count
from .errors import ProviderError, RateLimitError

if TYPE_CHECKING:
    from .adapters.base import Adapter

__all__ = [
    "UNRECORDED",
    "AnswerStore",
    "BatchProducer",
    "ClientStats",
    "Dispatcher",
    "RateLimits",
    "RetryPolicy",
    "SyncBridge",
    "all_or_nothing",
    "run_sync",
]

T = TypeVar("T")

#: Makes batch ``index`` (of ``size`` samples) of one stream: ``produce(index, size)``.
BatchProducer = Callable[[int, int], torch.Tensor]


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


class AnswerStore(Protocol):
    """Where the answers of one stream of samples are kept (e.g. a journal's stream)."""

    def answers(self) -> dict[int, Label | None]:
        """Sample index -> the answer already paid for."""

    def record(self, answers: Iterable[tuple[int, Label | None, float | None]]) -> None:
        """Commit ``(sample index, label, score or None)`` answers before they count."""


class _Unrecorded:
    """The store of a run without a journal: knows nothing, keeps nothing."""

    def answers(self) -> dict[int, Label | None]:
        return {}

    def record(self, answers: Iterable[tuple[int, Label | None, float | None]]) -> None:
        pass


UNRECORDED: AnswerStore = _Unrecorded()


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


async def all_or_nothing(*coroutines: Coroutine[Any, Any, T]) -> list[T]:
    """Run coroutines together; if one fails, cancel the others before raising."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _never() -> bool:
    return False


class Dispatcher:
    """Sends a base classifier's queries: fan-out, throttle, retries, the answer store.

    Args:
        adapter: the base classifier.
        batch_size: samples per produced batch.
        retry: how failed requests are retried.
        limits: request rate, image rate and requests in flight.
    """

    def __init__(
        self,
        adapter: Adapter,
        batch_size: int,
        retry: RetryPolicy = RetryPolicy(),
        limits: RateLimits = RateLimits(),
    ) -> None:
        self.adapter, self.batch_size, self.retry = adapter, batch_size, retry
        self.in_flight = check_count(
            "max_in_flight", limits.max_in_flight or max(1, adapter.max_in_flight)
        )
        self.requests_per_second = limits.requests_per_second or adapter.requests_per_second
        self.images_per_second = limits.images_per_second
        self.request_size = adapter.max_batch or batch_size
        self.stats = ClientStats()
        self._throttles: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def counts(
        self, produce: BatchProducer, num: int, store: AnswerStore = UNRECORDED
    ) -> Counter:
        """How often each label comes back over samples ``0 .. num - 1``."""
        counts: Counter = Counter()
        async for _, labels in self.answers(produce, num, store):
            counts.update(labels)
        return counts

    async def answers(
        self,
        produce: BatchProducer,
        num: int,
        store: AnswerStore = UNRECORDED,
        stop: Callable[[], bool] = _never,
        wanted: Callable[[], int] | None = None,
    ) -> AsyncIterator[tuple[list[int], list[Label | None]]]:
        """Answers for samples ``0 .. num - 1`` as ``(indices, labels)`` chunks in completion
        order: first those in ``store`` (only indices below ``num``: a call uses exactly the
        samples it asked for), then fresh ones, in requests of the adapter's size.

        ``stop()`` is checked before every request: once it holds no new request is made,
        and requests already sent are still awaited and yielded, since they are paid for.
        ``wanted()``, if given, is how far the caller surely reads (a sequential test: the
        samples it will use whatever they say); no sample at or past it is asked for until
        it moves, so nothing is paid for that the caller may not use. With a ``stop`` at
        most ``in_flight`` requests are outstanding; without, up to ``2 * in_flight`` are
        queued (the throttle bounds what is really outstanding)."""
        known = {i: label for i, label in store.answers().items() if i < num}
        if known:
            yield list(known), list(known.values())
        limit = (lambda: num) if wanted is None else wanted
        queue = self.in_flight if self.in_flight == 1 or stop is not _never else 2 * self.in_flight
        pending: dict[asyncio.Future, list[int]] = {}
        try:
            for index, start in enumerate(range(0, num, self.batch_size)):
                todo = [
                    i for i in range(start, min(start + self.batch_size, num)) if i not in known
                ]
                if stop() or not todo:
                    continue
                batch = await self._produce(produce, index, min(self.batch_size, num - start))
                while todo:
                    while pending and (len(pending) >= queue or stop() or todo[0] >= limit()):
                        for task in await _first_done(pending):
                            yield pending.pop(task), task.result()
                    if stop():
                        break
                    chunk = [i for i in todo[: self.request_size] if i < limit()] or todo[:1]
                    todo = todo[len(chunk) :]
                    images = batch[[i - start for i in chunk]]
                    pending[asyncio.ensure_future(self.ask(images, chunk, store))] = chunk
            while pending:
                for task in await _first_done(pending):
                    yield pending.pop(task), task.result()
        finally:  # an error (or the caller leaving): nothing may keep sending
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def ask(
        self, images: torch.Tensor, indices: list[int], store: AnswerStore = UNRECORDED
    ) -> list[Label | None]:
        """One request for samples ``indices``, retried per :attr:`retry` for the images that
        failed; every answer is committed to ``store`` before it counts."""
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
                done = [(i, o) for i, o in zip(todo, outcomes, strict=True)
                        if not isinstance(o, ProviderError)]  # fmt: skip
                if done:
                    store.record([(indices[i], label, score) for i, (label, score) in done])
                answers.update((i, label) for i, (label, _) in done)
                failed = [(i, o) for i, o in zip(todo, outcomes, strict=True)
                          if isinstance(o, ProviderError)]  # fmt: skip
                if failed:
                    todo = [i for i, _ in failed]
                    errors = [error for _, error in failed]
                    raise next((e for e in errors if not e.retryable), errors[0])
        return [answers[i] for i in range(len(indices))]

    async def _produce(self, produce: BatchProducer, index: int, size: int) -> torch.Tensor:
        """Batch ``index``; in a worker thread when requests may be in flight meanwhile."""
        if self.in_flight > 1:
            return await asyncio.to_thread(produce, index, size)
        return produce(index, size)

    def _retry_wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        ceiling = min(
            self.retry.max_wait, self.retry.initial_wait * 2 ** (state.attempt_number - 1)
        )
        wait = random.uniform(0, ceiling)  # full jitter: retries from many tasks spread out
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, retry_after)
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
                self.in_flight, self.requests_per_second, self.images_per_second, self.request_size
            )
        return self._throttles[loop]


async def _first_done(pending: dict[asyncio.Future, list[int]]) -> set[asyncio.Future]:
    """Wait until at least one pending request has finished; the finished ones."""
    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    return done


# --- sync callers ----------------------------------------------------------------------


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop
    (a notebook): then it runs on a fresh loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class SyncBridge:
    """Runs an adapter's coroutines from sync code on an event loop of its own, kept
    between calls (so its connections are reused) and closed by :meth:`close`."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` to completion; inside a running loop (a notebook) it runs on a
        fresh loop in a worker thread, and the adapter's clients for it are closed after."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self.loop is None or self.loop.is_closed():
                self.loop = asyncio.new_event_loop()
                weakref.finalize(self, self.loop.close)  # if close() is never called
            return self.loop.run_until_complete(coroutine)

        async def scoped() -> T:
            try:
                return await coroutine
            finally:
                await self.adapter.aclose()

        return run_sync(scoped())

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator's items, one :meth:`run` each."""
        while True:
            try:
                yield self.run(items.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        """Close the adapter's connections made on this bridge's loop, then the loop."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.run_until_complete(self.adapter.aclose())
            self.loop.close()
