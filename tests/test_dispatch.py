"""The dispatcher on its own: faults, retries, limits, the answer store, stopping, sync callers.

No SmoothedClassifier here: a batch producer makes grey images whose brightness is a
function of the sample index, so every answer is known in advance.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import os
import re
import signal
import threading
import time

import pytest
import torch

from smoothapi.dispatch import (
    Dispatcher,
    RateLimits,
    RetryPolicy,
    SyncBridge,
    all_or_nothing,
    run_sync,
)
from smoothapi.errors import (
    APITimeoutError,
    BadRequestError,
    RateLimitError,
    RetryAfterTooLongError,
    ServerError,
    parse_retry_after,
)

from .adapters.fake import FakeAdapter, brightness_response

FAST = RetryPolicy(max_attempts=8, initial_wait=0.001, max_wait=0.01)
BATCH = 32


def produce(index: int, size: int, batch: int = BATCH) -> torch.Tensor:
    """Batch ``index``: sample ``i`` is bright when ``i % 3 == 0``, dark otherwise, and its
    first row spells ``i`` in binary, so every sample's bytes differ."""
    images = []
    for i in range(index * batch, index * batch + size):
        image = torch.full((1, 12, 12), 0.9 if i % 3 == 0 else 0.1)
        image[0, 0] += 0.05 * torch.tensor([(i >> k) & 1 for k in range(12)])
        images.append(image)
    return torch.stack(images)


def expected(num: int) -> dict[int, str]:
    return {i: "bright" if i % 3 == 0 else "dark" for i in range(num)}


class Faulty(FakeAdapter):
    """Injects faults independently of request order: each image whose hash falls in the
    chosen share fails once (the whole request, or just that image in the batch), and a
    ``storm`` fails the first requests outright."""

    max_in_flight = 6

    def __init__(self, fail_every=0, error=ServerError, per_image=False, storm=0):
        super().__init__()
        self.fail_every, self.error = fail_every, error
        self.per_image, self.storm = per_image, storm
        self.calls, self.failed_once = 0, set()

    def _fails(self, image: bytes) -> bool:
        key = hash(image)
        if self.fail_every and key % self.fail_every == 0 and key not in self.failed_once:
            self.failed_once.add(key)
            return True
        return False

    async def _send(self, images):
        self.calls += 1
        await asyncio.sleep(0.001)
        if self.calls <= self.storm:
            raise self.error("storm", provider="fake", status=429)
        if not self.per_image and self._fails(images[0]):
            raise self.error("injected", provider="fake", status=503)
        self.requests.append(list(images))
        return [
            self.error("one image failed", provider="fake")
            if self.per_image and self._fails(image)
            else brightness_response(image)
            for image in images
        ]


class MemoryStore:
    """An answer store in memory that logs what it was asked to commit."""

    def __init__(self, known=None):
        self.known = dict(known or {})
        self.commits: list[list[tuple]] = []

    def answers(self):
        return dict(self.known)

    def record(self, answers):
        rows = list(answers)
        self.commits.append(rows)
        self.known.update((i, label) for i, label, *_ in rows)


def _collect(dispatcher, num, store=None, stop=None):
    def make(index, size):
        return produce(index, size, dispatcher.batch_size)

    async def run():
        answered = {}
        options = {} if stop is None else {"stop": stop}
        args = (make, num) if store is None else (make, num, store)
        async for indices, labels in dispatcher.answers(*args, **options):
            assert not set(indices) & set(answered), "an index was answered twice"
            answered.update(zip(indices, labels, strict=True))
        return answered

    return asyncio.run(run())


@pytest.mark.parametrize(
    "faults",
    [
        dict(fail_every=5),
        dict(fail_every=3, error=RateLimitError),
        dict(fail_every=4, per_image=True),
        dict(fail_every=2, per_image=True, error=RateLimitError),
        dict(storm=15, error=RateLimitError),
    ],
)
def test_faults_do_not_change_the_answers_or_pay_twice(faults):
    adapter = Faulty(**faults)
    dispatcher = Dispatcher(adapter, BATCH, retry=FAST)
    assert _collect(dispatcher, 150) == expected(150)
    assert dispatcher.stats.retries > 0
    # Every sample is answered once: only what failed is sent again.
    sent = sum(len(r) for r in adapter.requests)
    failed_in_batches = len(adapter.failed_once) if faults.get("per_image") else 0
    assert sent - failed_in_batches == 150


def test_non_retryable_errors_stop_at_once():
    adapter = Faulty(fail_every=1, error=BadRequestError)
    dispatcher = Dispatcher(adapter, BATCH, retry=FAST, limits=RateLimits(max_in_flight=1))
    with pytest.raises(BadRequestError):
        _collect(dispatcher, 4)
    assert dispatcher.stats.retries == 0 and adapter.calls == 1


def test_retries_are_capped_and_nothing_keeps_sending_after_a_failure():
    adapter = Faulty(storm=100)
    dispatcher = Dispatcher(adapter, 4, retry=RetryPolicy(max_attempts=3, initial_wait=0.001))
    bridge = SyncBridge(adapter)

    async def drain():
        async for _ in dispatcher.answers(lambda i, size: produce(i, size, 4), 8):
            pass

    with pytest.raises(ServerError):
        bridge.run(drain())
    assert 3 <= adapter.calls <= 6  # 3 tries for the request that gave up, the other cancelled
    assert not asyncio.all_tasks(bridge.loop)
    bridge.close()


def test_retry_after_is_honoured():
    class SlowDown(FakeAdapter):
        calls = 0

        async def _send(self, images):
            SlowDown.calls += 1
            if SlowDown.calls == 1:
                raise RateLimitError("wait", provider="fake", retry_after=0.3)
            return await super()._send(images)

    patient = RetryPolicy(max_attempts=8, initial_wait=0.001, max_wait=1)  # 0.3 s is allowed
    dispatcher = Dispatcher(SlowDown(), BATCH, retry=patient)
    started = time.perf_counter()
    assert _collect(dispatcher, 4) == expected(4)
    assert time.perf_counter() - started >= 0.3
    assert dispatcher.stats.rate_limited == 1


def _retry_after(kind: str) -> float | None:
    """The Retry-After a provider sends, computed when the test runs (not at collection:
    a suite that crosses midnight must not see yesterday's date)."""
    if kind == "a date in 400 days":
        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
        return parse_retry_after(email.utils.format_datetime(when, usegmt=True))
    return {"a day": 86_400.0, "inf": float("inf")}[kind]


@pytest.mark.parametrize("kind", ["a day", "inf", "a date in 400 days"])
def test_a_retry_after_beyond_max_wait_stops_and_says_when_to_resume(kind):
    # It used to sleep for a day, or forever: max_wait did not apply to Retry-After.
    retry_after = _retry_after(kind)

    class Closed(FakeAdapter):
        async def _send(self, images):
            self.requests.append(list(images))
            raise RateLimitError("quota", provider="fake", status=429, retry_after=retry_after)

    adapter = Closed()
    dispatcher = Dispatcher(adapter, BATCH, limits=RateLimits(max_in_flight=1))  # max_wait 60
    started = time.monotonic()
    with pytest.raises(RetryAfterTooLongError, match="longer than RetryPolicy.max_wait") as caught:
        asyncio.run(asyncio.wait_for(dispatcher.counts(produce, 4), 10))
    assert time.monotonic() - started < 5 and len(adapter.requests) == 1  # not retried
    assert not caught.value.retryable
    said = re.search(r"resume after (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", str(caught.value))
    if retry_after == float("inf"):
        assert said is None and "when the provider allows" in str(caught.value)
    else:  # the message names the moment the provider gave, to the minute
        moment = datetime.datetime.strptime(said.group(1), "%Y-%m-%d %H:%M:%S")
        ahead = moment.replace(tzinfo=datetime.timezone.utc) - datetime.datetime.now(
            datetime.timezone.utc
        )
        assert abs(ahead.total_seconds() - retry_after) < 60
    assert isinstance(caught.value, RateLimitError)  # a 429 still, for except clauses
    assert caught.value.retry_after == retry_after
    if retry_after == float("inf"):
        assert caught.value.resume_at is None
    else:
        ahead = caught.value.resume_at - datetime.datetime.now(datetime.timezone.utc)
        assert abs(ahead.total_seconds() - retry_after) < 60
    assert isinstance(caught.value.__cause__, RateLimitError)


def test_requests_per_second_and_in_flight_are_respected():
    class Timed(FakeAdapter):
        max_batch = 1

        def __init__(self):
            super().__init__()
            self.times, self.active, self.peak = [], 0, 0

        async def _send(self, images):
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.times.append(time.perf_counter())
            await asyncio.sleep(0.02)
            self.active -= 1
            return [brightness_response(i) for i in images]

    adapter = Timed()
    limits = RateLimits(requests_per_second=100, max_in_flight=3)
    dispatcher = Dispatcher(adapter, 16, limits=limits)
    assert _collect(dispatcher, 50) == expected(50)
    span = adapter.times[-1] - adapter.times[0]
    assert len(adapter.times) == 50
    assert span >= 49 / 100 * 0.95  # evenly spaced: 49 gaps of 10 ms
    assert adapter.peak <= 3
    assert dispatcher.stats.requests == 50 and dispatcher.stats.images == 50


def test_known_answers_are_not_asked_again_and_new_ones_are_committed_first():
    adapter = FakeAdapter()
    store = MemoryStore({i: "stored" for i in range(0, 40, 2)})  # the even samples are paid for
    answered = _collect(Dispatcher(adapter, BATCH), 40, store)
    assert sum(len(r) for r in adapter.requests) == 20  # only the odd ones were sent
    assert all(answered[i] == "stored" for i in range(0, 40, 2))
    assert all(answered[i] == expected(40)[i] for i in range(1, 40, 2))
    committed = {i: label for rows in store.commits for i, label, *_ in rows}
    assert committed == {i: expected(40)[i] for i in range(1, 40, 2)}
    assert all(score is not None for rows in store.commits for _, _, score, _ in rows)
    assert all(ranked[0][0] == label for rows in store.commits for _, label, _, ranked in rows)


def test_no_request_is_made_once_stop_holds_but_sent_ones_are_still_yielded():
    adapter = FakeAdapter()  # 4 images a request, one request at a time
    checks = []
    answered = _collect(
        Dispatcher(adapter, 8), 400, stop=lambda: len(checks.append(0) or checks) > 2
    )
    # stop() is asked before the first batch and before each request: the second request of
    # the first batch of 8 is never made (it was checked per batch of 8 before issue 15).
    assert len(answered) == 4 and sum(len(r) for r in adapter.requests) == 4


class OneAtATime(FakeAdapter):
    """One image a request, up to 8 in flight, answers after a short random delay."""

    max_batch, max_in_flight = 1, 8

    async def _send(self, images):
        await asyncio.sleep(0.0005 * (hash(images[0]) % 4))
        return await super()._send(images)


def test_stop_is_checked_before_every_request_so_only_requests_in_flight_overshoot():
    adapter = OneAtATime()
    answered: dict[int, str] = {}

    async def run():
        dispatcher = Dispatcher(adapter, 256)  # noise batches of 256, requests of one image
        stop = lambda: len(answered) >= 5  # noqa: E731
        async for indices, labels in dispatcher.answers(
            lambda index, size: produce(index, size, 256), 10_000, stop=stop
        ):
            answered.update(zip(indices, labels, strict=True))

    asyncio.run(run())
    sent = sum(len(r) for r in adapter.requests)
    # Every request sent was answered and yielded (paid for, so counted), and past the 5th
    # answer at most the 7 others in flight came back: not the rest of the 256-sample batch.
    assert sent == len(answered) and 5 <= sent <= 5 + 7


def test_stored_answers_beyond_the_samples_asked_for_are_not_used():
    adapter = FakeAdapter()
    store = MemoryStore({i: "stored" for i in range(100)})
    answered = _collect(Dispatcher(adapter, BATCH), 40, store)
    assert sorted(answered) == list(range(40)) and adapter.requests == []


def test_ask_sends_one_request_and_counts_tally_the_labels():
    adapter = FakeAdapter()
    dispatcher = Dispatcher(adapter, BATCH)
    labels = asyncio.run(dispatcher.ask(produce(0, 3), [0, 1, 2]))
    assert labels == ["bright", "dark", "dark"] and len(adapter.requests) == 1
    counts = asyncio.run(dispatcher.counts(produce, 30))
    assert counts == {"bright": 10, "dark": 20}


def test_sync_callers_run_coroutines_inside_and_outside_a_running_loop():
    assert run_sync(asyncio.sleep(0, result=7)) == 7

    async def inside_a_loop():  # as in a notebook: the bridge moves to a worker thread
        return SyncBridge(FakeAdapter()).run(asyncio.sleep(0, result=8))

    assert asyncio.run(inside_a_loop()) == 8

    async def numbers():
        for i in range(3):
            yield i

    bridge = SyncBridge(FakeAdapter())
    assert list(bridge.iterate(numbers())) == [0, 1, 2]
    bridge.close()


def test_all_or_nothing_cancels_the_others_when_one_fails():
    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def failing():
        raise ValueError("boom")

    with pytest.raises(ValueError):
        asyncio.run(all_or_nothing(slow(), failing()))
    assert cancelled == [True]


class _SlowThenFine(FakeAdapter):
    """The first request times out after being sent (possibly billed); a 503 is not billed."""

    max_in_flight = 1

    def __init__(self, first_error):
        super().__init__()
        self.first_error, self.calls = first_error, 0

    async def _send(self, images):
        self.calls += 1
        if self.calls == 1:
            raise self.first_error
        return [brightness_response(image) for image in images]


@pytest.mark.parametrize(
    ("error", "billed"),
    [(APITimeoutError("no answer in time", provider="fake"), 4),  # one request of 4 images
     (ServerError("busy", provider="fake", status=503), 0)],
)
def test_abandoned_requests_count_as_possibly_billed(error, billed):
    dispatcher = Dispatcher(_SlowThenFine(error), batch_size=BATCH, retry=FAST)
    assert _collect(dispatcher, BATCH) == expected(BATCH)
    stats = dispatcher.stats
    assert stats.images == BATCH + 4 and stats.answered == BATCH  # the failed request resent
    assert stats.possibly_billed == billed and stats.billable == BATCH + billed


class Slow(FakeAdapter):
    """Answers after ``latency`` seconds, four requests at a time; logs each request as sent."""

    max_in_flight = 4

    def __init__(self, latency=0.03):
        super().__init__()
        self.latency, self.sent = latency, []

    async def _send(self, images):
        self.sent.append(len(images))
        await asyncio.sleep(self.latency)
        return await super()._send(images)


def test_a_cancelled_task_sends_nothing_more_and_commits_what_was_in_flight():
    adapter, store = Slow(), MemoryStore()
    dispatcher = Dispatcher(adapter, BATCH)

    async def main():
        task = asyncio.ensure_future(dispatcher.counts(produce, 4_000, store))
        while len(adapter.sent) < 10:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sent = len(adapter.sent)
        await asyncio.sleep(0.2)
        assert len(adapter.sent) == sent  # nothing was sent after the cancellation
        return sent

    sent = asyncio.run(main())
    assert sent <= 10 + adapter.max_in_flight
    assert sum(map(len, store.commits)) == sum(adapter.sent)  # every answer paid for is kept


def test_a_second_cancellation_does_not_drop_the_answers_in_flight():
    adapter, store = Slow(latency=0.1), MemoryStore()
    dispatcher = Dispatcher(adapter, BATCH)

    async def main():
        task = asyncio.ensure_future(all_or_nothing(dispatcher.counts(produce, 4_000, store)))
        while len(adapter.sent) < 4:
            await asyncio.sleep(0.001)
        for _ in range(3):  # as when a failure elsewhere cancels everything again
            task.cancel()
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sum(map(len, store.commits)) == sum(adapter.sent) > 0


def _sigint_when(condition, then=()) -> None:
    """From a timer thread: SIGINT this process once ``condition()`` holds, then once more
    after each delay in ``then``."""

    def fire():
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGINT)
        for delay in then:
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()


def test_a_second_ctrl_c_stops_at_once_and_counts_what_it_abandons_as_possibly_billed():
    # After a second Ctrl-C, 8 images sent and none answered showed possibly_billed 0.
    adapter = Slow(latency=5)  # the answers would come long after the two Ctrl-Cs
    dispatcher = Dispatcher(adapter, BATCH)
    bridge = SyncBridge(adapter, dispatcher.stats)
    _sigint_when(lambda: len(adapter.sent) >= 4, then=[0.2])
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        bridge.run(dispatcher.counts(produce, 4_000, MemoryStore()))
    assert time.monotonic() - started < 4  # at once: not after the 5 s answers
    stats = dispatcher.stats
    assert stats.images == sum(adapter.sent) > 0 and stats.answered == 0
    assert stats.possibly_billed == stats.images
    assert not asyncio.all_tasks(bridge.loop)  # nothing left on the loop to send later
    bridge.close()


def test_a_keyboard_interrupt_from_the_callers_own_handler_leaves_nothing_to_resume():
    # A SIGINT handler of the caller's (IPython's, say) is left in place, and its
    # KeyboardInterrupt used to leave the call pending on the bridge's loop: the next call
    # ran it on, sending the rest of it.
    def callers_handler(signum, frame):
        raise KeyboardInterrupt

    adapter, store = Slow(latency=0.05), MemoryStore()
    dispatcher = Dispatcher(adapter, BATCH)
    bridge = SyncBridge(adapter, dispatcher.stats)
    previous = signal.signal(signal.SIGINT, callers_handler)
    try:
        _sigint_when(lambda: len(adapter.sent) >= 8)
        with pytest.raises(KeyboardInterrupt):
            bridge.run(dispatcher.counts(produce, 4_000, store))
    finally:
        signal.signal(signal.SIGINT, previous)
    sent = len(adapter.sent)
    assert sent <= 8 + 2 * adapter.max_in_flight
    assert not asyncio.all_tasks(bridge.loop)
    assert sum(map(len, store.commits)) == sum(adapter.sent)  # the answers in flight kept
    assert bridge.run(dispatcher.counts(produce, 8)) == {"bright": 3, "dark": 5}
    assert len(adapter.sent) == sent + 2  # the next call sent its own requests, no more
    bridge.close()
