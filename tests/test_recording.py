"""Record once, replay offline: same answers, no transport, no secrets on disk."""

from __future__ import annotations

import json

import pytest
import torch

from smoothapi import SmoothedClassifier
from smoothapi.errors import APITimeoutError, InvalidInputError, RateLimitError, ReplayMissError
from smoothapi.recording import Recording, scrub

from .adapters.fake import FakeAdapter, brightness_response

SECRET = "sk-test-0123456789abcdef"


def test_replayed_certification_equals_the_recorded_one_without_sending(tmp_path):
    path = tmp_path / "fake.jsonl"
    image = torch.full((1, 12, 12), 0.8)
    live = FakeAdapter(recording=Recording(path, mode="record"))
    recorded = SmoothedClassifier(live, 0.2, batch_size=8, device="cpu", seed=5).certify(
        image, n0=8, n=24, alpha=0.05
    )
    assert len(live.requests) == 8  # 32 images, 4 per request

    def unreachable(_image):
        raise AssertionError("replay must not send")

    offline = FakeAdapter(respond=unreachable, recording=Recording(path))
    replayed = SmoothedClassifier(offline, 0.2, batch_size=8, device="cpu", seed=5).certify(
        image, n0=8, n=24, alpha=0.05
    )
    assert replayed == recorded and offline.requests == []
    with pytest.raises(ReplayMissError, match="not in"):
        SmoothedClassifier(offline, 0.2, device="cpu", seed=6).certify(image, n0=4, n=4)


def test_auto_mode_records_only_what_is_missing(tmp_path):
    path = tmp_path / "auto.jsonl"
    adapter = FakeAdapter(recording=Recording(path, mode="auto"))
    images = torch.rand(4, 1, 12, 12)
    first = adapter.top_labels(images)
    assert adapter.top_labels(images) == first
    assert len(adapter.requests) == 1 and len(Recording(path)) == 1


def test_secrets_and_per_image_errors(tmp_path):
    def respond(image):
        return {
            **brightness_response(image),
            "api_key": SECRET,
            "meta": {"Authorization": f"Key {SECRET}", "requestId": "r-1"},
        }

    path = tmp_path / "scrubbed.jsonl"
    adapter = FakeAdapter(respond=respond, recording=Recording(path, mode="record"))
    adapter.top_labels(torch.rand(2, 1, 12, 12))
    text = path.read_text()
    assert SECRET not in text and "<redacted>" in text and "r-1" in text

    recording = Recording(tmp_path / "errors.jsonl", mode="record")
    timed_out = APITimeoutError("no answer", provider="fake")
    recording.store(
        "k", "fake", [{"labels": []},
                      RateLimitError("slow down", provider="fake", status=429, retry_after=2.5),
                      timed_out]
    )  # fmt: skip
    replayed = Recording(tmp_path / "errors.jsonl").lookup("k", "fake")
    assert replayed[0] == {"labels": []}
    assert isinstance(replayed[1], RateLimitError) and replayed[1].status == 429
    # what retries and cost figures read survives the replay
    assert replayed[1].retry_after == 2.5 and not replayed[1].possibly_billed
    assert isinstance(replayed[2], APITimeoutError) and replayed[2].possibly_billed
    assert str(replayed[1]) == "fake: slow down"
    line = json.loads((tmp_path / "errors.jsonl").read_text())
    assert line["provider"] == "fake" and set(line) == {"key", "provider", "responses"}


def test_scrub_and_bad_modes(tmp_path):
    assert scrub({"x_goog_api_key": 1, "items": [{"token": 2, "name": "cat"}]}) == {
        "x_goog_api_key": "<redacted>",
        "items": [{"token": "<redacted>", "name": "cat"}],
    }
    with pytest.raises(InvalidInputError):
        Recording(tmp_path / "x.jsonl", mode="write")
    with pytest.raises(InvalidInputError, match="no recording"):
        Recording(tmp_path / "missing.jsonl")
