"""Google Cloud Vision: parsing REST payloads, and the real async gRPC client against an
in-process ``grpc.aio`` server on 127.0.0.1 that labels images by brightness."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.api_core import exceptions as core_exceptions
from google.cloud import vision
from google.cloud.vision_v1.services.image_annotator.transports import (
    ImageAnnotatorGrpcAsyncIOTransport,
)
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from PIL import Image

from smoothapi import RetryPolicy, SmoothedClassifier
from smoothapi.adapters import create_adapter
from smoothapi.adapters.google import GRPC_ERRORS, GoogleVisionAdapter, map_error, map_exception
from smoothapi.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidImageError,
    MissingDependencyError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ServerError,
)
from smoothapi.recording import Recording

PAYLOADS = Path(__file__).parent / "payloads" / "google"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "certify_google.py"
SERVICE, METHOD = "google.cloud.vision.v1.ImageAnnotator", "BatchAnnotateImages"
BIG = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
STATUS = {code.value[0]: code for code in grpc.StatusCode}
SECRET = "AIzaSyFAKE-smoothapi-t0ps3cret-0123456789"


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


# --- the fake Cloud Vision service ---------------------------------------------------------


class FakeVision:
    """``BatchAnnotateImages`` that labels each image "bright" and "dark" by its mean
    pixel value (worst first: the order must not be trusted), honours ``maxResults``,
    refuses bytes that are no image with a per-image ``INVALID_ARGUMENT``, and can be
    told to fail images or whole requests."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: list[vision.BatchAnnotateImagesRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.image_errors: dict[int, tuple[int, str]] = {}  # position in a request
        self.abort: tuple[int, str, float | None] | None = None  # code, details, retry delay
        self.abort_when = lambda number: True  # which requests (1, 2, ...) to abort
        self.api_key: str | None = None  # when set, x-goog-api-key must match
        self.delay = 0.0

    async def annotate(self, request, context):
        self.requests.append(request)
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.metadata.append(metadata)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.api_key is not None and metadata.get("x-goog-api-key") != self.api_key:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "API key not valid. Please pass a valid API key.",
            )
        if self.abort is not None and self.abort_when(len(self.requests)):
            code, details, delay = self.abort
            trailing: tuple = ()
            if delay is not None:
                info = any_pb2.Any()
                info.Pack(
                    error_details_pb2.RetryInfo(
                        retry_delay=duration_pb2.Duration(
                            seconds=int(delay), nanos=int(delay % 1 * 1e9)
                        )
                    )
                )
                status = status_pb2.Status(code=code, message=details, details=[info])
                trailing = (("grpc-status-details-bin", status.SerializeToString()),)
            await context.abort(STATUS[code], details, trailing_metadata=trailing)
        return vision.BatchAnnotateImagesResponse(
            responses=[self._one(i, r) for i, r in enumerate(request.requests)]
        )

    def _one(self, index: int, request) -> vision.AnnotateImageResponse:
        if index in self.image_errors:
            code, message = self.image_errors[index]
            return vision.AnnotateImageResponse(error={"code": code, "message": message})
        try:
            gray = Image.open(io.BytesIO(request.image.content)).convert("L")
        except Exception:
            return vision.AnnotateImageResponse(error={"code": 3, "message": "Bad image data."})
        mean = float(np.asarray(gray).mean()) / 255
        labels = sorted([("bright", mean), ("dark", 1 - mean)], key=lambda item: item[1])
        limit = request.features[0].max_results or len(labels)
        return vision.AnnotateImageResponse(
            label_annotations=[
                {"mid": f"/m/{name}", "description": name, "score": score, "topicality": score}
                for name, score in labels[-limit:]
            ]
        )


@contextlib.contextmanager
def serve(fake: FakeVision) -> Iterator[dict[str, str]]:
    """A grpc.aio server in a thread of its own; yields its plaintext address and the
    address of a port with gRPC "local" credentials (plain TCP that carries call
    credentials such as an API key)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        server = grpc.aio.server(options=BIG)
        handler = grpc.unary_unary_rpc_method_handler(
            fake.annotate,
            request_deserializer=vision.BatchAnnotateImagesRequest.deserialize,
            response_serializer=vision.BatchAnnotateImagesResponse.serialize,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
        )
        plain = server.add_insecure_port("127.0.0.1:0")
        local = server.add_secure_port(
            "127.0.0.1:0", grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        )
        await server.start()
        return server, {"plain": f"127.0.0.1:{plain}", "local": f"127.0.0.1:{local}"}

    server, addresses = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield addresses
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeVision, dict[str, str]]]:
    fake = FakeVision()
    with serve(fake) as addresses:
        yield fake, addresses


@pytest.fixture
def fake(server) -> FakeVision:
    server[0].reset()
    return server[0]


@pytest.fixture(autouse=True)
def no_google_env(monkeypatch):
    for name in ("GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)


def client_factory(address: str):
    """The SDK's async client on a plaintext channel to ``address`` (one per event loop)."""

    def make():
        channel = grpc.aio.insecure_channel(address, options=BIG)
        return vision.ImageAnnotatorAsyncClient(
            transport=ImageAnnotatorGrpcAsyncIOTransport(channel=channel)
        )

    return make


@pytest.fixture
def adapter(server, fake) -> GoogleVisionAdapter:
    return GoogleVisionAdapter(client=client_factory(server[1]["plain"]), timeout=5)


def send(adapter: GoogleVisionAdapter, images: list[bytes]) -> list:
    async def go():
        try:
            return await adapter.send_encoded(images)
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def png(value: float, side: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), int(value * 255)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- parsing REST payloads -----------------------------------------------------------------


def test_parse_ranks_by_score_whatever_the_response_order():
    cat, sky = (GoogleVisionAdapter.parse(r) for r in payload("labels.json")["responses"])
    assert [label for label, _ in cat] == [
        "Cat",
        "Felidae",
        "Small to medium-sized cats",
        "Whiskers",
        "Animal",
        "Pet",
    ]
    assert cat[0][1] == pytest.approx(0.9734215)
    assert sky[0][0] == "Sky" and all(0 <= score <= 1 for _, score in cat + sky)


def test_ties_go_to_the_description_first_alphabetically_topicality_ignored():
    ranked = GoogleVisionAdapter.parse(payload("ties.json")["responses"][0])
    assert ranked == [
        ("Leaf", 0.90625),
        ("Plant", 0.90625),
        ("Tree", 0.90625),
        ("Flower", 0.5),
        ("Grass", 0.5),
    ]


def test_empty_response_has_no_labels():
    body = payload("empty.json")
    assert GoogleVisionAdapter.split_batch(body) == [{}]
    assert GoogleVisionAdapter.parse(body["responses"][0]) == []


def test_per_image_errors_in_a_batch_body_become_errors_in_their_place():
    ok, bad_image, internal = GoogleVisionAdapter.split_batch(payload("image_error.json"))
    assert GoogleVisionAdapter.parse(ok)[0][0] == "Car"
    assert isinstance(bad_image, InvalidImageError) and bad_image.code == "INVALID_ARGUMENT"
    assert "Bad image data." in str(bad_image) and bad_image.status == 400
    assert isinstance(internal, ServerError) and internal.retryable


def test_one_fixture_parses_alike_as_a_dict_and_through_the_sdk_message():
    body = payload("labels.json")
    message = vision.BatchAnnotateImagesResponse.from_json(json.dumps(body))
    from google.protobuf.json_format import MessageToDict

    back = MessageToDict(vision.BatchAnnotateImagesResponse.pb(message))  # as _send does
    for raw, converted in zip(
        body["responses"], GoogleVisionAdapter.split_batch(back), strict=True
    ):
        assert "labelAnnotations" in converted  # REST (camelCase) field names
        direct, via_sdk = GoogleVisionAdapter.parse(raw), GoogleVisionAdapter.parse(converted)
        assert [label for label, _ in direct] == [label for label, _ in via_sdk]
        assert [s for _, s in direct] == pytest.approx([s for _, s in via_sdk], abs=1e-6)


def test_a_rest_whole_request_error_body_maps_through_the_same_table():
    error = payload("request_error.json")["error"]
    exc = core_exceptions.from_http_status(error["code"], error["message"])
    mapped = map_exception(exc)
    assert isinstance(mapped, RateLimitError) and mapped.status == 429 and mapped.retryable


# --- the error table -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "whole", "per_image"),
    [
        (3, BadRequestError, InvalidImageError),
        (4, APITimeoutError, APITimeoutError),
        (5, BadRequestError, BadRequestError),
        (7, PermissionDeniedError, PermissionDeniedError),
        (8, RateLimitError, RateLimitError),
        (12, BadRequestError, BadRequestError),
        (13, ServerError, ServerError),
        (14, ServerError, ServerError),
        (16, AuthenticationError, AuthenticationError),
    ],
)
def test_grpc_codes_map_alike_for_whole_requests_and_single_images(
    adapter, fake, code, whole, per_image
):
    assert type(map_error(code, "x")) is whole
    fake.abort = (code, f"status {code}", None)
    with pytest.raises(ProviderError) as caught:
        send(adapter, [png(0.5)])
    assert type(caught.value) is whole and caught.value.code == GRPC_ERRORS[code][0]
    assert caught.value.status == GRPC_ERRORS[code][1] and len(fake.requests) == 1  # no retry
    fake.reset()
    fake.image_errors = {1: (code, f"image status {code}")}
    first, second = send(adapter, [png(0.2), png(0.8)])
    assert GoogleVisionAdapter.parse(first)[0][0] == "dark"
    assert type(second) is per_image and "image status" in str(second)


def test_every_grpc_code_has_a_class_and_unknown_codes_fall_back_to_http():
    assert sorted(GRPC_ERRORS) == list(range(1, 17))
    for code, (_name, status, cls) in GRPC_ERRORS.items():
        error = map_error(code, "m")
        assert isinstance(error, cls) and error.status == status
    assert isinstance(map_error(None, "m", http_status=404), BadRequestError)
    assert isinstance(map_error(99, "m", http_status=503), ServerError)
    assert isinstance(map_error(14, "failed to connect to all addresses"), APIConnectionError)


def test_rate_limit_carries_the_retry_info_delay(adapter, fake):
    fake.abort = (8, "Quota exceeded for quota metric 'Requests'", 2.5)
    with pytest.raises(RateLimitError) as caught:
        send(adapter, [png(0.5)])
    assert caught.value.retry_after == pytest.approx(2.5)
    assert len(fake.requests) == 1


def test_a_refused_connection_is_a_connection_error(fake):
    with socket_closed_port() as address:
        refused = GoogleVisionAdapter(client=client_factory(address), timeout=5)
        with pytest.raises(APIConnectionError) as caught:
            send(refused, [png(0.5)])
        assert caught.value.retryable and not isinstance(caught.value, APITimeoutError)


def test_a_slow_answer_is_a_timeout(server, fake):
    fake.delay = 1.0
    slow = GoogleVisionAdapter(client=client_factory(server[1]["plain"]), timeout=0.2)
    with pytest.raises(APITimeoutError):
        send(slow, [png(0.5)])


@contextlib.contextmanager
def socket_closed_port() -> Iterator[str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"127.0.0.1:{port}"


# --- batching, limits, the request ---------------------------------------------------------


def test_forty_images_go_out_as_16_16_8_and_labels_follow_the_images(adapter, fake):
    values = torch.tensor([0.9 if i % 3 else 0.1 for i in range(40)])
    images = values.view(40, 1, 1, 1).expand(40, 3, 8, 8).contiguous()
    assert adapter.top_labels(images) == ["bright" if v > 0.5 else "dark" for v in values]
    assert [len(r.requests) for r in fake.requests] == [16, 16, 8]
    feature = fake.requests[0].requests[0].features[0]
    assert feature.type_ == vision.Feature.Type.LABEL_DETECTION and feature.max_results == 50


def test_an_injected_client_instance_is_used_as_is_and_left_open(server, fake):
    async def go():
        client = client_factory(server[1]["plain"])()
        adapter = GoogleVisionAdapter(client=client)
        first = await adapter.atop_labels(torch.ones(1, 3, 8, 8))
        await adapter.aclose()  # closes only what the adapter made
        second = await adapter.atop_labels(torch.zeros(1, 3, 8, 8))
        await client.transport.close()
        return first + second

    assert asyncio.run(go()) == ["bright", "dark"]
    assert "auth='client'" in repr(GoogleVisionAdapter(client=lambda: None))


def test_max_results_and_model_reach_the_request_and_the_recording_key(server, fake):
    adapter = GoogleVisionAdapter(
        client=client_factory(server[1]["plain"]), max_results=1, model="builtin/latest"
    )
    (body,) = send(adapter, [png(0.75)])
    assert [a["description"] for a in body["labelAnnotations"]] == ["bright"]
    assert fake.requests[0].requests[0].features[0].model == "builtin/latest"
    assert adapter.request_params() == {
        "feature": "LABEL_DETECTION",
        "max_results": 1,
        "model": "builtin/latest",
    }


def test_a_batch_over_the_json_request_limit_is_split_in_order(adapter, fake):
    images = [png(v, side=32) for v in (0.1, 0.9, 0.2, 0.8, 0.3)]
    per_image = 4 * ((len(images[0]) + 2) // 3) + 128
    adapter.max_request_bytes = 2 * per_image + 64  # two images per request
    results = send(adapter, images)
    assert [len(r.requests) for r in fake.requests] == [2, 2, 1]
    assert [GoogleVisionAdapter.parse(r)[0][0] for r in results] == [
        "dark",
        "bright",
        "dark",
        "bright",
        "dark",
    ]
    assert (
        GoogleVisionAdapter.limits.max_bytes * 4 / 3 + 200 < GoogleVisionAdapter.max_request_bytes
    )


def two_per_request(adapter: GoogleVisionAdapter, image: bytes) -> None:
    adapter.max_request_bytes = 2 * (4 * ((len(image) + 2) // 3) + 128) + 64


def test_a_failed_later_part_of_a_split_batch_keeps_the_answers_already_paid(adapter, fake):
    images = [png(v, side=32) for v in (0.1, 0.9, 0.2, 0.8, 0.3)]
    two_per_request(adapter, images[0])
    fake.abort = (14, "The service is currently unavailable.", None)
    fake.abort_when = lambda number: number >= 2
    results = send(adapter, images)
    assert len(fake.requests) == 2  # the third part is not sent after the second failed
    assert [GoogleVisionAdapter.parse(r)[0][0] for r in results[:2]] == ["dark", "bright"]
    assert all(isinstance(r, ServerError) and r.retryable for r in results[2:])
    fake.abort_when = lambda number: True  # the first part failing fails the whole batch
    with pytest.raises(ServerError):
        send(adapter, images)


def test_a_split_batch_failing_midway_resends_only_the_images_left(server, fake):
    def smoothed() -> SmoothedClassifier:
        adapter = GoogleVisionAdapter(client=client_factory(server[1]["plain"]), timeout=5)
        two_per_request(adapter, adapter.encode(torch.rand(3, 8, 8)))
        return SmoothedClassifier(
            adapter, 0.25, seed=0, batch_size=4, retry=RetryPolicy(initial_wait=0.01)
        )

    image = torch.full((3, 8, 8), 0.9)
    clean = smoothed().predict(image, n=8, alpha=0.001)
    sent_clean = sum(len(r.requests) for r in fake.requests)
    fake.reset()
    fake.abort = (14, "The service is currently unavailable.", None)
    fake.abort_when = lambda number: number == 2  # the second part of the first batch
    faulty = smoothed()
    assert faulty.predict(image, n=8, alpha=0.001) == clean
    assert faulty.stats.retries == 1
    # the two images of the failed part are sent twice, nothing else
    assert sum(len(r.requests) for r in fake.requests) == sent_clean + 2


def test_a_40_pixel_image_is_sent_as_is_no_minimum_side(adapter, fake):
    adapter.top_labels(torch.rand(1, 3, 40, 40))
    sent = fake.requests[0].requests[0].image.content
    assert Image.open(io.BytesIO(sent)).size == (40, 40)
    assert GoogleVisionAdapter.limits.min_side == 1


def test_a_noisy_6000_pixel_image_fits_the_byte_limit():
    adapter = GoogleVisionAdapter(client=lambda: None)
    noisy = torch.rand(1, 6000, 6000, generator=torch.Generator().manual_seed(0))
    encoded = adapter.encode(noisy)
    assert len(encoded) <= adapter.limits.max_bytes
    assert len(base64.b64encode(encoded)) < adapter.max_request_bytes
    assert 1 <= max(Image.open(io.BytesIO(encoded)).size) < 6000


def test_undecodable_bytes_are_an_invalid_image_in_their_place(adapter, fake):
    good, bad = send(adapter, [png(0.9), b"not an image"])
    assert GoogleVisionAdapter.parse(good)[0][0] == "bright"
    assert isinstance(bad, InvalidImageError)
    fake.image_errors = {2: (3, "Bad image data.")}
    with pytest.raises(InvalidImageError) as caught:
        adapter.top_labels(torch.zeros(3, 1, 8, 8))
    assert caught.value.image_index == 2


# --- end to end, recording -----------------------------------------------------------------


def test_certify_end_to_end_against_the_fake(adapter, fake):
    result = SmoothedClassifier(adapter, 0.25, seed=0, batch_size=16).certify(
        torch.full((3, 16, 16), 0.9), n0=8, n=32, alpha=0.01
    )
    assert result.label == "bright" and result.radius > 0
    assert all(len(r.requests) <= 16 for r in fake.requests)


def test_record_then_replay_needs_no_transport(server, fake, tmp_path):
    path = tmp_path / "google.jsonl"
    fake.image_errors = {1: (8, "Quota exceeded")}
    recorder = GoogleVisionAdapter(
        client=client_factory(server[1]["plain"]), recording=Recording(path, mode="record")
    )
    images = [png(0.9), png(0.1), png(0.3)]
    recorded = send(recorder, images)
    assert len(fake.requests) == 1

    def no_transport():
        raise AssertionError("replay must not build a client")

    replayer = GoogleVisionAdapter(client=no_transport, recording=Recording(path))
    replayed = send(replayer, images)
    assert replayed[0] == recorded[0] and replayed[2] == recorded[2]
    assert isinstance(replayed[1], RateLimitError) and "Quota exceeded" in str(replayed[1])
    assert len(fake.requests) == 1


# --- credentials ---------------------------------------------------------------------------


def test_api_key_is_sent_but_never_logged_shown_or_recorded(
    server, fake, monkeypatch, caplog, capfd, tmp_path
):
    # The adapter builds its own client from the key (client_options={"api_key": ...}).
    # TLS is swapped for gRPC "local" credentials: plain TCP that still carries the key.
    monkeypatch.setattr(
        grpc,
        "compute_engine_channel_credentials",
        lambda call: grpc.composite_channel_credentials(
            grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP), call
        ),
    )
    caplog.set_level(logging.DEBUG)
    for name in ("google", "grpc", "urllib3", "smoothapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    monkeypatch.setenv("GOOGLE_API_KEY", SECRET)
    path = tmp_path / "rec.jsonl"
    adapter = create_adapter(
        "google", endpoint=server[1]["local"], recording=Recording(path, mode="record")
    )
    fake.api_key = SECRET
    assert adapter.top_labels(torch.full((2, 3, 8, 8), 0.8)) == ["bright", "bright"]
    assert fake.metadata[-1]["x-goog-api-key"] == SECRET  # it did go out
    fake.api_key = "the-right-key"
    with pytest.raises(AuthenticationError) as caught:
        adapter.top_labels(torch.full((1, 3, 8, 8), 0.3))
    assert caught.value.code == "UNAUTHENTICATED"
    explicit = GoogleVisionAdapter(api_key=SECRET)
    out, err = capfd.readouterr()
    records = [str(vars(record)) for record in caplog.records]  # with the SDK's extra fields
    assert any("Sending request" in record for record in records)  # SDK debug logging was on
    for text in (
        str(caught.value),
        repr(caught.value),
        repr(adapter),
        repr(explicit),
        caplog.text,
        out,
        err,
        path.read_text(),
    ):
        assert SECRET not in text
    assert "auth='api_key'" in repr(explicit)


def test_no_credentials_at_all_is_an_authentication_error_naming_the_variables(
    monkeypatch, tmp_path
):
    from google.auth.compute_engine import _metadata

    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)  # never probe the metadata server
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud login either
    adapter = GoogleVisionAdapter()  # builds nothing yet
    assert "auth='adc'" in repr(adapter)
    with pytest.raises(AuthenticationError, match="GOOGLE_APPLICATION_CREDENTIALS.*GOOGLE_API_KEY"):
        adapter.top_labels(torch.zeros(1, 3, 8, 8))


def test_missing_extra_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.vision", None)
    with pytest.raises(
        MissingDependencyError, match=r"pip install 'smoothapi-certified\[google\]'"
    ):
        GoogleVisionAdapter()


def test_example_without_credentials_names_the_variables_and_sends_nothing():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCLOUD"))}
    env["PYTHONPATH"] = str(EXAMPLE.parent)
    # Count every outgoing connection the example attempts (there must be none).
    probe = (
        "import runpy, sys\n"
        "connects = []\n"
        "sys.addaudithook(lambda e, a: connects.append(a) if e == 'socket.connect' else None)\n"
        "sys.argv = [sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    print('connects:', len(connects))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode != 0
    assert "GOOGLE_APPLICATION_CREDENTIALS" in done.stderr and "GOOGLE_API_KEY" in done.stderr
    assert "connects: 0" in done.stdout and "queries" not in done.stdout
