"""The loopback provider: wire formats, rate limit, and the client surviving every fault."""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import pytest
import torch

from smoothapi import SmoothedClassifier
from smoothapi.adapters.encoding import encode_image
from smoothapi.adapters.http import HTTPAdapter
from smoothapi.dispatch import RateLimits, RetryPolicy
from smoothapi.testing import Faults, LoopbackProvider

from .loopback import brightness

IMAGE = torch.full((1, 12, 12), 0.6)
RETRY = RetryPolicy(max_attempts=40, initial_wait=0.005, max_wait=0.05)
FAST = RateLimits(requests_per_second=1000)  # the loopback server has no limit



def _post(url, data, content_type="image/png"):
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    assert url.startswith("http://127.0.0.1:")  # the loopback provider, never the network
    with urllib.request.urlopen(request, timeout=5) as reply:  # 127.0.0.1 only (asserted)
        return json.loads(reply.read())


def test_wire_formats():
    png = encode_image(torch.full((1, 8, 8), 0.9))
    b64 = base64.b64encode(png).decode()
    with LoopbackProvider(brightness) as api:
        assert _post(api.url("generic"), png)["labels"][0]["label"] == "bright"
        assert _post(api.url("azure"), png)["tags"][0]["name"] == "bright"
        assert _post(api.url("azure4"), png)["tagsResult"]["values"][0]["name"] == "bright"
        google = _post(api.url("google"), json.dumps(
            {"requests": [{"image": {"content": b64}}] * 3}).encode(), "application/json")
        assert [r["labelAnnotations"][0]["description"] for r in google["responses"]] == [
            "bright"] * 3
        clarifai = _post(api.url("clarifai"), json.dumps(
            {"inputs": [{"data": {"image": {"base64": b64}}}]}).encode(), "application/json")
        assert clarifai["outputs"][0]["data"]["concepts"][0]["name"] == "bright"
        assert api.stats.requests == 5 and api.stats.images == 7


def _certify(api, **adapter_options):
    adapter = HTTPAdapter(api.url("generic"), **adapter_options)
    with SmoothedClassifier(adapter, 0.3, batch_size=32, device="cpu", seed=4,
                            retry=RETRY) as smoothed:
        return smoothed.certify(IMAGE, n0=16, n=64, alpha=0.05), smoothed.stats


@pytest.mark.parametrize(
    "setting",
    [dict(rate_limit=40, retry_after=0.05), dict(faults=Faults(error_5xx=0.2, seed=1)),
     dict(faults=Faults(drop=0.15, seed=2)), dict(faults=Faults(malformed=0.15, seed=3)),
     dict(faults=Faults(timeout=0.1, timeout_seconds=2, seed=4))],
    ids=["429-storm", "5xx", "dropped", "malformed", "timeouts"],
)
def test_the_client_survives_faults_with_the_same_certificate(setting):
    with LoopbackProvider(brightness) as api:
        reference, _ = _certify(api)
    stalls = "faults" in setting and setting["faults"].timeout > 0
    with LoopbackProvider(brightness, **setting) as api:
        # a short timeout only where the server stalls on purpose: on a loaded machine a
        # slow answer abandoned and re-sent would be paid twice, which is what this checks
        result, stats = _certify(api, timeout=0.5 if stalls else 20)
        assert result == reference
        assert stats.retries > 0
        faults = sum(api.stats.faults.values())
        assert api.stats.rate_limited + faults > 0
        assert api.stats.images - faults == 80  # every sample answered once: none paid twice


def test_per_image_errors_in_a_batch_answer_are_retried_alone():
    with LoopbackProvider(brightness, faults=Faults(per_image=0.3, seed=5)) as api:
        png = encode_image(torch.full((1, 8, 8), 0.2))
        b64 = base64.b64encode(png).decode()
        answer = _post(api.url("google"), json.dumps(
            {"requests": [{"image": {"content": b64}}] * 16}).encode(), "application/json")
        errors = [r for r in answer["responses"] if "error" in r]
        assert 0 < len(errors) < 16 and api.stats.faults["per_image"] == len(errors)


def test_batched_generic_endpoint_with_the_http_adapter():
    with LoopbackProvider(brightness) as api:
        adapter = HTTPAdapter(api.url("generic-batch"), send="json", field="images",
                              max_batch=16, batch_path="results")
        labels = adapter.top_labels(torch.rand(40, 1, 8, 8) * 0.3)
        assert labels == ["dark"] * 40
        assert api.stats.requests == 3 and api.stats.images == 40


def _provider_adapter(name, api, monkeypatch, **options):
    """Each provider adapter through its default transport (vendor SDK), at the loopback."""
    from smoothapi.adapters.aws import RekognitionAdapter
    from smoothapi.adapters.azure import AzureVisionAdapter
    from smoothapi.adapters.clarifai import ClarifaiAdapter
    from smoothapi.adapters.google import GoogleVisionAdapter

    if name == "aws":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIALOOPBACK0TESTING")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "loopback-testing-secret")
        return RekognitionAdapter(endpoint_url=api.url(""), region_name="us-east-1", **options)
    if name == "azure":
        return AzureVisionAdapter(api.url(""), "loopback-key", **options)
    if name == "google":
        return GoogleVisionAdapter(endpoint=api.target(), insecure=True, api_key="k123456",
                                   **options)
    return ClarifaiAdapter(target=api.target(), insecure=True, pat="p123456", **options)


@pytest.mark.parametrize("name", ["aws", "azure", "google", "clarifai"])
def test_each_provider_adapter_certifies_through_its_sdk_against_a_faulty_server(
    name, monkeypatch
):
    """Real vendor clients (boto3, msrest, gRPC) against the loopback server: 5xx, malformed
    bodies and per-image errors are retried to the same certificate as a clean server's,
    and no malformed answer ever counts as a sample."""
    faults = Faults(error_5xx=0.1, malformed=0.3, per_image=0.1, seed=7)
    results = []
    for setting in (Faults(), faults):
        with LoopbackProvider(brightness, faults=setting) as api:
            adapter = _provider_adapter(name, api, monkeypatch, timeout=5)
            with SmoothedClassifier(adapter, 0.3, batch_size=32, device="cpu", seed=4,
                                    retry=RETRY, limits=FAST) as smoothed:
                results.append(smoothed.certify(IMAGE, n0=16, n=64, alpha=0.05))
            if setting is faults:
                assert api.stats.faults["malformed"] > 0 and api.stats.faults["5xx"] > 0
    assert results[1] == results[0] and results[0].label == "bright"


def test_a_dripping_answer_arrives_whole_a_byte_at_a_time():
    png = encode_image(torch.full((1, 8, 8), 0.9))
    with LoopbackProvider(brightness, faults=Faults(drip=1.0, drip_seconds=0.002)) as api:
        assert _post(api.url("generic"), png)["labels"][0]["label"] == "bright"
        assert api.stats.faults["drip"] == 1
        until = time.monotonic() + 5
        while api.stats.in_flight and time.monotonic() < until:  # its last bookkeeping
            time.sleep(0.01)
        assert api.stats.in_flight == 0


def test_answers_list_at_most_max_labels_as_a_provider_bounds_its_list():
    # A 557-query recording of a 1,000-class model was 31.7 MB: every class in every answer.
    import asyncio

    def rank(images):
        return [[(f"c{k}", 1.0 - k / 1000) for k in range(1000)] for _ in images]

    with LoopbackProvider(rank) as api:
        outcome = asyncio.run_coroutine_threadsafe(
            api.serve(lambda: [torch.zeros(3, 4, 4)]), api._loop).result(10)
    assert len(outcome.ranked[0]) == 20 and outcome.ranked[0][0] == ("c0", 1.0)


def test_coarse_labels_mix_in_wordnet_ancestors_scored_by_summed_probability():
    from smoothapi.testing import with_coarse_labels

    ranked = [("Egyptian cat", 0.5), ("tabby", 0.3), ("golden retriever", 0.1), ("Kit", 0.05)]
    mixed = dict(with_coarse_labels(ranked))
    assert mixed["cat"] == pytest.approx(0.8) and mixed["domestic cat"] == pytest.approx(0.8)
    assert mixed["carnivore"] == pytest.approx(0.9) and mixed["mammal"] == pytest.approx(0.9)
    assert mixed["Egyptian cat"] == 0.5 and mixed["Kit"] == 0.05  # unknown labels kept
    assert not {"entity", "object", "living thing", "organism"} & set(mixed)
    order = [label for label, _ in with_coarse_labels(ranked)]
    assert order.index("carnivore") < order.index("mammal")  # the finer first on a tie
    assert order.index("cat") < order.index("Egyptian cat")  # 0.8 before 0.5


def test_the_loopback_can_answer_with_coarse_labels():
    import asyncio

    def rank(images):
        return [[("Egyptian cat", 0.6), ("tabby", 0.3), ("goldfish", 0.1)] for _ in images]

    with LoopbackProvider(rank, coarse_labels=True, max_labels=5) as api:
        outcome = asyncio.run_coroutine_threadsafe(
            api.serve(lambda: [torch.zeros(3, 4, 4)]), api._loop).result(10)
    [labels] = outcome.ranked
    assert len(labels) == 5  # a cat and a fish are both vertebrates: that leads, at 1.0
    assert labels[0] == ("vertebrate", pytest.approx(1.0))
    assert labels[3] == ("domestic cat", pytest.approx(0.9))
