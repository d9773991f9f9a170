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
import datetime
import random
import signal
import threading
import weakref
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
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
from .errors import (
    Interrupted,
    InvalidInputError,
    ProviderError,
    RateLimitError,
    RetryAfterTooLongError,
    UsageError,
)

if TYPE_CHECKING:
    from .adapters.base import Adapter, Answer
    from .decisions import Decision

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
    "interruptible",
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
    least the server's ``Retry-After``. Only the images that failed are sent again. A
    ``Retry-After`` longer than ``max_wait`` (a day, ``inf``, a date next month) is not
    waited for: the request fails at once with a
    :class:`~smoothapi.errors.RetryAfterTooLongError` that is not retried and says when the
    provider allows the next try (``resume_at``).
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
    """What a classifier has sent so far.

    ``images`` counts every image sent, retries included (what a query cap limits);
    ``answered`` the images that came back with an answer that was kept (committed to the
    journal, with one); ``possibly_billed`` every other image of a request that left: still
    in flight, abandoned unanswered (a timeout, Ctrl-C, a failure elsewhere), or answered
    with an answer that could not be kept (the journal's disk full); only an error that
    says the provider did not take the image (a 429, a 5xx, a refused connection) takes it
    off. The provider may charge for them although no answer was used. :attr:`billable` is
    what cost figures count: answered plus possibly billed.
    """

    requests: int = 0
    images: int = 0
    answered: int = 0
    possibly_billed: int = 0
    retries: int = 0
    rate_limited: int = 0
    errors: Counter = field(default_factory=Counter)

    @property
    def billable(self) -> int:
        return self.answered + self.possibly_billed


class AnswerStore(Protocol):
    """Where the answers of one stream of samples are kept (e.g. a journal's stream)."""

    def answers(self) -> dict[int, Label | None]:
        """Sample index -> the answer already paid for."""

    def record(self, answers: Iterable[tuple[int, Label | None, float | None, Any]]) -> None:
        """Commit ``(sample index, label, score or None, ranked answer or None)`` answers
        before they count (the label is the decided one)."""


class _Unrecorded:
    """The store of a run without a journal: knows nothing, keeps nothing."""

    def answers(self) -> dict[int, Label | None]:
        return {}

    def record(self, answers: Iterable[tuple[int, Label | None, float | None, Any]]) -> None:
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
        decision: what each answer counts as (:mod:`smoothapi.decisions`; it needs an
            adapter that ranks); ``None``: the adapter's top label.
    """

    def __init__(
        self,
        adapter: Adapter,
        batch_size: int,
        retry: RetryPolicy = RetryPolicy(),
        limits: RateLimits = RateLimits(),
        decision: Decision | None = None,
    ) -> None:
        if decision is not None and not adapter.ranks:
            raise InvalidInputError(
                f"{type(adapter).__name__} answers with a top label only; a decision reads "
                "ranked answers (vision APIs and LocalModelAdapter give them)"
            )
        self.adapter, self.batch_size, self.retry = adapter, batch_size, retry
        self.decision = decision
        self.in_flight = check_count(
            "max_in_flight", limits.max_in_flight or max(1, adapter.max_in_flight)
        )
        self.requests_per_second = limits.requests_per_second or adapter.requests_per_second
        self.images_per_second = limits.images_per_second
        self.request_size = adapter.max_batch or batch_size
        self.stats = ClientStats()
        self._throttles: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()
        self._calls: list[tuple[asyncio.Future, asyncio.AbstractEventLoop]] = []

    @contextlib.contextmanager
    def one_loop(self) -> Iterator[None]:
        """Admit a call: any number at once on one event loop, none from a second loop while
        the first is busy (the rate limits hold per loop), else :class:`UsageError`.

        A call left behind on a loop that no longer runs (Ctrl-C out of that loop's
        ``run_until_complete``, as in IPython, where each cell runs the same loop again) is
        cancelled instead: it sends nothing more when its loop runs again, and does not
        block this call."""
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None  # called from a coroutine
        with self._guard:
            for other, other_loop in list(self._calls):
                if other_loop is loop:
                    continue
                if other_loop.is_running():
                    raise UsageError(
                        "this classifier is already sending from another event loop (another "
                        "thread); await its async methods on one loop, or call the sync ones, "
                        "which take turns"
                    )
                with contextlib.suppress(RuntimeError):  # a closed loop: nothing left there
                    other_loop.call_soon_threadsafe(other.cancel)
                self._calls.remove((other, other_loop))
            call = (task, loop)
            self._calls.append(call)
        try:
            yield
        finally:
            with self._guard:
                if call in self._calls:
                    self._calls.remove(call)

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
        finally:  # an error, Ctrl-C or the caller leaving: send nothing more, keep what was sent
            for task in pending:
                task.cancel()
            await _settle(pending)

    async def ask(
        self, images: torch.Tensor, indices: list[int], store: AnswerStore = UNRECORDED
    ) -> list[Label | None]:
        """One request for samples ``indices``, retried per :attr:`retry` for the images that
        failed; every answer is committed to ``store`` before it counts."""
        answers: dict[int, Label | None] = {}
        todo = list(range(len(indices)))
        throttle = self._throttle()
        retrying = AsyncRetrying(
            retry=retry_if_exception(
                lambda e: isinstance(e, ProviderError) and e.retryable and not self._too_long(e)
            ),
            stop=stop_after_attempt(self.retry.max_attempts),
            wait=self._retry_wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with throttle.request(len(todo)):
                        self.stats.requests += 1
                        self.stats.images += len(todo)
                        sent = [indices[i] for i in todo]
                        outcomes = await _paid(self._send(images[todo], sent, store))
                    done = [(i, o) for i, o in zip(todo, outcomes, strict=True)
                            if not isinstance(o, ProviderError)]  # fmt: skip
                    answers.update((i, answer.label) for i, answer in done)
                    failed = [(i, o) for i, o in zip(todo, outcomes, strict=True)
                              if isinstance(o, ProviderError)]  # fmt: skip
                    if failed:
                        todo = [i for i, _ in failed]
                        errors = [error for _, error in failed]
                        raise next((e for e in errors if not e.retryable), errors[0])
        except ProviderError as error:
            if error.retryable and self._too_long(error):
                raise self._not_waiting(error) from error
            raise
        return [answers[i] for i in range(len(indices))]

    def _too_long(self, error: ProviderError) -> bool:
        """Whether the server asked to wait longer than :attr:`RetryPolicy.max_wait`."""
        return error.retry_after is not None and not error.retry_after <= self.retry.max_wait

    def _not_waiting(self, error: ProviderError) -> RetryAfterTooLongError:
        """The error that stops a request whose server asked to wait too long: not retried,
        saying when to resume."""
        wait = error.retry_after or 0.0
        when: datetime.datetime | None
        try:
            when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=wait)
            resume = f"resume after {when:%Y-%m-%d %H:%M:%S} UTC"
        except (OverflowError, ValueError):  # inf, nan, or past the year 9999
            when, resume = None, "resume when the provider allows it again"
        stop = RetryAfterTooLongError(
            f"{error}; it asked to wait {wait:g} s before the next try (Retry-After), longer "
            f"than RetryPolicy.max_wait ({self.retry.max_wait:g} s): stopped instead of "
            f"waiting, {resume}",
            status=error.status, code=error.code, retry_after=error.retry_after,
        )  # fmt: skip
        stop.provider, stop.resume_at = error.provider, when
        return stop

    async def _send(self, images: torch.Tensor, indices: list[int], store: AnswerStore) -> list:
        """One request; the answers that came back are committed to ``store`` at once, and
        counted as answered. Its images count as possibly billed from the moment it leaves
        until an answer is kept or an error says the provider did not take them: so a
        request cancelled (Ctrl-C), left unanswered, or whose answers could not be kept stays
        counted, however the call ends."""
        self.stats.possibly_billed += len(indices)
        try:
            outcomes = await self.adapter.aanswers_or_errors(images)
        except ProviderError as error:
            self.stats.possibly_billed -= len(indices) * (not error.possibly_billed)
            raise
        except Exception:  # refused before it was sent (an invalid image, a replay miss)
            self.stats.possibly_billed -= len(indices)
            raise
        self.stats.possibly_billed -= sum(
            isinstance(o, ProviderError) and not o.possibly_billed for o in outcomes
        )
        if self.decision is not None:
            outcomes = [o if isinstance(o, ProviderError) else self._decided(o) for o in outcomes]
        done = [(i, *o) for i, o in zip(indices, outcomes, strict=True)
                if not isinstance(o, ProviderError)]  # fmt: skip
        if done:
            store.record(done)
        self.stats.answered += len(done)
        self.stats.possibly_billed -= len(done)
        return outcomes

    def _decided(self, answer: Answer) -> Answer:
        """``answer`` with the decision's label in place of the top label."""
        assert self.decision is not None and answer.ranked is not None  # checked in __init__
        return answer._replace(label=self.decision(answer.ranked))

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


async def _paid(request: Coroutine[Any, Any, T]) -> T:
    """Await a request that is being sent. Cancelling the caller (Ctrl-C, a failure
    elsewhere) does not cancel the request: it is paid for, so its answers are awaited
    and committed first, then the cancellation goes on."""
    task = asyncio.ensure_future(request)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _settle([task])
        raise


async def _settle(tasks: Iterable[asyncio.Future]) -> None:
    """Wait until every task is done, however often the caller is cancelled meanwhile (they
    are being cancelled already; what they still do is commit answers that were paid for)."""
    waiting = set(tasks)
    while waiting:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(waiting)
        waiting = {task for task in waiting if not task.done()}
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the caller is raising its own error


async def _first_done(pending: dict[asyncio.Future, list[int]]) -> set[asyncio.Future]:
    """Wait until at least one pending request has finished; the finished ones."""
    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    return done


# --- sync callers ----------------------------------------------------------------------
#
# A sync call runs its coroutine as one task on an event loop: the bridge's own (kept
# between calls), or, inside a running loop (a notebook, asyncio.run), a fresh one in a
# worker thread. While it runs in the main thread, the first Ctrl-C cancels that task
# instead of raising wherever the interpreter happens to be: the dispatcher then sends
# nothing more, awaits the requests in flight and commits their answers, and the caller
# gets :class:`~smoothapi.errors.Interrupted` with what was spent. A second Ctrl-C raises
# KeyboardInterrupt at once, the requests in flight abandoned (possibly billed). However a
# KeyboardInterrupt comes (a second Ctrl-C, or a SIGINT handler of the caller's, as
# IPython's, that we leave in place), the call's tasks are cancelled and awaited before it is
# raised: nothing is left on the loop to send at the next call.


def _overridable(handler: Any) -> bool:
    """A SIGINT handler we may stand in for: Python's default, or asyncio's (which would only
    cancel the outer task, after the sync call inside it had paid for everything)."""
    runner = getattr(asyncio, "Runner", None)  # Python 3.11+
    owner = getattr(getattr(handler, "func", handler), "__self__", None)  # a partial of a method
    return handler is signal.default_int_handler or (
        runner is not None and isinstance(owner, runner)
    )


@contextlib.contextmanager
def _cancel_on_interrupt(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> Iterator[list]:
    """While it lasts, the first Ctrl-C cancels ``task`` and is noted in the list yielded;
    a second raises KeyboardInterrupt. Only in the main thread, over Python's or asyncio's
    own handler (a handler of the caller's is left alone)."""
    interrupted: list[bool] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
    if not _overridable(previous):
        yield interrupted
        return

    def on_interrupt(signum: int, frame: object) -> None:
        if interrupted or task.done():
            raise KeyboardInterrupt
        interrupted.append(True)
        loop.call_soon_threadsafe(task.cancel)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interruptible(stats: ClientStats | None) -> Iterator[None]:
    """Around an async call awaited in the main thread (an IPython cell, ``asyncio.run``):
    the first Ctrl-C cancels the call's task, so that it sends nothing more and keeps the
    answers in flight, and the call raises :class:`~smoothapi.errors.Interrupted`. Python's
    own KeyboardInterrupt would stop the loop instead, leaving the call suspended on it to
    send on whenever the loop runs again (the next cell)."""
    task = asyncio.current_task()
    assert task is not None  # called from a coroutine
    with _cancel_on_interrupt(asyncio.get_running_loop(), task) as interrupted:
        try:
            yield
        except asyncio.CancelledError:
            if interrupted:
                raise _interrupted(stats) from None
            raise


def _interrupted(stats: ClientStats | None) -> Interrupted:
    spent = ""
    if stats is not None:
        spent = f"; {stats.requests} requests ({stats.images} images) sent in all"
    return Interrupted(
        "interrupted: nothing was sent after Ctrl-C, and the answers of the requests in "
        "flight were kept" + spent,
        stats,
    )


def _run_here(loop: asyncio.AbstractEventLoop, coroutine: Awaitable[T],
              stats: ClientStats | None) -> T:  # fmt: skip
    """Run ``coroutine`` on ``loop`` in this thread, Ctrl-C cancelling it cleanly."""
    task = asyncio.ensure_future(coroutine, loop=loop)
    with _cancel_on_interrupt(loop, task) as interrupted:
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupted:
                raise _interrupted(stats) from None
            raise
        except KeyboardInterrupt:  # not turned into a cancellation: stop the call, then raise
            _stop(loop, task, at_once=bool(interrupted))
            raise


def _stop(loop: asyncio.AbstractEventLoop, task: asyncio.Future, at_once: bool) -> None:
    """Cancel the call ``task`` and run ``loop`` until it has stopped, then cancel whatever it
    left behind: nothing of it is left to send when the loop runs again. Its requests in
    flight are awaited and their answers kept, unless ``at_once`` (a second Ctrl-C): then
    they are abandoned (and stay counted as possibly billed)."""
    if not at_once:
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    _drain(loop)


def _run_in_thread(coroutine: Awaitable[T], stats: ClientStats | None) -> T:
    """Run ``coroutine`` on a fresh loop in a worker thread; this thread waits, and its
    Ctrl-C cancels the worker's task cleanly."""
    loop = asyncio.new_event_loop()
    task = asyncio.ensure_future(coroutine, loop=loop)
    finished = threading.Event()  # not join(): after a KeyboardInterrupt in join(), Python
    # 3.11 may take the thread for finished while it still runs
    worker = threading.Thread(target=_run_to_end, args=(loop, task, finished),
                              name="smoothapi-sync")  # fmt: skip
    with _cancel_on_interrupt(loop, task) as interrupted:
        worker.start()
        try:
            finished.wait()
        except KeyboardInterrupt:  # not turned into a cancellation: stop the call, then raise
            with contextlib.suppress(RuntimeError):  # the loop may just have closed
                if interrupted:  # a second Ctrl-C: what is in flight is abandoned too
                    loop.call_soon_threadsafe(_cancel_all, loop)
                else:
                    loop.call_soon_threadsafe(task.cancel)
            finished.wait()  # until the call has stopped: nothing of it is left to send
            raise
    if interrupted and task.cancelled():
        raise _interrupted(stats) from None
    return task.result()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task]:
    """Cancel every task of ``loop`` not done yet; those tasks."""
    leftover = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in leftover:
        task.cancel()
    return leftover


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task left on ``loop`` and run it until they are done."""
    leftover = _cancel_all(loop)
    if leftover:
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))


def _run_to_end(loop: asyncio.AbstractEventLoop, task: asyncio.Task,
                finished: threading.Event) -> None:  # fmt: skip
    try:
        with contextlib.suppress(BaseException):  # the caller reads the task's outcome
            loop.run_until_complete(task)
        _close_loop(loop)
    finally:
        finished.set()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close ``loop`` as ``asyncio.run`` does: cancel and await what is left, finish async
    generators and worker threads, so that nothing complains when it is collected."""
    try:
        _drain(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def run_sync(coroutine: Coroutine[Any, Any, T], stats: ClientStats | None = None) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop
    (a notebook): then it runs on a fresh loop in a worker thread. Ctrl-C cancels it
    cleanly and raises :class:`~smoothapi.errors.Interrupted` (with ``stats``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        try:
            return _run_here(loop, coroutine, stats)
        finally:
            _close_loop(loop)
    return _run_in_thread(coroutine, stats)


class SyncBridge:
    """Runs an adapter's coroutines from sync code on an event loop of its own, kept
    between calls (so its connections are reused) and closed by :meth:`close`.

    Calls from several threads take turns (one lock); Ctrl-C as in :func:`run_sync`.
    """

    def __init__(self, adapter: Adapter, stats: ClientStats | None = None) -> None:
        self.adapter, self.stats = adapter, stats
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Awaitable[T]) -> T:
        """Run ``coroutine`` to completion; inside a running loop (a notebook) it runs on a
        fresh loop in a worker thread, and the adapter's clients for it are closed after."""
        with self._lock:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                if self.loop is None or self.loop.is_closed():
                    self.loop = asyncio.new_event_loop()
                    weakref.finalize(self, self.loop.close)  # if close() is never called
                return _run_here(self.loop, coroutine, self.stats)
            return _run_in_thread(self._scoped(coroutine), self.stats)

    async def _scoped(self, coroutine: Awaitable[T]) -> T:
        try:
            return await coroutine
        finally:
            await self.adapter.aclose()

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator's items, one :meth:`run` each."""
        while True:
            try:
                yield self.run(items.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        """Close the adapter's connections made on this bridge's loop, then the loop (from a
        worker thread when called inside a running loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._close()
            return
        worker = threading.Thread(target=self._close, name="smoothapi-close")
        worker.start()
        worker.join()

    def _close(self) -> None:
        with self._lock:
            if self.loop is None or self.loop.is_closed():
                return
            try:
                self.loop.run_until_complete(self.adapter.aclose())
            finally:
                _close_loop(self.loop)
