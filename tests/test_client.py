"""The smoothing client against faults: retries, partial batches, rate limits."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from smoothapi import SmoothedClassifier
from smoothapi.dispatch import RateLimits, RetryPolicy
from smoothapi.errors import BadRequestError, RateLimitError, ServerError

from .adapters.fake import FakeAdapter, brightness_response

IMAGE = torch.full((1, 12, 12), 0.65)
FAST = RetryPolicy(max_attempts=8, initial_wait=0.001, max_wait=0.01)


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


def _certify(adapter, **options):
    smoothed = SmoothedClassifier(
        adapter, 0.3, batch_size=32, device="cpu", seed=11, retry=FAST, **options
    )
    return smoothed, smoothed.certify(IMAGE, n0=32, n=160, alpha=0.01)


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
def test_faults_do_not_change_the_certificate_or_pay_twice(faults):
    _, reference = _certify(Faulty())
    adapter = Faulty(**faults)
    smoothed, result = _certify(adapter)
    assert result == reference
    assert smoothed.stats.retries > 0
    # Every image is answered once: only what failed is sent again.
    sent = sum(len(r) for r in adapter.requests)
    failed_in_batches = len(adapter.failed_once) if faults.get("per_image") else 0
    assert sent - failed_in_batches == 192


def test_non_retryable_errors_stop_at_once():
    adapter = Faulty(fail_every=1, error=BadRequestError)
    smoothed = SmoothedClassifier(adapter, 0.3, device="cpu", seed=1, retry=FAST)
    with pytest.raises(BadRequestError):
        smoothed.certify(IMAGE, n0=4, n=4)
    assert smoothed.stats.retries == 0 and adapter.calls <= 2  # one per phase, none again


def test_retries_are_capped():
    adapter = Faulty(storm=100)
    smoothed = SmoothedClassifier(
        adapter, 0.3, device="cpu", seed=1, retry=RetryPolicy(max_attempts=3, initial_wait=0.001)
    )
    with pytest.raises(ServerError):
        smoothed.certify(IMAGE, n0=4, n=4)
    assert 3 <= adapter.calls <= 6  # 3 tries for the request that gave up, the other cancelled
    assert not asyncio.all_tasks(smoothed._bridge.loop)  # nothing left to send after the failure


def test_retry_after_is_honoured():
    class SlowDown(FakeAdapter):
        calls = 0

        async def _send(self, images):
            SlowDown.calls += 1
            if SlowDown.calls == 1:
                raise RateLimitError("wait", provider="fake", retry_after=0.3)
            return await super()._send(images)

    smoothed = SmoothedClassifier(SlowDown(), 0.3, device="cpu", seed=1, retry=FAST)
    started = time.perf_counter()
    smoothed.certify(IMAGE, n0=4, n=4)
    assert time.perf_counter() - started >= 0.3
    assert smoothed.stats.rate_limited == 1


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
    smoothed = SmoothedClassifier(
        adapter,
        0.3,
        batch_size=16,
        device="cpu",
        seed=2,
        limits=RateLimits(requests_per_second=100, max_in_flight=3),
    )
    smoothed.certify(IMAGE, n0=10, n=40)
    span = adapter.times[-1] - adapter.times[0]
    assert len(adapter.times) == 50
    assert span >= 49 / 100 * 0.95  # evenly spaced: 49 gaps of 10 ms
    assert adapter.peak <= 3


def test_certify_many_streams_outcomes_goes_on_after_errors_and_stops_at_the_budget(
    monkeypatch,
):
    from smoothapi.errors import BudgetExceededError

    images = [torch.full((1, 12, 12), v) for v in (0.9, 0.1, 0.8)]
    adapter = Faulty()
    smoothed = SmoothedClassifier(adapter, 0.2, batch_size=8, device="cpu", seed=0, retry=FAST)
    outcomes = list(smoothed.certify_many(images, n0=8, n=16, alpha=0.05))
    assert [o.certification.label for o in outcomes] == ["bright", "dark", "bright"]
    assert [o.queries for o in outcomes] == [24, 24, 24] and all(o.error is None for o in outcomes)

    failing = Faulty(storm=10**6, error=BadRequestError)
    smoothed = SmoothedClassifier(failing, 0.2, device="cpu", seed=0, retry=FAST)
    outcomes = list(smoothed.certify_many(images, n0=4, n=4))
    assert len(outcomes) == 3 and all(isinstance(o.error, BadRequestError) for o in outcomes)

    smoothed = SmoothedClassifier(Faulty(), 0.2, device="cpu", seed=0, retry=FAST)
    seen = []
    with pytest.raises(BudgetExceededError, match="stopped before image 2"):
        for outcome in smoothed.certify_many(images, n0=8, n=16, max_queries=60):
            seen.append(outcome.index)
    assert seen == [0, 1]

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    smoothed = SmoothedClassifier(Faulty(), 0.2, device="cpu", seed=0, retry=FAST)
    assert [o.index for o in smoothed.certify_many(images, n0=4, n=4)] == [1]


def test_cost_cap_target_radius_and_progress(capsys):
    from smoothapi.errors import BudgetExceededError, InvalidInputError

    images = [torch.full((1, 12, 12), v) for v in (0.9, 0.1, 0.8)]
    smoothed = SmoothedClassifier(Faulty(), 0.2, device="cpu", seed=0, retry=FAST)
    done = []
    with pytest.raises(BudgetExceededError):
        for outcome in smoothed.certify_many(images, n0=8, n=16, max_cost=0.05,
                                             price_per_1000=1.0, progress=True):
            done.append(outcome)
    assert [o.cost for o in done] == [pytest.approx(0.024), pytest.approx(0.024)]
    assert "plan: 3 image(s) x 24 queries" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="largest radius"):
        list(smoothed.certify_many(images, n0=8, n=16, target_radius=1.0))
