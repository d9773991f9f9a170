"""The smoothing client against faults: retries, partial batches, rate limits."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from smoothapi import SmoothedClassifier
from smoothapi.errors import BadRequestError, RateLimitError, ServerError
from smoothapi.smoothing import RateLimits, RetryPolicy

from .adapters.fake import FakeAdapter, brightness_response

IMAGE = torch.full((1, 12, 12), 0.65)
FAST = RetryPolicy(max_attempts=8, initial_wait=0.001, max_wait=0.01)


class Faulty(FakeAdapter):
    """Fails a chosen share of requests (or of images inside a batch), deterministically."""

    max_in_flight = 6

    def __init__(self, fail_every=0, error=ServerError, per_image=False):
        super().__init__()
        self.fail_every, self.error, self.per_image = fail_every, error, per_image
        self.calls = 0

    async def _send(self, images):
        self.calls += 1
        await asyncio.sleep(0.001)
        failing = self.fail_every and self.calls % self.fail_every == 0
        if failing and not self.per_image:
            raise self.error("injected", provider="fake", status=503)
        self.requests.append(list(images))
        out = [brightness_response(image) for image in images]
        if failing:
            out[0] = self.error("one image failed", provider="fake")
        return out


def _certify(adapter, **options):
    smoothed = SmoothedClassifier(adapter, 0.3, batch_size=32, device="cpu", seed=11,
                                  retry=FAST, **options)
    return smoothed, smoothed.certify(IMAGE, n0=32, n=160, alpha=0.01)


@pytest.mark.parametrize(
    "faults",
    [dict(fail_every=5), dict(fail_every=3, error=RateLimitError),
     dict(fail_every=4, per_image=True), dict(fail_every=2, per_image=True,
                                              error=RateLimitError)],
)
def test_faults_do_not_change_the_certificate_or_pay_twice(faults):
    _, reference = _certify(Faulty())
    adapter = Faulty(**faults)
    smoothed, result = _certify(adapter)
    assert result == reference
    assert smoothed.stats.retries > 0
    # Every image is answered once: only failed images are sent again. (Each retry here
    # re-sends one failed request: a whole one, or the one image that failed in it.)
    sent = sum(len(r) for r in adapter.requests)
    failed_images = smoothed.stats.retries if faults.get("per_image") else 0
    assert sent - failed_images == 192


def test_non_retryable_errors_stop_at_once():
    adapter = Faulty(fail_every=1, error=BadRequestError)
    smoothed = SmoothedClassifier(adapter, 0.3, device="cpu", seed=1, retry=FAST)
    with pytest.raises(BadRequestError):
        smoothed.certify(IMAGE, n0=4, n=4)
    assert adapter.calls == 1 and smoothed.stats.retries == 0


def test_retries_are_capped():
    adapter = Faulty(fail_every=1)
    smoothed = SmoothedClassifier(adapter, 0.3, device="cpu", seed=1,
                                  retry=RetryPolicy(max_attempts=3, initial_wait=0.001))
    with pytest.raises(ServerError):
        smoothed.certify(IMAGE, n0=4, n=4)
    assert adapter.calls == 3


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
    smoothed = SmoothedClassifier(adapter, 0.3, batch_size=16, device="cpu", seed=2,
                                  limits=RateLimits(requests_per_second=100, max_in_flight=3))
    smoothed.certify(IMAGE, n0=10, n=40)
    span = adapter.times[-1] - adapter.times[0]
    assert len(adapter.times) == 50
    assert span >= 49 / 100 * 0.95  # evenly spaced: 49 gaps of 10 ms
    assert adapter.peak <= 3
