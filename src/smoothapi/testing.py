r"""A real vision-API server on loopback, serving a local model, with faults on demand.

    from smoothapi.testing import LoopbackProvider, Faults

    with LoopbackProvider(model, latency=0.15, rate_limit=50, faults=Faults(error_5xx=0.2)) as api:
        adapter = HTTPAdapter(api.url("generic"), labels_path="labels")
        adapter = RekognitionAdapter(endpoint_url=api.url(""), region_name="us-east-1")
        adapter = GoogleVisionAdapter(endpoint=api.target(), insecure=True, api_key="k")
        adapter = ClarifaiAdapter(target=api.target(), insecure=True, pat="k")
        ...
        print(api.stats)

It speaks the providers' wire formats, so every adapter can be tested through its
default transport (the vendor SDK) against a real server:

=========== ============================================= ==================================
``generic`` ``POST /v1/classify`` (raw image body)        ``{"labels": [{"label", "score"}]}``
``generic-batch`` ``POST /v1/classify-batch``             ``{"results": [{"labels": [...]}]}``
\           (JSON ``{"images": [base64, ...]}``)
``azure``   ``POST /vision/v3.2/tag``                     ``{"tags": [{"name", "confidence"}]}``
``azure4``  ``POST /computervision/imageanalysis:analyze`` ``{"tagsResult": {"values": [...]}}``
``google``  ``POST /v1/images:annotate`` (JSON, <= 16)    ``{"responses": [{"labelAnnotations"}]}``
``clarifai`` ``POST /v2/models/{id}/outputs`` (JSON)      ``{"status", "outputs": [...]}``
``aws``     ``POST /`` (JSON 1.1, ``X-Amz-Target:         ``{"Labels": [{"Name", "Confidence"}]}``
\           RekognitionService.DetectLabels``)
=========== ============================================= ==================================

and, over plaintext gRPC at :meth:`LoopbackProvider.target`, Google's
``google.cloud.vision.v1.ImageAnnotator/BatchAnnotateImages`` and Clarifai's
``clarifai.api.V2/PostModelOutputs`` (needs ``grpcio``, ``google-cloud-vision`` and
``clarifai-grpc``; started on the first call to ``target``).

Above ``rate_limit`` requests per second (a one-second sliding window) it answers as
each provider does (429 with ``Retry-After``, ``ThrottlingException``,
``RESOURCE_EXHAUSTED``, ``CONN_THROTTLED``). :class:`Faults` injects, with seeded
probabilities: refused credentials whose error echoes the credential received (as some
servers do; over gRPC in the trailing metadata too), 5xx answers, answers slower than any
sane timeout, answers that drip in a byte every ``drip_seconds`` (each byte well within a
read timeout, the whole far beyond it; over gRPC simply that slow), dropped connections,
malformed bodies (truncated, not JSON, empty, a JSON list, the wrong schema; undecodable
protobuf over gRPC), and per-image errors inside batch answers (google, clarifai).
``stats.max_in_flight`` is the most requests it was serving at once, ``stats.in_flight``
those it is serving now (a dripping answer until its last byte, or until the client
hangs up). Each answer lists at most ``max_labels`` labels (20 by default, as a vision
API bounds its list; ``None``: every class a model has); ``coarse_labels=True`` mixes
in ImageNet classes' WordNet ancestors as commercial APIs mix fine and coarse labels
(:func:`with_coarse_labels`). It binds 127.0.0.1 on
ephemeral ports, runs in a thread of its own, and stops with the context manager.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from aiohttp import web
from PIL import Image

from ._images import as_image_tensor
from .adapters.base import Adapter
from .adapters.local import LocalModelAdapter

__all__ = ["MALFORMED_KINDS", "Faults", "LoopbackProvider", "ServerStats"]

Ranker = Callable[[torch.Tensor], Sequence[Sequence[tuple[str, float]]]]
Ranked = Sequence[Sequence[tuple[str, float]]]

PATHS = {
    "generic": "/v1/classify",
    "generic-batch": "/v1/classify-batch",
    "azure": "/vision/v3.2/tag",
    "azure4": "/computervision/imageanalysis:analyze",
    "google": "/v1/images:annotate",
    "clarifai": "/v2/models/general-image-recognition/outputs",
    "aws": "/",
}
#: The malformed bodies :class:`Faults` draws from (``malformed_kind`` picks one).
MALFORMED_KINDS = ("truncated", "not-json", "empty", "list", "schema")
_SCHEMA_INVALID = {  # JSON of the wrong shape for each API
    "aws": {"Labels": "none"},
    "azure": {"tags": {"name": "grass"}},
    "azure4": {"tagsResult": {"values": 7}},
    "google": {"responses": "none"},
    "clarifai": {"status": {"code": 10000}, "outputs": 3},
}


@dataclass(frozen=True)
class Faults:
    """Probabilities of each fault, per request (``per_image``: per image of a batch)."""

    error_5xx: float = 0.0
    timeout: float = 0.0
    drop: float = 0.0
    malformed: float = 0.0
    per_image: float = 0.0
    unauthorized: float = 0.0
    drip: float = 0.0
    malformed_kind: str | None = None  # one of MALFORMED_KINDS; None: any, drawn each time
    timeout_seconds: float = 30.0
    drip_seconds: float = 0.5  # between two bytes of a dripping answer
    seed: int = 0


@dataclass
class ServerStats:
    """What the server saw and answered."""

    requests: int = 0
    images: int = 0
    rate_limited: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    first: float | None = None
    last: float | None = None
    in_flight: int = 0
    max_in_flight: int = 0


@dataclass
class _Outcome:
    """What one request gets: ``kind`` is "ok", "429", "401", "drop", "5xx", "malformed"
    or "drip" (a good answer, sent a byte at a time)."""

    kind: str
    ranked: Ranked = ()
    failed: Sequence[bool] = ()
    detail: str = ""


def adapter_ranker(adapter: Adapter) -> Ranker:
    """Serve a smoothapi adapter: its ranked labels per image (a local model in one batch)."""
    if isinstance(adapter, LocalModelAdapter):

        def rank_local(images: torch.Tensor) -> list[list[tuple[str, float]]]:
            with torch.inference_mode():
                scores = adapter.logits(images).softmax(dim=1).cpu()
            ranked = []
            for row in scores:
                order = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))
                ranked.append([(str(adapter._label(i)), float(row[i])) for i in order])
            return ranked

        return rank_local

    def rank(images: torch.Tensor) -> list[list[tuple[str, float]]]:
        return [
            [(str(label), float(score)) for label, score in adapter.ranked_labels(image)]
            for image in images
        ]

    return rank


#: How far below WordNet's root a coarse label must be: "entity", "physical entity",
#: "object", "whole", "living thing", "organism" (and "artifact") say nothing.
_COARSE_MIN_DEPTH = 7


def with_coarse_labels(ranked: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """ImageNet classes ranked by probability, with their WordNet ancestors mixed in as a
    commercial API mixes "Cat", "Mammal", "Animal": each ancestor scored by the summed
    probability of the listed classes below it, all ranked by score (the finer first on
    ties). Labels outside ImageNet's hierarchy are kept as they are."""
    from .zoo.hierarchy import imagenet_chain

    scores: dict[str, float] = {}
    depth: dict[str, int] = {}
    for label, score in ranked:
        scores[label] = scores.get(label, 0.0) + score
        chain = imagenet_chain(label)
        depth[label] = len(chain) + 1  # a class ranks before an ancestor of equal score
        for k, ancestor in enumerate(chain[1:], start=1):
            if len(chain) - k >= _COARSE_MIN_DEPTH:
                scores[ancestor] = scores.get(ancestor, 0.0) + score
                depth[ancestor] = len(chain) - k
    return sorted(scores.items(), key=lambda item: (-round(item[1], 12), -depth[item[0]]))


class LoopbackProvider:
    """See the module docstring. ``model`` is a ranker (a batch of ``(B, C, H, W)`` images
    to ranked labels per image) or an :class:`~smoothapi.adapters.Adapter`."""

    def __init__(
        self,
        model: Ranker | Adapter,
        *,
        latency: float = 0.0,
        rate_limit: float | None = None,
        retry_after: float = 1.0,
        faults: Faults = Faults(),
        max_labels: int | None = 20,
        coarse_labels: bool = False,
    ) -> None:
        self.rank = adapter_ranker(model) if isinstance(model, Adapter) else model
        self.max_labels = max_labels  # per answer, as a real provider's list is bounded
        self.coarse_labels = coarse_labels
        self.latency, self.rate_limit, self.retry_after = latency, rate_limit, retry_after
        self.faults = faults
        self.stats = ServerStats()
        self._random = random.Random(faults.seed)
        self._window: collections.deque[float] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._grpc: Any = None
        self.port: int | None = None
        self.grpc_port: int | None = None

    # --- lifecycle -------------------------------------------------------------------

    def url(self, api: str = "generic") -> str:
        """The endpoint URL of one wire format (see :data:`PATHS`); ``""``: the base URL."""
        base = f"http://127.0.0.1:{self.port}"
        return base if api == "" else base + PATHS[api]

    def target(self) -> str:
        """``host:port`` of the plaintext gRPC server (Google and Clarifai services)."""
        if self._grpc is None:
            assert self._loop is not None, "use LoopbackProvider as a context manager"
            future = asyncio.run_coroutine_threadsafe(self._start_grpc(), self._loop)
            future.result(10)
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> LoopbackProvider:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._runner is not None
        if self._grpc is not None:
            asyncio.run_coroutine_threadsafe(self._grpc.stop(None), self._loop).result(10)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for api, path in PATHS.items():
            app.router.add_post(path, self._handler(api))
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _start_grpc(self) -> None:
        import grpc

        size = 64 * 1024 * 1024
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", size),
                     ("grpc.max_send_message_length", size)]
        )
        server.add_generic_rpc_handlers(_grpc_handlers(self))
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._grpc = server

    # --- the one serving path, whatever the wire format ------------------------------

    def _admit(self) -> bool:
        """Sliding one-second window: may this request go through?"""
        if self.rate_limit is None:
            return True
        now = time.monotonic()
        while self._window and now - self._window[0] >= 1.0:
            self._window.popleft()
        if len(self._window) >= self.rate_limit:
            return False
        self._window.append(now)
        return True

    def _roll(self, probability: float) -> bool:
        return probability > 0 and self._random.random() < probability

    async def serve(self, images: Callable[[], Sequence[torch.Tensor]]) -> _Outcome:
        """Count, throttle, delay, inject faults and rank: what one request gets."""
        stats = self.stats
        stats.requests += 1
        stats.first = stats.first or time.monotonic()
        stats.last = time.monotonic()
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._serve(images)
        finally:
            stats.in_flight -= 1

    async def _serve(self, images: Callable[[], Sequence[torch.Tensor]]) -> _Outcome:
        stats, faults = self.stats, self.faults
        if not self._admit():
            stats.rate_limited += 1
            return _Outcome("429")
        decoded = images()
        stats.images += len(decoded)
        if self.latency:
            await asyncio.sleep(self.latency)
        for kind, probability in (("401", faults.unauthorized), ("drop", faults.drop)):
            if self._roll(probability):
                stats.faults[kind] += 1
                return _Outcome(kind)
        if self._roll(faults.timeout):
            stats.faults["timeout"] += 1
            await asyncio.sleep(faults.timeout_seconds)
        if self._roll(faults.error_5xx):
            stats.faults["5xx"] += 1
            return _Outcome("5xx", detail=str(self._random.choice((500, 502, 503))))
        if self._roll(faults.malformed):
            stats.faults["malformed"] += 1
            return _Outcome("malformed", detail=faults.malformed_kind or
                            self._random.choice(MALFORMED_KINDS))
        ranked = await asyncio.to_thread(self.rank, torch.stack(list(decoded)))
        if self.coarse_labels:
            ranked = [with_coarse_labels(labels) for labels in ranked]
        ranked = [list(labels)[: self.max_labels] for labels in ranked]
        failed = [self._roll(faults.per_image) for _ in ranked]
        stats.faults["per_image"] += sum(failed)
        if self._roll(faults.drip):
            stats.faults["drip"] += 1
            return _Outcome("drip", ranked, failed)
        return _Outcome("ok", ranked, failed)

    async def _drip(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Send a good answer's headers at once, then its body a byte every ``drip_seconds``;
        the request counts as in flight until the last byte, or until the client hangs up."""
        reply = web.StreamResponse(headers={"Content-Type": "application/json"})
        reply.content_length = len(body)
        self.stats.in_flight += 1
        try:
            await reply.prepare(request)
            for index in range(len(body)):
                if index:
                    await asyncio.sleep(self.faults.drip_seconds)
                await reply.write(body[index : index + 1])
            await reply.write_eof()
        except (ConnectionError, RuntimeError):  # the client hung up
            pass
        finally:
            self.stats.in_flight -= 1
        return reply

    # --- REST ---------------------------------------------------------------------------

    def _handler(self, api: str):
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            outcome = await self.serve(lambda: _rest_images(api, request, body))
            if outcome.kind == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            status, payload, headers = _rest_answer(api, outcome, _credential(request))
            if outcome.kind == "drip":
                return await self._drip(request, json.dumps(payload).encode())
            if outcome.kind == "429":
                headers["Retry-After"] = f"{self.retry_after:g}"
            if isinstance(payload, (bytes, str)):
                return web.Response(body=payload, status=status, headers=headers,
                                    content_type="application/json")
            return web.json_response(payload, status=status, headers=headers)

        return handle


def _rest_images(api: str, request: web.Request, body: bytes) -> list[torch.Tensor]:
    if api in ("generic", "azure", "azure4"):
        return [_decode(body)]
    data = json.loads(body)
    if api == "aws":
        if request.headers.get("X-Amz-Target") != "RekognitionService.DetectLabels":
            raise web.HTTPBadRequest(text="unknown X-Amz-Target")
        return [_decode(base64.b64decode(data["Image"]["Bytes"]))]
    if api == "generic-batch":
        return [_decode(base64.b64decode(image)) for image in data["images"]]
    if api == "google":
        return [_decode(base64.b64decode(r["image"]["content"])) for r in data["requests"]]
    return [_decode(base64.b64decode(i["data"]["image"]["base64"])) for i in data["inputs"]]


def _credential(request: web.Request) -> str:
    """The credential a request carried (echoed back by the ``unauthorized`` fault)."""
    headers = request.headers
    auth = headers.get("Authorization", "")
    aws = re.search(r"Credential=([^/,\s]+)", auth)
    return (aws.group(1) if aws else None) or headers.get("Ocp-Apim-Subscription-Key") or \
        headers.get("x-goog-api-key") or request.query.get("key") or auth


def _malformed(api: str, kind: str) -> bytes | str | Any:
    bodies = {"truncated": '{"labels": [{"label": "x", "sco', "not-json": "<html>oops</html>",
              "empty": b"", "list": "[]"}
    return bodies[kind] if kind in bodies else json.dumps(_SCHEMA_INVALID.get(api, {"labels": 5}))


def _rest_answer(api: str, outcome: _Outcome, credential: str) -> tuple[int, Any, dict]:
    """(status, body, headers) of a REST answer in ``api``'s format."""
    aws = api == "aws"
    errors = {
        "429": (429, "ThrottlingException", "slow down"),
        "401": (401, "UnrecognizedClientException", f"invalid credential {credential!r}"),
        "5xx": (int(outcome.detail or 500) if outcome.kind == "5xx" else 500,
                "InternalServerError", "injected"),
    }
    if outcome.kind in errors:
        status, aws_type, message = errors[outcome.kind]
        if aws:  # JSON 1.1 protocol: the error type in __type, client errors as 400
            return (400 if status < 500 else status), {"__type": aws_type, "message": message}, {}
        return status, {"error": {"code": str(status), "message": message}}, {}
    if outcome.kind == "malformed":
        return 200, _malformed(api, outcome.detail), {}
    return 200, _rest_body(api, outcome.ranked, outcome.failed), {}


def _rest_body(api: str, ranked: Ranked, failed: Sequence[bool]) -> dict:
    if api == "generic":
        return {"labels": [{"label": n, "score": s} for n, s in ranked[0]]}
    if api == "generic-batch":
        return {"results": [{"labels": [{"label": n, "score": s} for n, s in labels]}
                            for labels in ranked]}
    if api == "aws":
        return {"Labels": [{"Name": n, "Confidence": 100 * s, "Parents": []}
                           for n, s in ranked[0]], "LabelModelVersion": "loopback"}
    if api == "azure":
        return {"tags": [{"name": n, "confidence": s} for n, s in ranked[0]],
                "requestId": "loopback", "modelVersion": "loopback"}
    if api == "azure4":
        return {"modelVersion": "loopback",
                "tagsResult": {"values": [{"name": n, "confidence": s} for n, s in ranked[0]]}}
    if api == "google":
        return {"responses": [
            {"error": {"code": 13, "message": "injected"}} if bad else
            {"labelAnnotations": [{"description": n, "score": s} for n, s in labels]}
            for labels, bad in zip(ranked, failed, strict=True)]}
    return {"status": {"code": 10010 if any(failed) else 10000},
            "outputs": [
                {"status": {"code": 99009, "description": "injected"}} if bad else
                {"status": {"code": 10000},
                 "data": {"concepts": [{"name": n, "value": s} for n, s in labels]}}
                for labels, bad in zip(ranked, failed, strict=True)]}


# --- gRPC: Google's ImageAnnotator and Clarifai's V2, as generic handlers --------------------


def _grpc_handlers(provider: LoopbackProvider) -> list:
    import grpc
    from clarifai_grpc.grpc.api import service_pb2
    from google.cloud import vision
    from google.protobuf import json_format

    statuses = {
        "429": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "drop": grpc.StatusCode.UNAVAILABLE,
        "401": grpc.StatusCode.UNAUTHENTICATED,
        "5xx": grpc.StatusCode.INTERNAL,
    }

    def unary(api: str, request_type: Any, images: Callable, render: Callable) -> Any:
        async def handle(request: Any, context: Any) -> bytes:
            metadata = dict(context.invocation_metadata() or ())
            credential = metadata.get("x-goog-api-key") or metadata.get("authorization", "")
            outcome = await provider.serve(lambda: images(request))
            if outcome.kind == "429" and api == "clarifai":  # Clarifai throttles in the body
                body: dict = {"status": {"code": 11005, "description": "CONN_THROTTLED"}}
                return render(body)
            if outcome.kind in statuses:
                if outcome.kind == "429":
                    context.set_trailing_metadata((("retry-after", f"{provider.retry_after:g}"),))
                detail = ""
                if outcome.kind == "401":
                    detail = f"invalid credential {credential!r}"
                    context.set_trailing_metadata((("x-rejected-credential", credential),))
                await context.abort(statuses[outcome.kind], detail or "injected")
            if outcome.kind == "malformed":
                return b"\xff\xff\xff\xff not a protobuf"
            answer: bytes = render(_rest_body(api, outcome.ranked, outcome.failed))
            if outcome.kind == "drip":  # gRPC frames a message whole: it is simply that slow
                await asyncio.sleep(provider.faults.drip_seconds * len(answer))
            return answer

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=request_type, response_serializer=lambda b: b
        )

    def google(body: dict) -> bytes:
        answer = vision.BatchAnnotateImagesResponse.from_json(json.dumps(_proto_json(body)))
        return vision.BatchAnnotateImagesResponse.serialize(answer)

    def clarifai(body: dict) -> bytes:
        answer = service_pb2.MultiOutputResponse()
        parsed = json_format.ParseDict(_proto_json(body), answer, ignore_unknown_fields=True)
        return parsed.SerializeToString()

    return [
        grpc.method_handlers_generic_handler("google.cloud.vision.v1.ImageAnnotator", {
            "BatchAnnotateImages": unary(
                "google", vision.BatchAnnotateImagesRequest.deserialize,
                lambda r: [_decode(item.image.content) for item in r.requests], google)}),
        grpc.method_handlers_generic_handler("clarifai.api.V2", {
            "PostModelOutputs": unary(
                "clarifai", service_pb2.PostModelOutputsRequest.FromString,
                lambda r: [_decode(item.data.image.base64) for item in r.inputs], clarifai)}),
    ]


def _proto_json(value: Any) -> Any:
    """``value`` with non-finite floats spelled as proto3 JSON wants them ("NaN", "Infinity"),
    so a model's NaN or infinite score reaches the client as it is."""
    if isinstance(value, dict):
        return {k: _proto_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_proto_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _decode(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        return as_image_tensor(image.convert("L") if image.mode == "L" else image.convert("RGB"))
