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
import json
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
    """botocore raises AttributeError on it; it used to escape untyped. Its type and
    message are kept (not the exception itself)."""
    adapter = make("aws", faulty(api, malformed=1.0, malformed_kind="list"))
    with pytest.raises(ServerError) as caught:
        adapter.top_labels(IMAGE)
    assert caught.value.cause_type == "AttributeError" and caught.value.cause_message
    assert caught.value.__cause__ is None


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


# --- round 2: secrets in chained causes, malformed entries, answer size, slow drips, pools ----


def _texts(obj, depth=0, seen=None):
    """Every string and bytes reachable from ``obj`` through attributes, dicts and sequences."""
    seen = set() if seen is None else seen
    if depth > 8 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (str, bytes, bytearray)):
        yield obj if isinstance(obj, str) else bytes(obj).decode("utf-8", "replace")
        return
    if isinstance(obj, dict):
        items = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = list(obj)
    else:
        items = list(getattr(obj, "__dict__", {}).values())
        items += [getattr(obj, name, None) for name in getattr(type(obj), "__slots__", ())]
        if isinstance(obj, BaseException):
            items += list(obj.args)
    for item in items:
        yield from _texts(item, depth + 1, seen)


def _chain(error):
    chain = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


@pytest.mark.parametrize(
    ("provider", "fault"),
    [(provider, "401") for provider in PROVIDERS] + [("aws", "drop"), ("azure", "drop")],
)
def test_no_secret_survives_in_the_error_its_causes_its_pickle_or_its_traceback(
    api, provider, fault
):
    """The server echoes the credential (401) or the SDK keeps the signed request (a drop):
    AWS ``__cause__.response['Error']['Message']`` and ``__cause__.kwargs['request']``,
    Azure v3.2 ``__cause__.response._content``, gRPC ``_trailing_metadata`` held it."""
    import pickle

    adapter = make(provider, faulty(api, **FAULTS[fault][0]), timeout=20)
    with pytest.raises(ProviderError) as caught:
        adapter.top_labels(IMAGE)
    error = caught.value
    secret = SECRETS[provider]
    shown = [repr(error), str(error), "".join(traceback.format_exception(error))]
    shown.append(pickle.dumps(error).decode("latin-1"))
    for link in _chain(error):
        shown += [repr(link), str(link), *_texts(link)]
    assert not [text for text in shown if secret in text or AWS_SECRET in text]
    # no SDK object is kept (a sync call's chain may hold the bridge's "no running loop")
    assert error.__cause__ is None
    assert all(type(link).__module__ in ("builtins", "smoothapi.errors") for link in _chain(error))
    if provider not in ("http", "azure4"):  # an SDK raised it: a redacted copy is kept
        assert error.cause_type and error.cause_type.split(".")[0] in (
            "botocore", "msrest", "azure", "google", "grpc")
    else:  # raised by the adapter itself, from an HTTP status
        assert error.cause_type is None
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is type(error) and restored.cause_message == error.cause_message


class _Bad:
    """A model whose top entry is ``(label, score)``: what a broken server would send."""

    def __init__(self, label, score):
        self.entry = (label, score)

    def __call__(self, images):
        return [[self.entry, ("ok", 0.5)] for _ in images]


MALFORMED_ENTRIES = {
    "empty-label": ("", 0.9),
    "null-label": (None, 0.9),
    "nan-score": ("cat", float("nan")),
    "inf-score": ("cat", float("inf")),
}


@pytest.mark.parametrize("entry", MALFORMED_ENTRIES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_malformed_entry_is_a_malformed_answer_never_a_sample(provider, entry, tmp_path):
    """Before: HTTP certified ``{"label": null}`` as 'None', NaN or infinite scores ranked by
    response order, AWS / Azure / Google dropped a nameless entry and Clarifai named it ''."""
    recording = Recording(tmp_path / "r.jsonl", mode="record")
    with LoopbackProvider(_Bad(*MALFORMED_ENTRIES[entry])) as server:
        adapter = make(provider, server, recording=recording, timeout=20)
        with pytest.raises(ServerError, match="malformed") as caught:
            adapter.top_labels(IMAGE)
    assert caught.value.retryable and len(recording) == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_answer_over_max_response_bytes_is_a_retryable_error(api, provider, tmp_path):
    from smoothapi.errors import ResponseTooLargeError

    recording = Recording(tmp_path / "r.jsonl", mode="record")
    adapter = make(provider, faulty(api), max_response_bytes=16, recording=recording)
    with pytest.raises(ResponseTooLargeError, match="16 bytes") as caught:
        adapter.top_labels(IMAGE)
    assert caught.value.retryable and isinstance(caught.value, ServerError)
    assert len(recording) == 0
    assert make(provider, api).max_response_bytes >= 4 * 1024 * 1024  # a documented default


@pytest.fixture(scope="module")
def endless():
    """Answers any POST 200 with an endless JSON body (no Content-Length), 64 KiB at a time,
    and counts the bytes it managed to send."""
    from aiohttp import web

    from ..loopback import serve

    sent = {"bytes": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        reply = web.StreamResponse(headers={"Content-Type": "application/json"})
        await reply.prepare(request)
        await reply.write(b'{"labels": [')
        try:
            while sent["bytes"] < 200_000_000:
                await reply.write(b'{"label": "x", "score": 0.5}, ' * 2048)
                sent["bytes"] += 2048 * 30
        except (ConnectionError, RuntimeError):
            pass
        return reply

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    with serve(app) as url:
        yield url, sent


class _Everywhere:
    """A server answering every path alike, as ``make`` asks a LoopbackProvider for URLs."""

    def __init__(self, base: str) -> None:
        self.base = base

    def url(self, api: str = "generic") -> str:
        return self.base + "/any"


@pytest.mark.parametrize("provider", ["http", "azure", "azure4", "aws"])
def test_an_endless_answer_is_cut_at_the_limit_not_read_whole(endless, provider):
    """Before, a 50 MB body was read whole (and then failed to parse, or timed out)."""
    from smoothapi.errors import ResponseTooLargeError

    url, sent = endless
    sent["bytes"] = 0
    adapter = make(provider, _Everywhere(url), max_response_bytes=1_000_000, timeout=20)
    with pytest.raises(ResponseTooLargeError):
        adapter.top_labels(IMAGE)
    assert sent["bytes"] < 40_000_000  # what the socket buffers took, not the 200 MB


@pytest.mark.parametrize("provider", ["aws", "azure"])
def test_a_dripping_answer_lets_go_at_the_deadline_and_only_sent_requests_are_billed(provider):
    """Four calls at once on an adapter of max_in_flight=2, against a server dripping each
    answer a byte every 0.3 s. Before: four APITimeoutErrors (all possibly billed) while two
    requests reached the server, and the two threads kept reading for a minute."""
    import time

    with LoopbackProvider(brightness, faults=Faults(drip=1.0, drip_seconds=0.3)) as server:
        adapter = make(provider, server, timeout=1.5, max_in_flight=2)

        async def four():
            try:
                return await asyncio.gather(
                    *(adapter.atop_labels(IMAGE) for _ in range(4)), return_exceptions=True
                )
            finally:
                await adapter.aclose()

        errors = asyncio.run(four())
        assert all(isinstance(e, APITimeoutError) for e in errors), errors
        until = time.monotonic() + 3
        while server.stats.in_flight and time.monotonic() < until:
            time.sleep(0.05)
        assert server.stats.in_flight == 0  # every connection was let go at the deadline
        assert sum(e.possibly_billed for e in errors) == server.stats.requests


@pytest.mark.parametrize("provider", ["aws", "azure"])
def test_a_client_limit_above_the_adapters_default_is_reached(provider):
    """RateLimits(max_in_flight=32) used to be held to the adapter's 16 (AWS) or 8 (Azure)
    threads."""
    from smoothapi.dispatch import Dispatcher, RateLimits

    with LoopbackProvider(brightness, latency=1.0) as slow:
        adapter = make(provider, slow, timeout=30)
        assert adapter.max_in_flight < 32
        limits = RateLimits(max_in_flight=32, requests_per_second=1000)
        dispatcher = Dispatcher(adapter, batch_size=32, limits=limits)

        async def burst():
            try:
                return await dispatcher.counts(lambda index, size: IMAGE.repeat(size, 1, 1, 1), 32)
            finally:
                await adapter.aclose()

        assert asyncio.run(burst()) == {"bright": 32}
        assert slow.stats.max_in_flight == 32


@pytest.fixture(scope="module")
def two_origins():
    """Two loopback servers on two ports (two origins). The first redirects every POST as
    ``state["redirect"]`` says, to its own origin or to the second; both answer a POST to
    ``/answer`` as every REST wire format would, and note what each request carried."""
    from aiohttp import web

    from ..loopback import serve

    state: dict = {"redirect": (307, "same"), "seen": []}

    def app(name: str) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            state["seen"].append({"server": name, "method": request.method, "body": len(body),
                                  "headers": dict(request.headers),
                                  "query": dict(request.query)})
            if request.path != "/answer":
                status, where = state["redirect"]
                base = state["urls"][0 if where == "same" else 1]
                location = f"{base}/answer?{request.query_string}"  # the query, key and all
                return web.Response(status=status, headers={"Location": location})
            if not body:
                return web.json_response({"error": "no image"}, status=400)
            labels = [{"label": "bright", "score": 0.9}]
            return web.json_response({
                "labels": labels, "tags": [{"name": "bright", "confidence": 0.9}],
                "tagsResult": {"values": [{"name": "bright", "confidence": 0.9}]}})

        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", handle)
        return application

    with serve(app("first")) as first, serve(app("second")) as second:
        state["urls"] = (first, second)
        yield state


def _redirecting(provider, state, monkeypatch):
    """``provider``'s adapter pointed at the first server, with its key in a header and, for
    the HTTP adapter, in the query too (``query_env``)."""
    first = state["urls"][0]
    key = SECRETS[provider]
    if provider == "http":
        monkeypatch.setenv("LOOPBACK_QUERY_KEY", key + "-q")
        return HTTPAdapter(first + "/classify", headers={"Authorization": f"Bearer {key}"},
                           query_env={"key": "LOOPBACK_QUERY_KEY"}, timeout=20)
    return AzureVisionAdapter(first, key, api="v3.2" if provider == "azure" else "4.0",
                              timeout=20)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("provider", ["http", "azure", "azure4"])
def test_a_redirect_to_another_origin_is_refused_and_gets_no_credentials(
    two_origins, provider, status, monkeypatch
):
    """Before: a 301 was followed to the other host as a GET, with the key (header and
    query), and its answer counted as a sample."""
    from smoothapi.errors import RedirectError

    two_origins["redirect"], two_origins["seen"] = (status, "other"), []
    adapter = _redirecting(provider, two_origins, monkeypatch)
    with pytest.raises(RedirectError) as caught:
        adapter.top_labels(IMAGE)
    error = caught.value
    other = two_origins["urls"][1].removeprefix("http://")
    assert other in str(error) and not error.retryable and error.status == status
    assert SECRETS[provider] not in str(error) + repr(error)
    reached = [seen for seen in two_origins["seen"] if seen["server"] == "second"]
    assert not [seen for seen in reached if SECRETS[provider] in json.dumps(seen)]
    assert not reached  # nothing at all was sent there


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("provider", ["http", "azure", "azure4"])
def test_a_same_origin_redirect_is_followed_only_with_its_method_and_body(
    two_origins, provider, status, monkeypatch
):
    """307 and 308 keep the method and body (HTTP adapter, Azure 4.0); 301, 302 and 303 would
    turn the POST into a body-less GET, whose answer is never a sample. Azure v3.2 (msrest)
    follows none."""
    from smoothapi.errors import RedirectError

    two_origins["redirect"], two_origins["seen"] = (status, "same"), []
    adapter = _redirecting(provider, two_origins, monkeypatch)
    if status in (307, 308) and provider != "azure":
        assert adapter.top_labels(IMAGE) == ["bright"]
        answered = two_origins["seen"][-1]
        assert answered["method"] == "POST" and answered["body"] > 0
    else:
        with pytest.raises(RedirectError) as caught:
            adapter.top_labels(IMAGE)
        assert not caught.value.retryable
        assert all(seen["method"] == "POST" for seen in two_origins["seen"])
        assert len(two_origins["seen"]) == 1
