"""Azure AI Vision: parsing on payloads, both transports against a loopback Azure."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from aiohttp import web
from PIL import Image

from smoothapi import SmoothedClassifier
from smoothapi.adapters import create_adapter
from smoothapi.adapters.azure import API_VERSIONS, AzureVisionAdapter, map_error
from smoothapi.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidImageError,
    InvalidInputError,
    MissingDependencyError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from smoothapi.recording import Recording

from ..loopback import serve

KEY = "azkey-TOPSECRET-5f3c9a7e1b2d4c6e8f0a"
WRONG_KEY = "azkey-WRONGSECRET-0000aaaa1111bbbb"
PAYLOADS = Path(__file__).parent / "payloads" / "azure"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "certify_azure.py"
APIS = ["v3.2", "4.0"]
SDK_MODULE = "azure.cognitiveservices.vision.computervision"


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


# --- a loopback Azure ---------------------------------------------------------------------


class FakeAzure:
    """Both tagging endpoints: checks the key, tags images "bright"/"dark" by brightness,
    enforces the 50 px minimum, and answers the next ``script`` entries instead when set."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict | str, dict, float]] = []
        self.url = ""

    def fail_next(self, status: int, body: dict | str, headers=None, delay: float = 0.0):
        self.script.append((status, body, dict(headers or {}), delay))

    async def handle(self, request: web.Request, api: str) -> web.Response:
        data = await request.read()
        self.requests.append(
            {
                "api": api,
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": data,
            }
        )
        if request.headers.get("Ocp-Apim-Subscription-Key") != KEY:
            return web.json_response(payload("error_401"), status=401)
        if self.script:
            status, body, headers, delay = self.script.pop(0)
            await asyncio.sleep(delay)
            if isinstance(body, str):
                return web.Response(status=status, text=body, headers=headers)
            return web.json_response(body, status=status, headers=headers)
        assert request.content_type == "application/octet-stream"
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception:
            return web.json_response(payload("error_invalid_image"), status=400)
        if min(image.size) < 50:
            return web.json_response(
                {
                    "error": {
                        "code": "InvalidRequest",
                        "message": "Image too small.",
                        "innererror": {
                            "code": "InvalidImageDimension",
                            "message": "Expected at least 50x50 pixels.",
                        },
                    }
                },
                status=400,
            )
        mean = float(np.asarray(image.convert("L")).mean()) / 255
        tags = [
            {"name": "dark", "confidence": round(1 - mean, 4)},
            {"name": "bright", "confidence": round(mean, 4)},
        ]
        metadata = {"width": image.size[0], "height": image.size[1]}
        if api == "v3.2":
            return web.json_response(
                {
                    "tags": tags,
                    "requestId": f"req-{len(self.requests)}",
                    "metadata": {**metadata, "format": "Png"},
                    "modelVersion": "2021-04-01",
                }
            )
        return web.json_response(
            {"modelVersion": "2023-10-01", "metadata": metadata, "tagsResult": {"values": tags}}
        )


@pytest.fixture(scope="module")
def azure_server():
    fake = FakeAzure()

    async def tag(request):
        return await fake.handle(request, "v3.2")

    async def analyze(request):
        return await fake.handle(request, "4.0")

    app = web.Application()
    app.router.add_post("/vision/v3.2/tag", tag)
    app.router.add_post("/computervision/imageanalysis:analyze", analyze)
    with serve(app) as url:
        fake.url = url
        yield fake


@pytest.fixture
def server(azure_server):
    azure_server.requests.clear()
    azure_server.script.clear()
    return azure_server


def adapter_for(server, api: str, **options) -> AzureVisionAdapter:
    return AzureVisionAdapter(server.url, KEY, api=api, **options)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# --- parsing --------------------------------------------------------------------------------


def test_parse_ranks_by_confidence_not_response_order():
    ranked = AzureVisionAdapter.parse(payload("v32_tags"))
    assert ranked[:3] == [("grass", 0.9987), ("outdoor", 0.9912), ("sky", 0.9768)]
    assert ranked[3:5] == [("dog", 0.9541), ("mammal", 0.9541)]  # tie: alphabetical
    assert len(ranked) == 7
    ranked40 = AzureVisionAdapter.parse(payload("v40_tags"))
    assert [name for name, _ in ranked40] == ["outdoor", "building", "city", "street", "car"]


def test_parse_ties_and_empty_answers():
    assert AzureVisionAdapter.parse(payload("v32_tie"))[:2] == [
        ("flower", 0.9702),
        ("plant", 0.9702),
    ]
    assert AzureVisionAdapter.parse(payload("v32_empty")) == []
    assert AzureVisionAdapter.parse(payload("v40_empty")) == []
    for malformed in ({}, {"tagsResult": None}, {"tags": {"name": "x"}}, {"tags": [{"name": 1}]}):
        with pytest.raises((KeyError, TypeError)):  # not Azure's shape: no sample from it
            AzureVisionAdapter.parse(malformed)


# --- the error table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body, headers, cls, code",
    [
        (401, "error_401", {}, AuthenticationError, "401"),
        (403, "error_403_quota", {}, PermissionDeniedError, "403"),
        (429, "error_429", {"Retry-After": "7"}, RateLimitError, "429"),
        (500, "error_500", {}, ServerError, "InternalServerError"),
        (503, "<html>Service Unavailable</html>", {}, ServerError, None),
        (400, "error_invalid_image", {}, InvalidImageError, "InvalidImageFormat"),
        (400, "error_v32_toplevel", {}, InvalidImageError, "InvalidImageSize"),
        (
            400,
            {"error": {"code": "InvalidArgument", "message": "bad"}},
            {},
            BadRequestError,
            "InvalidArgument",
        ),
        (
            400,
            {"error": {"code": "InvalidRequest", "message": "x"}},
            {"ms-azure-ai-errorcode": "InvalidImageDimension"},
            InvalidImageError,
            "InvalidImageDimension",
        ),
        (415, "", {}, InvalidImageError, None),
    ],
)
def test_error_mapping(status, body, headers, cls, code):
    if isinstance(body, str) and (PAYLOADS / f"{body}.json").exists():
        body = json.dumps(payload(body)).encode()
    error = map_error(status, body, headers)
    assert type(error) is cls and error.status == status and error.code == code
    assert error.provider == "azure" and str(error).startswith(f"azure: HTTP {status}")
    if cls is RateLimitError:
        assert error.retry_after == 7.0 and error.retryable


def test_an_echoed_key_is_cut_from_error_messages():
    echoed = map_error(401, {"error": {"code": "401", "message": f"bad key {KEY}"}}, secret=KEY)
    assert KEY not in str(echoed) and "<redacted>" in str(echoed)


# --- both transports against the loopback server --------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_transport_labels_one_request_per_image(server, api):
    adapter = adapter_for(server, api)
    images = torch.cat([torch.full((2, 3, 60, 60), 0.9), torch.full((1, 3, 60, 60), 0.1)])
    assert adapter.top_labels(images) == ["bright", "bright", "dark"]
    assert len(server.requests) == 3 and {r["api"] for r in server.requests} == {api}
    sent = server.requests[0]
    assert sent["body"] == adapter.encode(images[0])
    assert sent["headers"]["Ocp-Apim-Subscription-Key"] == KEY
    assert sent["headers"]["Content-Type"] == "application/octet-stream"
    assert sent["query"]["language"] == "en" and sent["query"]["model-version"] == "latest"
    if api == "4.0":
        assert sent["query"]["api-version"] == "2023-10-01"
        assert sent["query"]["features"] == "tags"
    ranked = adapter.ranked_labels(images[2])
    assert ranked[0][0] == "dark" and ranked[0][1] == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("api", APIS)
def test_transport_maps_every_status_class_without_retrying(server, api):
    adapter = adapter_for(server, api)
    image = torch.full((1, 3, 60, 60), 0.5)
    cases = [
        (403, payload("error_403_quota"), {}, PermissionDeniedError),
        (429, payload("error_429"), {"Retry-After": "7"}, RateLimitError),
        (500, payload("error_500"), {}, ServerError),
        (503, "upstream unavailable", {}, ServerError),
        (400, payload("error_invalid_image"), {}, InvalidImageError),
        (400, payload("error_v32_toplevel"), {}, InvalidImageError),
        (200, "<html>not json</html>", {}, ServerError),
    ]
    for status, body, headers, cls in cases:
        server.requests.clear()
        server.fail_next(status, body, headers)
        with pytest.raises(cls) as caught:
            adapter.top_labels(image)
        assert len(server.requests) == 1, f"{status} was retried"
        if cls is RateLimitError:
            assert caught.value.retry_after == 7.0 and caught.value.status == 429
    wrong = AzureVisionAdapter(server.url, WRONG_KEY, api=api)
    with pytest.raises(AuthenticationError) as denied:
        wrong.top_labels(image)
    assert denied.value.status == 401 and denied.value.code == "401"


@pytest.mark.parametrize("api", APIS)
def test_no_answer_is_a_connection_or_timeout_error(server, api):
    refused = AzureVisionAdapter(f"http://127.0.0.1:{closed_port()}", KEY, api=api)
    with pytest.raises(APIConnectionError) as caught:
        refused.top_labels(torch.rand(1, 3, 8, 8))
    assert caught.value.retryable and not isinstance(caught.value, APITimeoutError)
    server.fail_next(200, payload("v32_tags"), delay=1.0)
    slow = adapter_for(server, api, timeout=0.2)
    with pytest.raises(APITimeoutError):
        slow.top_labels(torch.rand(1, 3, 8, 8))


def test_the_sdk_itself_times_out_and_keeps_retries_off(server):
    adapter = adapter_for(server, "v3.2", timeout=0.2)
    config = adapter._client.config
    assert config.connection.timeout == 0.2 and config.retry_policy().total == 0
    assert config.enable_http_logger is False
    server.fail_next(200, payload("v32_tags"), delay=1.0)
    with pytest.raises(APITimeoutError):
        adapter._tag_v32(adapter.encode(torch.rand(3, 60, 60)))  # the blocking SDK call


@pytest.mark.parametrize("api", APIS)
def test_small_images_are_upscaled_to_the_minimum(server, api):
    adapter = adapter_for(server, api)
    assert adapter.top_labels(torch.full((1, 3, 40, 40), 0.8)) == ["bright"]
    assert min(decode(server.requests[0]["body"]).size) >= API_VERSIONS[api].min_side > 50


def test_a_noisy_6000_pixel_image_fits_the_v32_byte_limit():
    adapter = AzureVisionAdapter("http://127.0.0.1:9", KEY)
    noisy = 0.5 + 0.25 * torch.randn((1, 6000, 6000), generator=torch.Generator().manual_seed(0))
    encoded = adapter.encode(noisy)
    assert len(encoded) <= adapter.limits.max_bytes < 4_000_000
    width, height = decode(encoded).size
    assert width == height and 51 <= width < 6000


def test_certify_end_to_end_and_record_then_replay(server, tmp_path):
    path = tmp_path / "azure.jsonl"
    recorded = adapter_for(server, "v3.2", recording=Recording(path, mode="record"))
    image = torch.full((3, 16, 16), 0.9)
    with SmoothedClassifier(recorded, 0.25, seed=0) as smoothed:
        result = smoothed.certify(image, n0=4, n=20, alpha=0.01)
    assert result.label == "bright" and result.radius > 0
    assert len(server.requests) == 24
    lines = path.read_text().splitlines()
    assert len(lines) == 24 and json.loads(lines[0])["responses"][0]["tags"]
    # Replay: no credentials, no server, the same certificate.
    replay = AzureVisionAdapter(api="v3.2", recording=Recording(path))
    with SmoothedClassifier(replay, 0.25, seed=0) as smoothed:
        again = smoothed.certify(image, n0=4, n=20, alpha=0.01)
    assert (again.label, again.radius) == (result.label, result.radius)
    assert len(server.requests) == 24


def test_the_key_never_reaches_logs_stderr_errors_or_recordings(server, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    for name in ("msrest", "urllib3", "requests", "aiohttp", "asyncio", "azure"):
        caplog.set_level(logging.DEBUG, logger=name)
    path = tmp_path / "secret.jsonl"
    errors = []
    for api in APIS:
        adapter = adapter_for(server, api, recording=Recording(path, mode="record"))
        assert adapter.top_labels(torch.full((1, 3, 60, 60), 0.7)) == ["bright"]
        server.fail_next(401, payload("error_401"))
        with pytest.raises(AuthenticationError) as caught:
            adapter.top_labels(torch.full((1, 3, 60, 60), 0.3))
        errors += [caught.value, repr(adapter), str(vars(adapter).get("endpoint"))]
        wrong = AzureVisionAdapter(server.url, WRONG_KEY, api=api)
        with pytest.raises(AuthenticationError) as denied:
            wrong.top_labels(torch.full((1, 3, 60, 60), 0.3))
        errors += [denied.value, repr(wrong)]
    assert any(r["headers"].get("Ocp-Apim-Subscription-Key") == KEY for r in server.requests)
    assert any(r.name.startswith("msrest") for r in caplog.records)  # DEBUG logging was live
    out, err = capfd.readouterr()
    seen = caplog.text + out + err + path.read_text() + " ".join(map(str, errors))
    assert KEY not in seen and WRONG_KEY not in seen and "TOPSECRET" not in seen


# --- construction ---------------------------------------------------------------------------


def test_credentials_from_the_environment_and_missing(monkeypatch, server):
    for name in ("AZURE_VISION_ENDPOINT", "AZURE_VISION_KEY", "VISION_ENDPOINT", "VISION_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AuthenticationError, match="AZURE_VISION_ENDPOINT and AZURE_VISION_KEY"):
        AzureVisionAdapter()
    monkeypatch.setenv("VISION_ENDPOINT", server.url + "/")
    monkeypatch.setenv("AZURE_VISION_KEY", KEY)
    adapter = create_adapter("azure", api="4.0")
    assert isinstance(adapter, AzureVisionAdapter) and adapter.endpoint == server.url
    assert adapter.top_labels(torch.full((1, 3, 60, 60), 0.1)) == ["dark"]
    assert adapter.request_params() != create_adapter("azure").request_params()
    with pytest.raises(InvalidInputError):
        AzureVisionAdapter(api="5.0")
    with pytest.raises(InvalidInputError):
        AzureVisionAdapter("ftp://example", KEY)


def test_missing_extra_names_the_pip_install_and_the_module_imports_without_it(monkeypatch):
    monkeypatch.setitem(sys.modules, SDK_MODULE, None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'smoothapi-certified\[azure\]'"):
        AzureVisionAdapter("http://127.0.0.1:9", KEY)
    assert AzureVisionAdapter("http://127.0.0.1:9", KEY, api="4.0").api == "4.0"
    # A fresh copy of the module imports with the SDK (and msrest) unavailable.
    monkeypatch.setitem(sys.modules, "msrest", None)
    path = Path(sys.modules["smoothapi.adapters.azure"].__file__)
    spec = importlib.util.spec_from_file_location("smoothapi.adapters._azure_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.AzureVisionAdapter.name == "azure"


def test_example_without_credentials_names_the_variables_and_sends_nothing(server, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "VISION_"))}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode != 0 and "AZURE_VISION_ENDPOINT" in done.stderr
    # With the endpoint but no key (in-process, to keep it fast): the key is named.
    for name in ("AZURE_VISION_KEY", "VISION_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_VISION_ENDPOINT", server.url)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE)])
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    with pytest.raises(SystemExit, match="AZURE_VISION_KEY"):
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert server.requests == []
