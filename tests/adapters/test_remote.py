"""The machinery every vision-API adapter shares, on a fake provider."""

from __future__ import annotations

import asyncio

import pytest
import torch

from smoothapi import SmoothedClassifier
from smoothapi.adapters import create_adapter, list_adapters
from smoothapi.adapters.remote import import_optional, rank, run_sync
from smoothapi.errors import (
    APITimeoutError,
    InvalidInputError,
    MissingDependencyError,
    ProviderError,
    ServerError,
)

from .fake import FakeAdapter


def test_rank_sorts_by_score_then_name():
    ranked = rank([("b", 0.5), ("c", 0.9), ("a", 0.5), ("d", 0.1)])
    assert ranked == [("c", 0.9), ("a", 0.5), ("b", 0.5), ("d", 0.1)]


def test_batches_respect_max_batch_and_labels_follow_the_images():
    adapter = FakeAdapter()
    images = torch.cat([torch.full((5, 1, 12, 12), 0.9), torch.full((5, 1, 12, 12), 0.1)])
    assert adapter.top_labels(images) == ["bright"] * 5 + ["dark"] * 5
    assert [len(r) for r in adapter.requests] == [4, 4, 2]
    ranked = adapter.ranked_labels(images[0])
    assert ranked[0][0] == "bright" and ranked[0][1] == pytest.approx(0.9, abs=0.01)


def test_empty_response_is_no_label_and_label_map_applies_to_the_top():
    empty = FakeAdapter(respond=lambda _: {"labels": []})
    assert empty.top_labels(torch.zeros(2, 1, 12, 12)) == [None, None]
    mapped = FakeAdapter(label_map={"bright": "light"})
    assert mapped.top_labels(torch.ones(1, 1, 12, 12)) == ["light"]
    assert mapped.top_labels(torch.zeros(1, 1, 12, 12)) == ["dark"]


def test_per_image_errors_in_a_batch_are_raised_not_dropped():
    def respond(image):
        raise AssertionError  # replaced below

    adapter = FakeAdapter()

    async def send(images):
        return [{"labels": []}, ServerError("image 1 failed", provider="fake")]

    adapter._send = send
    with pytest.raises(ServerError, match="image 1 failed") as caught:
        adapter.top_labels(torch.zeros(2, 1, 12, 12))
    assert caught.value.image_index == 1


def test_wrong_response_count_and_timeouts_are_errors():
    adapter = FakeAdapter()

    async def short(images):
        return []

    adapter._send = short
    with pytest.raises(ProviderError, match="got 0 responses"):
        adapter.top_labels(torch.zeros(1, 1, 12, 12))

    slow = FakeAdapter(timeout=0.05)

    async def hang(images):
        await asyncio.sleep(5)

    slow._send = hang
    with pytest.raises(APITimeoutError) as caught:
        slow.top_labels(torch.zeros(1, 1, 12, 12))
    assert caught.value.retryable


def test_sync_calls_work_inside_a_running_event_loop():
    adapter = FakeAdapter()

    async def notebook_cell():
        return adapter.top_labels(torch.ones(1, 1, 12, 12))

    assert asyncio.run(notebook_cell()) == ["bright"]
    assert run_sync(asyncio.sleep(0, result=7)) == 7


def test_smoothed_classifier_over_a_remote_adapter():
    smoothed = SmoothedClassifier(FakeAdapter(), 0.1, batch_size=8, device="cpu", seed=0)
    result = smoothed.certify(torch.full((1, 12, 12), 0.9), n0=8, n=40, alpha=0.01)
    assert result.label == "bright" and result.radius > 0


def test_missing_extra_names_the_pip_install():
    with pytest.raises(MissingDependencyError, match=r"pip install 'smoothapi-certified\[aws\]'"):
        import_optional("surely_not_installed_sdk", "aws", package="boto3")
    with pytest.raises(InvalidInputError, match="known: .*local"):
        create_adapter("nonexistent")
    assert "local" in list_adapters()


def test_bad_options_are_refused():
    with pytest.raises(InvalidInputError):
        FakeAdapter(image_format="gif")
    with pytest.raises(InvalidInputError):
        FakeAdapter(jpeg_quality=0)
    with pytest.raises(InvalidInputError):
        FakeAdapter(small_images="ignore")


def test_checked_entries_and_the_answer_size_option():
    from smoothapi.adapters.remote import checked

    assert checked("cat", 1) == ("cat", 1.0) and checked(7, 0.5) == ("7", 0.5)
    for label, score in [("", 0.5), (" ", 0.5), (None, 0.5), (True, 0.5), ("cat", None),
                         ("cat", "0.5"), ("cat", True), ("cat", float("nan")),
                         ("cat", float("-inf"))]:
        with pytest.raises((TypeError, ValueError)):
            checked(label, score)
    assert FakeAdapter(max_response_bytes=1000).max_response_bytes == 1000
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(InvalidInputError, match="max_response_bytes"):
            FakeAdapter(max_response_bytes=bad)


def test_a_blocking_call_that_never_got_a_thread_is_not_billed_one_that_did_may_be():
    """The deadline's verdict: sent (a thread took it) or not (still waiting for one); a
    call that timed out waiting never runs."""
    import concurrent.futures
    import threading

    release, ran = threading.Event(), []

    def call():
        ran.append(1)
        release.wait(5)

    adapter = FakeAdapter(timeout=0.3)
    with pytest.raises(APITimeoutError) as sent:
        asyncio.run(adapter._with_timeout(adapter.in_thread(call)))
    assert sent.value.possibly_billed and ran == [1]

    adapter = FakeAdapter(timeout=0.3)
    adapter._executor = concurrent.futures.ThreadPoolExecutor(1)  # its only thread busy,
    adapter._executor.submit(release.wait, 5)
    adapter.threads = 100  # while the adapter thinks it has room: the next call waits
    with pytest.raises(APITimeoutError) as waiting:
        asyncio.run(adapter._with_timeout(adapter.in_thread(call)))
    assert not waiting.value.possibly_billed
    release.set()
    adapter._executor.shutdown(wait=True)
    assert ran == [1]  # the call that waited was dropped, never sent
