"""The Clarifai adapter: parsing real-shaped payloads, and the real gRPC client path against an
in-process ``grpc.aio`` server implementing Clarifai's ``V2`` service on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2
from google.protobuf import json_format
from PIL import Image

from smoothapi import SmoothedClassifier
from smoothapi.adapters import create_adapter
from smoothapi.adapters.clarifai import (
    ERROR_RANGES,
    ERRORS,
    ClarifaiAdapter,
    error_for_code,
    split_outputs,
)
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

PAYLOADS = Path(__file__).parent / "payloads" / "clarifai"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "certify_clarifai.py"
PAT = "clarifai-pat-FAKE-SECRET-7f3e9a"


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def _status(code: int, description: str = "", details: str = "") -> status_pb2.Status:
    return status_pb2.Status(code=code, description=description, details=details)


# --- the fake Clarifai ---------------------------------------------------------------


class FakeClarifai(service_pb2_grpc.V2Servicer):
    """Labels each input "bright" / "dark" by its mean pixel value, like Clarifai would
    label a photo; ``mode`` makes it throttle, fail one input, or fail the call."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.mode, self.pat, self.delay = "ok", PAT, 0.0
        self.calls: list[dict] = []

    async def PostModelOutputs(self, request, context):  # noqa: N802 (the SDK's name)
        metadata = dict(context.invocation_metadata())
        self.calls.append(
            {
                "inputs": len(request.inputs),
                "user_id": request.user_app_id.user_id,
                "app_id": request.user_app_id.app_id,
                "model_id": request.model_id,
                "version_id": request.version_id,
            }
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if metadata.get("authorization") != f"Key {self.pat}":
            return service_pb2.MultiOutputResponse(
                status=_status(status_code_pb2.CONN_KEY_INVALID, "Invalid API key")
            )
        if self.mode.startswith("grpc:"):
            await context.abort(getattr(grpc.StatusCode, self.mode[5:]), "fake failure")
        if self.mode == "throttle":
            context.set_trailing_metadata((("retry-after", "2"),))
            return service_pb2.MultiOutputResponse(
                status=_status(status_code_pb2.CONN_THROTTLED, "Making too many requests")
            )
        outputs = [self._output(index, item) for index, item in enumerate(request.inputs)]
        top = status_code_pb2.SUCCESS
        if self.mode == "mixed":
            outputs[1] = resources_pb2.Output(
                status=_status(
                    status_code_pb2.INPUT_DOWNLOAD_FAILED,
                    "Download failed",
                    "Failure decoding image",
                )
            )
            top = status_code_pb2.MIXED_STATUS
        return service_pb2.MultiOutputResponse(status=_status(top, "Ok"), outputs=outputs)

    @staticmethod
    def _output(index: int, item: resources_pb2.Input) -> resources_pb2.Output:
        pixels = np.asarray(Image.open(io.BytesIO(item.data.image.base64)).convert("L"))
        mean = float(pixels.mean()) / 255
        concepts = sorted(  # lowest first: the adapter must not trust the order
            [
                resources_pb2.Concept(id="ai_bright", name="bright", value=mean),
                resources_pb2.Concept(id="ai_dark", name="dark", value=1 - mean),
            ],
            key=lambda c: c.value,
        )
        return resources_pb2.Output(
            id=f"out{index}",
            status=_status(status_code_pb2.SUCCESS, "Ok"),
            model=resources_pb2.Model(id="general-image-recognition", app_id="main"),
            input=resources_pb2.Input(
                id=f"in{index}", data=resources_pb2.Data(image=resources_pb2.Image(base64=b"true"))
            ),
            data=resources_pb2.Data(concepts=concepts),
        )


@pytest.fixture(scope="module")
def server():
    fake, box, ready = FakeClarifai(), {}, threading.Event()
    loop = asyncio.new_event_loop()

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            box["server"] = grpc.aio.server()
            service_pb2_grpc.add_V2Servicer_to_server(fake, box["server"])
            box["port"] = box["server"].add_insecure_port("127.0.0.1:0")
            await box["server"].start()

        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    fake.target = f"127.0.0.1:{box['port']}"
    yield fake
    asyncio.run_coroutine_threadsafe(box["server"].stop(None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def fake(server):
    server.reset()
    return server


def adapter_for(fake: FakeClarifai, **options) -> ClarifaiAdapter:
    return ClarifaiAdapter(pat=PAT, target=fake.target, insecure=True, **options)


def grey(values: list[float], size: int = 8) -> torch.Tensor:
    return torch.stack([torch.full((1, size, size), v) for v in values])


# --- parsing real-shaped payloads ----------------------------------------------------


def test_parse_ranks_concepts_by_value():
    ranked = ClarifaiAdapter.parse(payload("general_train")["outputs"][0])
    assert ranked[0] == ("train", pytest.approx(0.9995))
    assert [name for name, _ in ranked[:3]] == ["train", "railway", "transportation system"]
    assert len(ranked) == 10 and all(0 <= score <= 1 for _, score in ranked)


def test_parse_does_not_trust_the_order_and_breaks_ties_alphabetically():
    ranked = ClarifaiAdapter.parse(payload("ties")["outputs"][0])
    assert ranked == [
        ("landscape", 0.997),
        ("no person", 0.997),
        ("outdoors", 0.997),
        ("nature", 0.991),
        ("sky", 0.985),
    ]


def test_parse_empty_and_sparse_outputs():
    assert ClarifaiAdapter.parse(payload("empty")["outputs"][0]) == []
    assert ClarifaiAdapter.parse({}) == []
    # MessageToDict leaves out zero values and empty names: value 0, label from the id.
    assert ClarifaiAdapter.parse(
        {"data": {"concepts": [{"id": "ai_x"}, {"name": "a", "value": 1}]}}
    ) == [("a", 1.0), ("ai_x", 0.0)]


@pytest.mark.parametrize("name", sorted(p.stem for p in PAYLOADS.glob("*.json")))
def test_fixtures_are_valid_clarifai_messages(name):
    """Every fixture parses into the SDK's MultiOutputResponse with no unknown field."""
    message = json_format.ParseDict(payload(name), service_pb2.MultiOutputResponse())
    back = json_format.MessageToDict(
        message, preserving_proto_field_name=True, use_integers_for_enums=True
    )
    assert back["status"]["code"] == payload(name)["status"]["code"]


def test_split_outputs_trims_each_output():
    [output] = split_outputs(payload("general_train"), 1)
    assert set(output) == {"id", "status", "created_at", "data"}  # no echoed input or model
    assert ClarifaiAdapter.parse(output)[0][0] == "train"


def test_mixed_status_puts_an_error_in_place_of_the_failed_output():
    results = split_outputs(payload("mixed_status"), 3)
    assert len(results) == 3
    assert ClarifaiAdapter.parse(results[0])[0][0] == "dog"
    assert isinstance(results[1], InvalidImageError) and results[1].code == "30002"
    assert "input 1" in str(results[1]) and "decoding" in str(results[1])
    assert ClarifaiAdapter.parse(results[2])[0][0] == "travel"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("throttled", RateLimitError),
        ("key_invalid", AuthenticationError),
        ("insufficient_scopes", PermissionDeniedError),
        ("model_not_found", BadRequestError),
        ("decode_failed", InvalidImageError),
        ("internal_error", ServerError),
    ],
)
def test_whole_request_failures_raise_the_mapped_error(name, error):
    body = payload(name)
    with pytest.raises(error) as caught:
        split_outputs(body, 1, retry_after=1.5)
    assert type(caught.value) is error
    assert caught.value.code == str(body["status"]["code"])
    assert body["status"]["description"] in str(caught.value)
    if error is RateLimitError:
        assert caught.value.retryable and caught.value.retry_after == 1.5


# --- the one error table -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (status_code_pb2.CONN_THROTTLED, RateLimitError),
        (status_code_pb2.CONN_TOKEN_INVALID, AuthenticationError),
        (status_code_pb2.CONN_CREDENTIALS_INVALID, AuthenticationError),
        (status_code_pb2.CONN_KEY_INVALID, AuthenticationError),
        (status_code_pb2.CONN_KEY_NOT_FOUND, AuthenticationError),
        (status_code_pb2.CONN_AUTH_METHOD_DISABLED, AuthenticationError),
        (status_code_pb2.CONN_INSUFFICIENT_SCOPES, PermissionDeniedError),
        (status_code_pb2.CONN_EXCEED_MONTHLY_LIMIT, PermissionDeniedError),
        (status_code_pb2.CONN_EXCEEDS_LIMITS, PermissionDeniedError),
        (status_code_pb2.BILLING_MISSING_TOKENS, PermissionDeniedError),
        (status_code_pb2.MODEL_PERMISSION_DENIED, PermissionDeniedError),
        (status_code_pb2.CONN_BAD_REQUEST_FORMAT, BadRequestError),
        (status_code_pb2.MODEL_DOES_NOT_EXIST, BadRequestError),
        (status_code_pb2.PREDICT_INVALID_REQUEST, BadRequestError),
        (status_code_pb2.INPUT_DOWNLOAD_FAILED, InvalidImageError),
        (status_code_pb2.INPUT_UNSUPPORTED_FORMAT, InvalidImageError),
        (status_code_pb2.INPUT_OVER_LIMIT, InvalidImageError),
        (status_code_pb2.MP_IMAGE_DECODE_ERROR, InvalidImageError),
        (status_code_pb2.FILETYPE_UNSUPPORTED, InvalidImageError),
        (status_code_pb2.MODEL_PREDICTION_FAILED, ServerError),
        (status_code_pb2.MODEL_BUSY_PLEASE_RETRY, ServerError),
        (status_code_pb2.RPC_SERVER_UNAVAILABLE, ServerError),
        (status_code_pb2.INTERNAL_SERVER_ISSUE, ServerError),
        (status_code_pb2.INTERNAL_UNCATEGORIZED, ServerError),
        (status_code_pb2.TRY_AGAIN, ServerError),
        ("UNAVAILABLE", APIConnectionError),
        ("DEADLINE_EXCEEDED", APITimeoutError),
        ("RESOURCE_EXHAUSTED", RateLimitError),
        ("UNAUTHENTICATED", AuthenticationError),
        ("PERMISSION_DENIED", PermissionDeniedError),
        ("INVALID_ARGUMENT", BadRequestError),
        ("INTERNAL", ServerError),
        ("UNKNOWN", ServerError),
    ],
)
def test_error_table(code, error):
    assert type(error_for_code(code, "x")) is error


def test_error_table_names_real_codes_and_falls_back():
    names = set(status_code_pb2.StatusCode.values()) | set(grpc.StatusCode.__members__)
    assert set(ERRORS) <= names
    assert all(first <= last for first, last, _ in ERROR_RANGES)
    assert type(error_for_code(77777, "x", http_status=503)) is ServerError
    assert type(error_for_code(77777, "x")) is ProviderError


# --- the real client path against the in-process gRPC server ---------------------------


def test_labels_follow_the_images_through_grpc(fake):
    adapter = adapter_for(fake)
    assert adapter.top_labels(grey([0.9, 0.1, 0.8])) == ["bright", "dark", "bright"]
    ranked = adapter.ranked_labels(grey([0.25])[0])
    assert ranked[0][0] == "dark" and ranked[0][1] == pytest.approx(0.75, abs=0.01)
    assert fake.calls[0] == {
        "inputs": 3,
        "user_id": "clarifai",
        "app_id": "main",
        "model_id": "general-image-recognition",
        "version_id": "",
    }


def test_model_options_reach_the_request_and_the_recording_key(fake):
    adapter = adapter_for(fake, user_id="me", app_id="mine", model_id="m", model_version_id="v1")
    adapter.top_labels(grey([0.5]))
    assert fake.calls[-1] == {
        "inputs": 1,
        "user_id": "me",
        "app_id": "mine",
        "model_id": "m",
        "version_id": "v1",
    }
    assert adapter.request_params() == {
        "user_id": "me",
        "app_id": "mine",
        "model_id": "m",
        "model_version_id": "v1",
    }


def test_300_images_go_out_as_128_128_44(fake):
    labels = adapter_for(fake).top_labels(torch.rand(300, 1, 4, 4) * 0.2)
    assert labels == ["dark"] * 300
    assert [call["inputs"] for call in fake.calls] == [128, 128, 44]


def test_throttling_is_a_rate_limit_error_with_the_servers_wait(fake):
    fake.mode = "throttle"
    with pytest.raises(RateLimitError, match="11005") as caught:
        adapter_for(fake).top_labels(grey([0.5]))
    assert caught.value.retryable and caught.value.retry_after == 2.0


def test_a_failed_input_in_a_batch_is_an_error_in_its_place(fake):
    fake.mode = "mixed"
    adapter = adapter_for(fake)
    images = [adapter.encode(image) for image in grey([0.9, 0.5, 0.1])]
    results = asyncio.run(adapter.send_encoded(images))
    assert isinstance(results[1], InvalidImageError)
    assert [adapter.parse(results[i])[0][0] for i in (0, 2)] == ["bright", "dark"]
    with pytest.raises(InvalidImageError, match="input 1") as caught:
        adapter.top_labels(grey([0.9, 0.5, 0.1]))
    assert caught.value.image_index == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("UNAVAILABLE", APIConnectionError),
        ("DEADLINE_EXCEEDED", APITimeoutError),
        ("RESOURCE_EXHAUSTED", RateLimitError),
        ("UNAUTHENTICATED", AuthenticationError),
        ("PERMISSION_DENIED", PermissionDeniedError),
        ("INVALID_ARGUMENT", BadRequestError),
        ("INTERNAL", ServerError),
    ],
)
def test_grpc_errors_are_mapped_and_not_retried(fake, code, error):
    fake.mode = f"grpc:{code}"
    with pytest.raises(error, match=code) as caught:
        adapter_for(fake).top_labels(grey([0.5]))
    assert type(caught.value) is error and caught.value.code == code
    assert len(fake.calls) == 1  # no gRPC retry, even for UNAVAILABLE


def test_no_server_and_a_slow_server(fake):
    closed = ClarifaiAdapter(pat=PAT, target="127.0.0.1:1", insecure=True, timeout=5)
    with pytest.raises(APIConnectionError):
        closed.top_labels(grey([0.5]))
    fake.delay = 1.0
    with pytest.raises(APITimeoutError):
        adapter_for(fake, timeout=0.2).top_labels(grey([0.5]))


def test_smoothed_classifier_certifies_through_grpc(fake):
    smoothed = SmoothedClassifier(adapter_for(fake), 0.25, seed=0)
    result = smoothed.certify(torch.full((3, 16, 16), 0.9), n0=10, n=50)
    assert result.label == "bright" and result.radius > 0
    assert sum(call["inputs"] for call in fake.calls) == 60


def test_record_then_replay_needs_no_server(fake, tmp_path):
    path = tmp_path / "clarifai.jsonl"
    image = torch.full((3, 16, 16), 0.8)
    recorded = SmoothedClassifier(
        adapter_for(fake, recording=Recording(path, mode="record")), 0.25, seed=0
    ).certify(image, n0=10, n=30)
    sent = len(fake.calls)
    offline = ClarifaiAdapter(
        pat="unused", target="127.0.0.1:1", insecure=True, recording=Recording(path)
    )
    replayed = SmoothedClassifier(offline, 0.25, seed=0).certify(image, n0=10, n=30)
    assert replayed == recorded and len(fake.calls) == sent
    assert "general-image-recognition" not in path.read_text()  # trimmed: no model echo


def test_the_token_never_shows(fake, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    for name in ("grpc", "asyncio", "urllib3", "smoothapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    path = tmp_path / "secret.jsonl"
    adapter = adapter_for(fake, recording=Recording(path, mode="record"))
    assert adapter.top_labels(grey([0.9, 0.1])) == ["bright", "dark"]
    fake.pat = "a-different-token"
    with pytest.raises(AuthenticationError) as caught:
        adapter.top_labels(grey([0.3]))
    fake.pat, fake.mode = PAT, "grpc:UNAUTHENTICATED"
    with pytest.raises(AuthenticationError, match="gRPC UNAUTHENTICATED") as grpc_caught:
        adapter_for(fake).top_labels(grey([0.3]))
    out, err = capfd.readouterr()
    shown = [
        caplog.text,
        out,
        err,
        repr(adapter),
        str(adapter.identity()),
        str(caught.value),
        repr(caught.value),
        str(grpc_caught.value),
        path.read_text(),
    ]
    assert all(PAT not in text for text in shown)
    assert "general-image-recognition" in repr(adapter)


def test_token_from_the_environment_or_a_clear_error(fake, monkeypatch):
    monkeypatch.setenv("CLARIFAI_PAT", PAT)
    adapter = create_adapter("clarifai", target=fake.target, insecure=True)
    assert isinstance(adapter, ClarifaiAdapter) and adapter.top_labels(grey([1.0])) == ["bright"]
    monkeypatch.delenv("CLARIFAI_PAT")
    with pytest.raises(AuthenticationError, match="CLARIFAI_PAT"):
        ClarifaiAdapter()


def test_missing_sdk_names_the_extra(monkeypatch):
    for module in (
        "grpc",
        "clarifai_grpc",
        "clarifai_grpc.grpc.api.service_pb2",
        "clarifai_grpc.grpc.api.resources_pb2",
    ):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(
        MissingDependencyError, match=r"pip install 'smoothapi-certified\[clarifai\]'"
    ):
        ClarifaiAdapter(pat=PAT)


# --- limits ----------------------------------------------------------------------------


def test_limits_and_batch_size():
    assert ClarifaiAdapter.max_batch == 128
    assert ClarifaiAdapter.limits.max_bytes == 20_000_000
    assert ClarifaiAdapter.limits.max_pixels == 85_000_000
    assert ClarifaiAdapter.limits.min_side == 1  # no documented minimum


def test_a_40_pixel_image_is_sent_as_it_is():
    adapter = ClarifaiAdapter(pat=PAT)
    assert Image.open(io.BytesIO(adapter.encode(torch.rand(3, 40, 40)))).size == (40, 40)


def test_a_noisy_6000_pixel_image_fits_20_megabytes():
    # Grey, to keep it fast: 36 MB of raw noise that barely compresses.
    adapter = ClarifaiAdapter(pat=PAT)
    noisy = torch.rand(1, 6000, 6000, generator=torch.Generator().manual_seed(0))
    encoded = adapter.encode(noisy)
    assert len(encoded) <= 20_000_000
    width, height = Image.open(io.BytesIO(encoded)).size
    assert width == height and width * height <= 85_000_000 and width < 6000


# --- the example -----------------------------------------------------------------------


def test_example_without_credentials_names_the_variable_and_sends_nothing(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "def _guard(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo') or (\n"
        "        event == 'import' and str(args[0]).split('.')[0] in ('grpc', 'clarifai_grpc')):\n"
        "        raise RuntimeError('NETWORK ATTEMPT: ' + event)\n"
        "sys.addaudithook(_guard)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLARIFAI", "PYTHON"))}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode != 0
    assert "CLARIFAI_PAT" in done.stderr
    assert "NETWORK ATTEMPT" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
