"""Every provider adapter, through its default transport (the vendor SDK), against a real
loopback server speaking that vendor's wire format, under each fault a real API shows.

Rules held for every adapter: an answer without the provider's documented shape is a
retryable error, never a sample and never recorded; every failure is typed in the error
tree with its cause chained; a configured secret that the server echoes shows in no
message, repr, traceback or log record (DEBUG); a timed-out request is marked possibly
billed; blocking SDKs reach ``max_in_flight`` concurrent requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback

import pytest
import torch

from smoothapi.adapters.aws import RekognitionAdapter
from smoothapi.adapters.azure import AzureVisionAdapter
from smoothapi.adapters.clarifai import ClarifaiAdapter
from smoothapi.adapters.google import GoogleVisionAdapter
from smoothapi.adapters.http import HTTPAdapter
from smoothapi.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ProviderError,
    ServerError,
)
from smoothapi.recording import Recording
from smoothapi.testing import MALFORMED_KINDS, Faults, LoopbackProvider

from ..loopback import brightness

AWS_KEY_ID, AWS_SECRET = "AKIALOOPBACK7EXAMPLE", "loopback/Secret+Key/EXAMPLEKEY0123456789"
SECRETS = {
    "aws": AWS_KEY_ID,
    "azure": "azure-loopback-key-5f2a",
    "azure4": "azure-loopback-key-5f2a",
    "google": "google-loopback-key-81c3",
    "clarifai": "clarifai-loopback-pat-a0b7",
    "http": "http-loopback-token-9d4e",
}
PROVIDERS = list(SECRETS)
IMAGE = torch.full((1, 3, 96, 96), 0.7)



@pytest.fixture(scope="module")
def api():
    with LoopbackProvider(brightness) as server:
        server.target()  # start the gRPC services too
        yield server


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


def make(provider, api, **options):
    """The adapter ``provider`` with its default transport, pointed at the loopback server."""
    options.setdefault("timeout", 5)
    key = SECRETS[provider]
    if provider == "aws":
        return RekognitionAdapter(endpoint_url=api.url(""), region_name="us-east-1", **options)
    if provider in ("azure", "azure4"):
        api_version = "v3.2" if provider == "azure" else "4.0"
        return AzureVisionAdapter(api.url(""), key, api=api_version, **options)
    if provider == "google":
        return GoogleVisionAdapter(endpoint=api.target(), insecure=True, api_key=key, **options)
    if provider == "clarifai":
        return ClarifaiAdapter(target=api.target(), insecure=True, pat=key, **options)
    return HTTPAdapter(api.url("generic"), headers={"Authorization": f"Bearer {key}"}, **options)


def faulty(api, **faults):
    api.faults = Faults(**faults)
    return api


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_adapter_answers_through_its_default_transport(api, provider):
    faulty(api)
    assert make(provider, api).top_labels(torch.cat([IMAGE, 1 - IMAGE])) == ["bright", "dark"]


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_malformed_answer_is_a_retryable_error_never_a_sample_never_recorded(
    api, provider, kind, tmp_path
):
    """Truncated, non-JSON, empty, a JSON list, the wrong schema (over gRPC: bytes that
    are no protobuf). Before, AWS turned each into a "no label" sample."""
    recording = Recording(tmp_path / "r.jsonl", mode="record")
    adapter = make(provider, faulty(api, malformed=1.0, malformed_kind=kind), recording=recording)
    with pytest.raises(ServerError, match="malformed") as caught:
        adapter.top_labels(IMAGE)
    assert caught.value.retryable and caught.value.provider == adapter.name
    assert len(recording) == 0 and not (tmp_path / "r.jsonl").exists()


def test_a_top_level_json_list_that_crashed_botocore_is_typed_with_its_cause(api):
    """botocore raises AttributeError on it; it used to escape untyped."""
    adapter = make("aws", faulty(api, malformed=1.0, malformed_kind="list"))
    with pytest.raises(ServerError) as caught:
        adapter.top_labels(IMAGE)
    assert isinstance(caught.value.__cause__, AttributeError)


FAULTS = {
    "401": (dict(unauthorized=1.0), AuthenticationError),
    "5xx": (dict(error_5xx=1.0), ServerError),
    "drop": (dict(drop=1.0), (APIConnectionError, ServerError)),
    "timeout": (dict(timeout=1.0, timeout_seconds=3), APITimeoutError),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_fault_is_typed_and_retryable_unless_it_cannot_succeed(api, provider, fault):
    setting, expected = FAULTS[fault]
    # a short timeout only where the server stalls; elsewhere a loaded machine's slow answer
    # must not turn into a timeout
    adapter = make(provider, faulty(api, **setting), timeout=1 if fault == "timeout" else 20)
    with pytest.raises(ProviderError) as caught:
        adapter.top_labels(IMAGE)
    assert isinstance(caught.value, expected), repr(caught.value)
    assert caught.value.retryable == (fault != "401")
    # sent and abandoned unanswered: the provider may bill it (a 5xx or a drop is not billed)
    assert caught.value.possibly_billed == (fault == "timeout")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_echoed_secret_shows_in_no_message_repr_traceback_or_debug_log(
    api, provider, caplog, capfd
):
    """The server answers 401 echoing the credential it received, and every SDK logs at
    DEBUG (msrest.exceptions and botocore.parsers used to log it unredacted)."""
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "msrest", "urllib3", "google", "grpc", "aiohttp", "smoothapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    adapter = make(provider, faulty(api, unauthorized=1.0))
    with pytest.raises(AuthenticationError) as caught:
        adapter.top_labels(IMAGE)
    error = caught.value
    shown = "".join(traceback.format_exception(error)) + repr(error) + repr(adapter)
    out, err = capfd.readouterr()
    secret = SECRETS[provider]
    assert "<redacted>" in str(error)  # the server did echo it: the test can fail
    for text in (shown, caplog.text, out, err):
        assert secret not in text
        assert AWS_SECRET not in text


@pytest.mark.parametrize("provider", ["aws", "azure"])
def test_blocking_sdks_reach_max_in_flight_concurrent_requests(provider):
    """boto3 and msrest run in the adapter's own pool of max_in_flight threads; before,
    asyncio's default pool (6 threads on 2 cores) capped them."""
    with LoopbackProvider(brightness, latency=0.4) as slow:
        adapter = make(provider, slow, max_in_flight=16)

        async def burst():
            try:
                return await asyncio.gather(*(adapter.atop_labels(IMAGE) for _ in range(16)))
            finally:
                await adapter.aclose()

        assert asyncio.run(burst()) == [["bright"]] * 16
        assert slow.stats.max_in_flight == 16


def test_a_refused_connection_is_not_billed_a_timeout_may_be():
    adapter = HTTPAdapter("http://127.0.0.1:9/classify")
    with pytest.raises(APIConnectionError) as caught:
        adapter.top_labels(IMAGE)
    assert not caught.value.possibly_billed


def test_aws_threads_are_the_adapters_own():
    adapter = RekognitionAdapter(region_name="us-east-1", max_in_flight=3)
    names = asyncio.run(adapter.in_thread(lambda: threading.current_thread().name))
    assert names.startswith("smoothapi-aws") and adapter._executor._max_workers == 3
