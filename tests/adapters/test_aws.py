"""The Rekognition adapter: botocore's Stubber on a real client, and a loopback Rekognition."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from aiohttp import web
from botocore import exceptions as botocore_exceptions
from botocore.config import Config
from botocore.stub import ANY, Stubber
from PIL import Image

from smoothapi import SmoothedClassifier
from smoothapi.adapters import aws, create_adapter
from smoothapi.adapters.aws import RekognitionAdapter, map_error
from smoothapi.adapters.remote import run_sync
from smoothapi.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidImageError,
    InvalidInputError,
    MissingDependencyError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ServerError,
)
from smoothapi.recording import Recording

from ..loopback import serve

PAYLOADS = Path(__file__).parent / "payloads" / "aws"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "certify_aws.py"
KEY_ID = "AKIAFAKEKEYID0000042"
SECRET = "FakeSecretKey/do-not-leak+0123456789abcdefXYZ"
SESSION_TOKEN = "FakeSessionToken-do-not-leak-42"
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_REKOGNITION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


@pytest.fixture(autouse=True)
def no_aws_config(monkeypatch, tmp_path):
    """No credentials, profile or region from this machine; never ask instance metadata."""
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def stubbed(**options) -> tuple[RekognitionAdapter, Stubber]:
    client = boto3.client(
        "rekognition",
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"total_max_attempts": 1}),
    )
    stubber = Stubber(client)
    stubber.activate()
    return RekognitionAdapter(client=client, **options), stubber


def with_metadata(body: dict) -> dict:
    return {
        **body,
        "ResponseMetadata": {
            "RequestId": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
            "HTTPStatusCode": 200,
            "HTTPHeaders": {"x-amzn-requestid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001"},
            "RetryAttempts": 0,
        },
    }


def names(ranked):
    return [label for label, _ in ranked]


# --- parse ----------------------------------------------------------------------------


def test_ties_go_to_the_most_specific_label_then_alphabetically():
    ranked = RekognitionAdapter.parse(payload("vulture_ties"))
    assert names(ranked) == [
        "Vulture", "Bird", "Animal", "Beak", "Cloud", "Sky", "Outdoors", "Nature"
    ]  # fmt: skip
    assert ranked[0] == ("Vulture", pytest.approx(0.9963))
    assert all(0 <= score <= 1 for _, score in ranked)
    car = RekognitionAdapter.parse(payload("car"))
    assert names(car) == ["Car", "Vehicle", "Transportation", "Wheel", "Machine", "Tire"]


def test_parse_does_not_trust_the_response_order_and_survives_odd_bodies():
    body = payload("vulture_ties")
    expected = RekognitionAdapter.parse(body)
    for seed in range(3):
        shuffled = list(body["Labels"])
        np.random.default_rng(seed).shuffle(shuffled)
        assert RekognitionAdapter.parse({"Labels": shuffled}) == expected
    assert RekognitionAdapter.parse(payload("empty")) == []
    with pytest.raises(KeyError):  # not DetectLabels' shape: a malformed answer, no sample
        RekognitionAdapter.parse({})
    cycle = {
        "Labels": [
            {"Name": "B", "Confidence": 50.0, "Parents": [{"Name": "A"}]},
            {"Name": "A", "Confidence": 50.0, "Parents": [{"Name": "B"}]},
            {"Name": "C", "Confidence": 101.0, "Parents": []},
        ]
    }
    assert RekognitionAdapter.parse(cycle)[0] == ("C", 1.0)
    assert sorted(names(RekognitionAdapter.parse(cycle))) == ["A", "B", "C"]


# --- through botocore's Stubber on a real client --------------------------------------


def test_stubbed_request_parameters_response_and_batching():
    adapter, stubber = stubbed(max_labels=25, min_confidence=40)
    expected = {"Image": {"Bytes": ANY}, "MaxLabels": 25, "MinConfidence": 40.0}
    for name in ("vulture_ties", "car", "empty"):
        stubber.add_response("detect_labels", with_metadata(payload(name)), expected)
    labels = adapter.top_labels(torch.rand(3, 3, 90, 90))
    assert labels == ["Vulture", "Car", None]  # one request per image, in order
    stubber.assert_no_pending_responses()
    stubber.add_response("detect_labels", with_metadata(payload("car")), expected)
    (body,) = run_sync(adapter.send_encoded([adapter.encode(torch.rand(3, 90, 90))]))
    assert "ResponseMetadata" not in body and body["LabelModelVersion"] == "3.0"
    assert adapter.request_params() == {
        "operation": "DetectLabels", "max_labels": 25, "min_confidence": 40.0
    }  # fmt: skip


def test_default_request_leaves_optional_parameters_out():
    adapter, stubber = stubbed()
    stubber.add_response("detect_labels", payload("car"), {"Image": {"Bytes": ANY}})
    assert adapter.ranked_labels(torch.rand(3, 100, 100))[0][0] == "Car"


ERROR_CASES = [
    ("ThrottlingException", 400, RateLimitError),
    ("ProvisionedThroughputExceededException", 400, RateLimitError),
    ("LimitExceededException", 400, RateLimitError),
    ("AccessDeniedException", 400, PermissionDeniedError),
    ("UnrecognizedClientException", 400, AuthenticationError),
    ("InvalidSignatureException", 400, AuthenticationError),
    ("ExpiredTokenException", 400, AuthenticationError),
    ("InvalidImageFormatException", 400, InvalidImageError),
    ("ImageTooLargeException", 400, InvalidImageError),
    ("InvalidParameterException", 400, BadRequestError),
    ("InternalServerError", 500, ServerError),
    ("ServiceUnavailable", 503, ServerError),
    ("SomethingNewException", 502, ServerError),  # unknown code: by status
    ("SomethingElseException", 404, BadRequestError),
]


@pytest.mark.parametrize(("code", "status", "expected"), ERROR_CASES)
def test_service_errors_map_to_the_tree(code, status, expected):
    adapter, stubber = stubbed()
    stubber.add_client_error("detect_labels", code, "nope", http_status_code=status)
    with pytest.raises(expected) as caught:
        adapter.top_labels(torch.rand(1, 3, 80, 80))
    error = caught.value
    assert type(error) is expected and error.code == code and error.status == status
    assert error.provider == "aws" and str(error).startswith(f"aws: {code}: nope")
    assert error.retryable == (expected in (RateLimitError, ServerError))


def test_retry_after_header_and_signature_details_kept_out_of_messages():
    adapter, stubber = stubbed()
    stubber.add_client_error(
        "detect_labels", "ThrottlingException", "Rate exceeded", 400,
        response_meta={"HTTPHeaders": {"retry-after": "3"}},
    )  # fmt: skip
    with pytest.raises(RateLimitError) as caught:
        adapter.top_labels(torch.rand(1, 3, 80, 80))
    assert caught.value.retry_after == 3.0
    token = "IQoJb3JpZ2luX2VjEXAMPLE0123456789sessiontokenvalue"
    stubber.add_client_error(
        "detect_labels", "InvalidSignatureException",
        f"The request signature we calculated does not match.\n\nx-amz-security-token:{token}",
    )  # fmt: skip
    with pytest.raises(AuthenticationError) as denied:
        adapter.top_labels(torch.rand(1, 3, 80, 80))
    assert token not in str(denied.value) and "does not match" in str(denied.value)
    leak = map_error(
        botocore_exceptions.ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": f"key {KEY_ID} / {token}"}},
            "DetectLabels",
        )
    )
    assert KEY_ID not in str(leak) and token not in str(leak)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (botocore_exceptions.EndpointConnectionError(endpoint_url="http://x"), APIConnectionError),
        (botocore_exceptions.ConnectionClosedError(endpoint_url="http://x"), APIConnectionError),
        (botocore_exceptions.ReadTimeoutError(endpoint_url="http://x"), APITimeoutError),
        (botocore_exceptions.ConnectTimeoutError(endpoint_url="http://x"), APITimeoutError),
        (botocore_exceptions.NoCredentialsError(), AuthenticationError),
        (botocore_exceptions.NoRegionError(), BadRequestError),
        (botocore_exceptions.ParamValidationError(report="bad"), BadRequestError),
        (botocore_exceptions.DataNotFoundError(data_path="x"), ProviderError),
    ],
)
def test_botocore_exceptions_map_to_the_tree(exc, expected):
    error = map_error(exc)
    assert type(error) is expected and error.provider == "aws"
    assert error.retryable == issubclass(expected, APIConnectionError)


def test_limits_are_checked_before_sending():
    adapter, stubber = stubbed()  # no response queued: a request would fail the test
    with pytest.raises(InvalidImageError, match="5242880 bytes"):
        run_sync(adapter.send_encoded([b"\x89PNG" + bytes(5 * 1024 * 1024)]))
    with pytest.raises(InvalidImageError, match="minimum of 80 px"):
        RekognitionAdapter(client=adapter._client, small_images="reject").encode(
            torch.rand(3, 40, 40)
        )
    noisy = torch.rand(1, 6000, 6000, generator=torch.Generator().manual_seed(0))
    encoded = adapter.encode(noisy)
    assert len(encoded) <= 5 * 1024 * 1024
    assert 80 <= min(Image.open(io.BytesIO(encoded)).size) < 6000
    stubber.assert_no_pending_responses()


def test_record_then_replay_without_transport(tmp_path):
    path = tmp_path / "aws.jsonl"
    adapter, stubber = stubbed(recording=Recording(path, mode="record"))
    for name in ("vulture_ties", "car"):
        stubber.add_response("detect_labels", with_metadata(payload(name)))
    images = torch.rand(2, 3, 90, 90, generator=torch.Generator().manual_seed(3))
    assert adapter.top_labels(images) == ["Vulture", "Car"]
    text = path.read_text()
    assert "RequestId" not in text and "x-amzn-requestid" not in text
    assert KEY_ID not in text and SECRET not in text
    replayer, idle = stubbed(recording=Recording(path))  # nothing queued: no transport
    assert replayer.top_labels(images) == ["Vulture", "Car"]
    idle.assert_no_pending_responses()


# --- a loopback Rekognition: the real botocore HTTP path ------------------------------


def _brightness(image: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(image)).convert("L")).mean()) / 255


def _labels_for(image: bytes) -> dict:
    """Bright images: Sunlight (parent Light, tied). Dark ones: Night (parent Darkness, tied)."""
    bright = round(100 * _brightness(image), 2)
    dark = round(100 - bright, 2)
    return {
        "Labels": [
            {"Name": "Light", "Confidence": bright, "Parents": [], "Instances": []},
            {"Name": "Sunlight", "Confidence": bright, "Parents": [{"Name": "Light"}]},
            {"Name": "Darkness", "Confidence": dark, "Parents": []},
            {"Name": "Night", "Confidence": dark, "Parents": [{"Name": "Darkness"}]},
        ],
        "LabelModelVersion": "3.0",
    }


def _aws_error(name: str, status: int = 400, headers: dict | None = None) -> web.Response:
    body = payload(name) if name.startswith("error_") else {"__type": name, "message": "no"}
    code = body["__type"].rsplit("#", 1)[-1]
    return web.json_response(
        body,
        status=status,
        content_type="application/x-amz-json-1.1",
        headers={
            "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/",
            **(headers or {}),
        },
    )


@pytest.fixture(scope="module")
def rekognition():
    state: dict = {"mode": "labels", "requests": []}

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        state["requests"].append({"headers": dict(request.headers), "body": body})
        assert request.headers["X-Amz-Target"] == "RekognitionService.DetectLabels"
        mode = state["mode"]
        if mode == "throttle":
            return _aws_error("error_throttling", headers={"Retry-After": "2"})
        if mode == "invalid":
            return _aws_error("error_invalid_image")
        if mode == "auth":
            return _aws_error("com.amazon.coral.service#UnrecognizedClientException")
        if mode == "500":
            return _aws_error("InternalServerError", status=500)
        if mode == "slow":
            await asyncio.sleep(1.0)
        image = base64.b64decode(body["Image"]["Bytes"])
        return web.json_response(
            _labels_for(image),
            content_type="application/x-amz-json-1.1",
            headers={"x-amzn-RequestId": "11111111-2222-3333-4444-555555555555"},
        )

    app = web.Application()
    app.router.add_post("/", handle)
    with serve(app) as url:
        yield url, state


@pytest.fixture
def fake_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def loopback(url: str, **options) -> RekognitionAdapter:
    return RekognitionAdapter(region_name="us-west-2", endpoint_url=url, **options)


def test_loopback_throttling_maps_end_to_end_without_retries(rekognition, fake_credentials):
    url, state = rekognition
    state["mode"], state["requests"] = "throttle", []
    with pytest.raises(RateLimitError) as caught:
        loopback(url).top_labels(torch.rand(1, 3, 80, 80))
    error = caught.value
    assert error.code == "ThrottlingException" and error.status == 400
    assert error.retry_after == 2.0 and error.retryable
    assert len(state["requests"]) == 1  # botocore retried nothing
    headers = state["requests"][0]["headers"]
    assert headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
    assert "/us-west-2/rekognition/aws4_request" in headers["Authorization"]
    for mode, expected in [("invalid", InvalidImageError), ("500", ServerError)]:
        state["mode"], state["requests"] = mode, []
        with pytest.raises(expected):
            loopback(url).top_labels(torch.rand(1, 3, 80, 80))
        assert len(state["requests"]) == 1


def test_loopback_small_images_are_upscaled_and_certify_works(rekognition, fake_credentials):
    url, state = rekognition
    state["mode"], state["requests"] = "labels", []
    adapter = loopback(url, max_labels=10)
    assert adapter.top_labels(torch.full((1, 3, 40, 40), 0.8)) == ["Sunlight"]
    sent = base64.b64decode(state["requests"][0]["body"]["Image"]["Bytes"])
    assert min(Image.open(io.BytesIO(sent)).size) >= 80
    assert state["requests"][0]["body"]["MaxLabels"] == 10
    state["requests"] = []
    smoothed = SmoothedClassifier(adapter, 0.25, batch_size=8, device="cpu", seed=0)
    result = smoothed.certify(torch.full((3, 40, 40), 0.8), n0=4, n=12, alpha=0.05)
    assert result.label == "Sunlight" and result.radius > 0
    assert len(state["requests"]) == 16  # one request per noisy sample


def test_credentials_never_leak(rekognition, fake_credentials, monkeypatch, caplog, capfd,
                                tmp_path):  # fmt: skip
    url, state = rekognition
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "boto3", "urllib3", "smoothapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    path = tmp_path / "aws.jsonl"
    adapter = loopback(url, recording=Recording(path, mode="record"))
    state["mode"], state["requests"] = "labels", []
    assert adapter.top_labels(torch.full((2, 3, 80, 80), 0.2)) == ["Night", "Night"]
    state["mode"] = "auth"
    with pytest.raises(AuthenticationError) as denied:
        adapter.top_labels(torch.rand(1, 3, 80, 80))
    assert denied.value.code == "UnrecognizedClientException"
    assert state["requests"][0]["headers"]["X-Amz-Security-Token"] == SESSION_TOKEN
    assert "CanonicalRequest" in caplog.text  # the SDK's signing debug log was captured
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, path.read_text(), str(denied.value), repr(adapter)):
        assert SECRET not in text and SESSION_TOKEN not in text and KEY_ID not in text


def test_missing_credentials_region_and_connection_failures(rekognition, monkeypatch):
    url, state = rekognition
    state["mode"], state["requests"] = "labels", []
    with pytest.raises(AuthenticationError, match="AWS_ACCESS_KEY_ID"):
        loopback(url).top_labels(torch.rand(1, 3, 80, 80))
    assert state["requests"] == []  # nothing sent without credentials
    with pytest.raises(BadRequestError, match="AWS_REGION"):
        RekognitionAdapter(endpoint_url=url).top_labels(torch.rand(1, 3, 80, 80))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(APIConnectionError) as refused:
        loopback("http://127.0.0.1:9").top_labels(torch.rand(1, 3, 80, 80))
    assert type(refused.value) is APIConnectionError and refused.value.retryable
    state["mode"] = "slow"
    with pytest.raises(APITimeoutError):
        loopback(url, timeout=0.3).top_labels(torch.rand(1, 3, 80, 80))


# --- construction ---------------------------------------------------------------------


def test_the_client_it_builds_makes_one_attempt_with_our_timeouts(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    adapter = create_adapter("aws", timeout=12.5)
    assert isinstance(adapter, RekognitionAdapter)
    client = adapter._make_client()
    config = client.meta.config
    assert config.retries["total_max_attempts"] == 1
    assert config.connect_timeout == 12.5 and config.read_timeout == 12.5
    assert config.max_pool_connections == adapter.max_in_flight == 16  # one per pool thread
    wide = create_adapter("aws", max_in_flight=40)._make_client().meta.config
    assert wide.max_pool_connections == 40
    assert client.meta.region_name == "eu-west-1"
    assert RekognitionAdapter(region_name="ap-south-1")._make_client().meta.region_name == (
        "ap-south-1"
    )


def test_bad_options_are_refused():
    for bad in ({"max_labels": 0}, {"max_labels": 2.5}, {"min_confidence": 101}):
        with pytest.raises(InvalidInputError):
            RekognitionAdapter(**bad)


def test_missing_boto3_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'smoothapi-certified\[aws\]'"):
        RekognitionAdapter()
    monkeypatch.setitem(sys.modules, "botocore", None)
    spec = importlib.util.spec_from_file_location("smoothapi.adapters._aws_probe", aws.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the module itself imports without the SDK
    assert module.RekognitionAdapter.name == "aws"


def test_example_without_credentials_names_the_variables_and_sends_nothing(rekognition):
    url, state = rekognition
    state["requests"] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=url, AWS_DEFAULT_REGION="us-east-1", HOME="/nonexistent")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--n0", "2", "--n", "3"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode != 0
    assert "AWS_ACCESS_KEY_ID" in done.stderr and "AWS_PROFILE" in done.stderr
    assert state["requests"] == []


@pytest.mark.parametrize("code", [
    "IncompleteSignatureException", "MissingAuthenticationTokenException",
    "InvalidSignatureException", "UnrecognizedClientException", "ExpiredTokenException"])
def test_every_signature_and_token_error_is_an_authentication_error(code):
    from botocore.exceptions import ClientError

    from smoothapi.adapters.aws import map_error
    from smoothapi.errors import AuthenticationError

    status = 403 if code != "IncompleteSignatureException" else 400
    exc = ClientError({"Error": {"Code": code, "Message": "no"},
                       "ResponseMetadata": {"HTTPStatusCode": status}}, "DetectLabels")
    error = map_error(exc)
    assert type(error) is AuthenticationError and error.code == code and not error.retryable
