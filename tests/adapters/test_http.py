"""The generic HTTP adapter against a real loopback server."""

from __future__ import annotations

import base64
import io
import json
import logging

import numpy as np
import pytest
import torch
from aiohttp import web
from PIL import Image

from smoothapi import SmoothedClassifier
from smoothapi.adapters import create_adapter
from smoothapi.adapters.http import HTTPAdapter
from smoothapi.errors import (
    APIConnectionError,
    AuthenticationError,
    InvalidInputError,
    RateLimitError,
    ServerError,
)
from smoothapi.recording import Recording

from ..loopback import serve

TOKEN = "Bearer very-secret-token-42"


def _brightness(data: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(data)).convert("L")).mean()) / 255


def _labels(data: bytes) -> list[dict]:
    mean = _brightness(data)
    return [{"class": "dark", "p": 1 - mean}, {"class": "bright", "p": mean}]


@pytest.fixture(scope="module")
def server():
    state = {"requests": 0, "fail": None}

    async def classify(request: web.Request) -> web.Response:
        state["requests"] += 1
        if request.headers.get("Authorization") != TOKEN:
            return web.json_response({"error": "who are you"}, status=401)
        if state["fail"] == "429":
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": "7"})
        if state["fail"] == "500":
            return web.Response(status=500, text="oops")
        if state["fail"] == "garbage":
            return web.Response(text="<html>not json")
        kind = request.query.get("kind", "raw")
        if kind == "raw":
            assert request.content_type == "image/png"
            return web.json_response({"out": {"predictions": _labels(await request.read())}})
        if kind == "multipart":
            form = await request.post()
            return web.json_response({"out": {"predictions": _labels(form["file"].file.read())}})
        body = await request.json()
        images = body["images"]
        if isinstance(images, str):
            return web.json_response({"out": {"predictions": _labels(base64.b64decode(images))}})
        assert body["model"] == "v2"
        return web.json_response({"results": [
            {"out": {"predictions": {d["class"]: d["p"] for d in _labels(base64.b64decode(i))}}}
            for i in images]})

    app = web.Application()
    app.router.add_post("/classify", classify)
    with serve(app) as url:
        yield url, state


def _adapter(url, kind="raw", **options):
    return HTTPAdapter(f"{url}/classify", query={"kind": kind}, labels_path="out.predictions",
                       label_key="class", score_key="p", headers={"Authorization": TOKEN},
                       **options)


@pytest.mark.parametrize("kind", ["raw", "multipart", "json"])
def test_each_way_of_sending_gets_labels(server, kind):
    url, state = server
    state["fail"] = None
    extra = {"send": kind, "field": "file" if kind == "multipart" else "images"}
    adapter = _adapter(url, kind, **extra)
    images = torch.cat([torch.full((1, 1, 16, 16), 0.9), torch.full((1, 1, 16, 16), 0.2)])
    assert adapter.top_labels(images) == ["bright", "dark"]
    ranked = adapter.ranked_labels(images[1])
    assert [label for label, _ in ranked] == ["dark", "bright"]


def test_batched_json_requests(server):
    url, state = server
    state["fail"] = None
    adapter = HTTPAdapter(f"{url}/classify", query={"kind": "batch"}, send="json", field="images",
                          json_extra={"model": "v2"}, max_batch=3, batch_path="results",
                          labels_path="out.predictions", headers={"Authorization": TOKEN})
    before = state["requests"]
    labels = adapter.top_labels(torch.rand(7, 3, 8, 8) * 0.2)
    assert labels == ["dark"] * 7 and state["requests"] - before == 3


def test_errors_map_to_the_tree_and_never_show_the_token(server, caplog):
    url, state = server
    caplog.set_level(logging.DEBUG)
    image = torch.rand(1, 1, 8, 8)
    state["fail"] = "429"
    with pytest.raises(RateLimitError) as caught:
        _adapter(url).top_labels(image)
    assert caught.value.retry_after == 7.0 and caught.value.status == 429
    state["fail"] = "500"
    with pytest.raises(ServerError):
        _adapter(url).top_labels(image)
    state["fail"] = "garbage"
    with pytest.raises(ServerError, match="malformed"):
        _adapter(url).top_labels(image)
    state["fail"] = None
    wrong = HTTPAdapter(f"{url}/classify", labels_path="out.predictions",
                        headers={"Authorization": "Bearer nope"})
    with pytest.raises(AuthenticationError) as denied:
        wrong.top_labels(image)
    assert "TOKEN" not in repr(_adapter(url)) and TOKEN not in repr(_adapter(url))
    assert TOKEN not in caplog.text and TOKEN not in str(denied.value)


def test_connection_refused_is_a_retryable_connection_error():
    adapter = HTTPAdapter("http://127.0.0.1:9/classify")
    with pytest.raises(APIConnectionError) as caught:
        adapter.top_labels(torch.rand(1, 1, 8, 8))
    assert caught.value.retryable


def test_headers_from_the_environment(monkeypatch, server, tmp_path):
    url, state = server
    state["fail"] = None
    monkeypatch.setenv("MODEL_TOKEN", TOKEN)
    adapter = create_adapter("http", url=f"{url}/classify", labels_path="out.predictions",
                             label_key="class", score_key="p",
                             header_env={"Authorization": "MODEL_TOKEN"},
                             recording=Recording(tmp_path / "http.jsonl", mode="record"))
    smoothed = SmoothedClassifier(adapter, 0.1, batch_size=10, device="cpu", seed=0)
    result = smoothed.certify(torch.full((1, 12, 12), 0.85), n0=5, n=20, alpha=0.05)
    assert result.label == "bright"
    assert TOKEN not in (tmp_path / "http.jsonl").read_text()
    assert json.loads((tmp_path / "http.jsonl").read_text().splitlines()[0])["provider"] == "http"
    monkeypatch.delenv("MODEL_TOKEN")
    with pytest.raises(InvalidInputError, match="MODEL_TOKEN"):
        HTTPAdapter(url, header_env={"Authorization": "MODEL_TOKEN"})


def test_parse_shapes_and_bad_options():
    adapter = HTTPAdapter("http://127.0.0.1:1/", labels_path="a.0.b")
    assert adapter.parse({"a": [{"b": [["x", 0.2], ["y", 0.7]]}]}) == [("y", 0.7), ("x", 0.2)]
    assert adapter.parse({"a": [{"b": {"x": 0.5, "w": 0.5}}]}) == [("w", 0.5), ("x", 0.5)]
    assert adapter.parse({"a": [{"b": []}]}) == []
    with pytest.raises(ServerError, match="no labels"):
        adapter.parse({"a": []})
    with pytest.raises(InvalidInputError):
        HTTPAdapter("http://x", send="carrier-pigeon")
    with pytest.raises(InvalidInputError):
        HTTPAdapter("http://x", max_batch=4)


# --- secrets in the query, Retry-After on any status, body templates, bad-image 4xx ---------


@pytest.fixture(scope="module")
def echo():
    """A server that answers with what it received, or the status and body asked for."""
    seen = {}

    async def handle(request: web.Request) -> web.Response:
        seen["query"] = dict(request.query)
        seen["body"] = await request.json() if request.content_type == "application/json" else None
        status = int(request.query.get("status", 200))
        if status != 200:
            return web.Response(status=status, text=request.query.get("say", "no"),
                                headers={"Retry-After": "3"})
        body = seen["body"] or {}
        count = len(body["instances"]) if "instances" in body else 1
        return web.json_response({"results": [{"labels": {"ok": 1.0}}] * count,
                                  "labels": {"ok": 1.0}})

    app = web.Application()
    app.router.add_post("/m", handle)
    with serve(app) as url:
        yield f"{url}/m", seen


def test_a_secret_in_the_url_query_is_refused_and_query_env_keeps_it_out_of_everything(
    echo, monkeypatch, tmp_path
):
    url, seen = echo
    with pytest.raises(InvalidInputError, match="query_env"):
        HTTPAdapter(f"{url}?key=abcdef123456")
    monkeypatch.setenv("MODEL_KEY", "query-secret-0042")
    adapter = HTTPAdapter(url, query_env={"key": "MODEL_KEY"},
                          recording=Recording(tmp_path / "q.jsonl", mode="record"))
    assert adapter.top_labels(torch.rand(1, 1, 8, 8)) == ["ok"]
    assert seen["query"] == {"key": "query-secret-0042"}  # sent
    stored = (repr(adapter) + json.dumps(adapter.identity()) + json.dumps(adapter.request_params())
              + (tmp_path / "q.jsonl").read_text())
    assert "query-secret-0042" not in stored


@pytest.mark.parametrize("status", [429, 503, 502])
def test_retry_after_is_kept_on_any_status_that_sends_it(echo, status):
    url, _ = echo
    with pytest.raises((RateLimitError, ServerError)) as caught:
        HTTPAdapter(url, query={"status": str(status)}).top_labels(torch.rand(1, 1, 8, 8))
    assert caught.value.retry_after == 3.0 and caught.value.retryable


def test_body_templates_put_base64_images_at_a_json_path(echo):
    url, seen = echo
    single = HTTPAdapter(url, send="json", field="instances.0.image.b64",
                         json_extra={"signature_name": "serve"})
    assert single.top_labels(torch.rand(1, 1, 8, 8)) == ["ok"]
    body = seen["body"]
    assert body["signature_name"] == "serve" and list(body["instances"][0]) == ["image"]
    assert base64.b64decode(body["instances"][0]["image"]["b64"])[:4] == b"\x89PNG"
    batch = HTTPAdapter(url, send="json", field="instances.*.b64", max_batch=4,
                        json_extra={"instances": [{"kind": "png"}]}, labels_path="labels")
    assert batch.top_labels(torch.rand(6, 1, 8, 8)) == ["ok"] * 6  # 4 + 2 in two requests
    assert [sorted(item) for item in seen["body"]["instances"]] == [["b64", "kind"]] * 2
    assert single.json_extra == {"signature_name": "serve"}  # the template is not mutated


@pytest.mark.parametrize(("status", "say", "bad_image"), [
    (400, "Invalid image: cannot decode", True), (422, "image too large", True),
    (415, "unsupported image format", True), (400, "missing field 'model'", False)])
def test_a_4xx_that_says_the_image_is_bad_is_an_invalid_image_error(echo, status, say, bad_image):
    from smoothapi.errors import BadRequestError, InvalidImageError

    url, _ = echo
    with pytest.raises(BadRequestError) as caught:
        HTTPAdapter(url, query={"status": str(status), "say": say}).top_labels(
            torch.rand(1, 1, 8, 8))
    assert isinstance(caught.value, InvalidImageError) == bad_image


@pytest.mark.parametrize("query", [
    "key=abcdef123456", "client_secret=abcdef123456", "private_token=abcdef123456",
    "hapikey=abcdef123456", "X-Amz-Signature=abcdef123456", "kind=raw"])
def test_the_url_takes_no_query_string_at_all(query):
    """Before, only ?key= and a few names were refused: client_secret, private_token,
    hapikey, X-Amz-Signature went into repr and identity() (the journal's run key)."""
    with pytest.raises(InvalidInputError, match="query=") as caught:
        HTTPAdapter(f"http://127.0.0.1:1/classify?{query}")
    assert "abcdef123456" not in str(caught.value)


def test_query_is_shown_and_keyed_query_env_is_neither(monkeypatch):
    monkeypatch.setenv("MODEL_SECRET", "query-secret-0042")
    adapter = HTTPAdapter("http://127.0.0.1:1/classify", query={"kind": "raw"},
                          query_env={"client_secret": "MODEL_SECRET"})
    shown = repr(adapter) + json.dumps(adapter.identity()) + json.dumps(adapter.request_params())
    assert "query-secret-0042" not in shown and "client_secret" in repr(adapter)
    assert "'kind': 'raw'" in repr(adapter)
    # the run key is the one a URL with ?kind=raw used to give, so journals still resume
    assert adapter.identity()["params"]["url"] == "/classify?kind=raw"
    assert HTTPAdapter("http://h/classify").identity()["params"]["url"] == "/classify"
    other = HTTPAdapter("http://127.0.0.1:1/classify", query={"kind": "multipart"})
    assert other.identity() != adapter.identity()


@pytest.mark.parametrize("name", ["key", "api_key", "client_secret", "access_token", "sig"])
def test_a_secret_looking_name_in_query_is_refused(name):
    with pytest.raises(InvalidInputError, match="query_env"):
        HTTPAdapter("http://127.0.0.1:1/classify", query={name: "abcdef123456"})
