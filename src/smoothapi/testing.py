r"""A real vision-API server on loopback, serving a local model, with faults on demand.

    from smoothapi.testing import LoopbackProvider, Faults

    with LoopbackProvider(model, latency=0.15, rate_limit=50, faults=Faults(error_5xx=0.2)) as api:
        adapter = HTTPAdapter(api.url("generic"), labels_path="labels")
        ...
        print(api.stats)

It speaks the REST wire formats of the providers, so the generic HTTP adapter, the
Azure transports and your own REST clients can be tested against real HTTP:

=========== ======================================== ==============================
``generic`` ``POST /v1/classify`` (raw image body)    ``{"labels": [{"label", "score"}]}``
``generic-batch`` ``POST /v1/classify-batch``         ``{"results": [{"labels": [...]}]}``
\               (JSON ``{"images": [base64, ...]}``)
``azure``   ``POST /vision/v3.2/tag``                 ``{"tags": [{"name", "confidence"}]}``
``azure4``  ``POST /computervision/imageanalysis:analyze`` ``{"tagsResult": {"values": [...]}}``
``google``  ``POST /v1/images:annotate`` (JSON, <= 16) ``{"responses": [{"labelAnnotations"}]}``
``clarifai`` ``POST /v2/models/{id}/outputs`` (JSON)  ``{"status", "outputs": [...]}``
=========== ======================================== ==============================

Above ``rate_limit`` requests per second (a one-second sliding window) it answers
429 with ``Retry-After``. :class:`Faults` injects, with seeded probabilities, 5xx
answers, answers slower than any sane timeout, dropped connections, malformed
bodies, and per-image errors inside batch answers (google, clarifai). It binds
127.0.0.1 on an ephemeral port, runs in a thread of its own, and stops with the
context manager.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from aiohttp import web
from PIL import Image

from ._images import as_image_tensor
from .adapters.base import Adapter
from .adapters.local import LocalModelAdapter

__all__ = ["Faults", "LoopbackProvider", "ServerStats"]

Ranker = Callable[[torch.Tensor], Sequence[Sequence[tuple[str, float]]]]

PATHS = {
    "generic": "/v1/classify",
    "generic-batch": "/v1/classify-batch",
    "azure": "/vision/v3.2/tag",
    "azure4": "/computervision/imageanalysis:analyze",
    "google": "/v1/images:annotate",
    "clarifai": "/v2/models/general-image-recognition/outputs",
}


@dataclass(frozen=True)
class Faults:
    """Probabilities of each fault, per request (``per_image``: per image of a batch)."""

    error_5xx: float = 0.0
    timeout: float = 0.0
    drop: float = 0.0
    malformed: float = 0.0
    per_image: float = 0.0
    timeout_seconds: float = 30.0
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
        return [[(str(label), float(score)) for label, score in adapter.ranked_labels(image)]
                for image in images]

    return rank


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
    ) -> None:
        self.rank = adapter_ranker(model) if isinstance(model, Adapter) else model
        self.latency, self.rate_limit, self.retry_after = latency, rate_limit, retry_after
        self.faults = faults
        self.stats = ServerStats()
        self._random = random.Random(faults.seed)
        self._window: collections.deque[float] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- lifecycle -------------------------------------------------------------------

    def url(self, api: str = "generic") -> str:
        """The endpoint URL of one wire format (see :data:`PATHS`); ``""``: the base URL."""
        base = f"http://127.0.0.1:{self.port}"
        return base if api == "" else base + PATHS[api]

    def __enter__(self) -> LoopbackProvider:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._runner is not None
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

    # --- serving ---------------------------------------------------------------------

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

    def _handler(self, api: str):
        async def handle(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            stats.requests += 1
            now = time.monotonic()
            stats.first = stats.first or now
            stats.last = now
            if not self._admit():
                stats.rate_limited += 1
                return web.json_response({"error": {"code": "429", "message": "slow down"}},
                                         status=429,
                                         headers={"Retry-After": f"{self.retry_after:g}"})
            images = await self._images(api, request)
            stats.images += len(images)
            if self.latency:
                await asyncio.sleep(self.latency)
            if self._roll(self.faults.drop):
                stats.faults["drop"] += 1
                request.transport.close()
                return web.Response()
            if self._roll(self.faults.timeout):
                stats.faults["timeout"] += 1
                await asyncio.sleep(self.faults.timeout_seconds)
            if self._roll(self.faults.error_5xx):
                stats.faults["5xx"] += 1
                return web.json_response({"error": {"code": "500", "message": "injected"}},
                                         status=self._random.choice((500, 502, 503)))
            if self._roll(self.faults.malformed):
                stats.faults["malformed"] += 1
                return web.Response(text='{"labels": [', content_type="application/json")
            ranked = await asyncio.to_thread(self.rank, torch.stack(images))
            return web.json_response(self._answer(api, ranked))

        return handle

    async def _images(self, api: str, request: web.Request) -> list[torch.Tensor]:
        if api in ("generic", "azure", "azure4"):
            return [_decode(await request.read())]
        body = await request.json()
        if api == "generic-batch":
            return [_decode(base64.b64decode(image)) for image in body["images"]]
        if api == "google":
            return [_decode(base64.b64decode(r["image"]["content"])) for r in body["requests"]]
        return [_decode(base64.b64decode(i["data"]["image"]["base64"])) for i in body["inputs"]]

    def _answer(self, api: str, ranked: Sequence[Sequence[tuple[str, float]]]) -> dict:
        if api == "generic":
            return {"labels": [{"label": n, "score": s} for n, s in ranked[0]]}
        if api == "generic-batch":
            return {"results": [{"labels": [{"label": n, "score": s} for n, s in labels]}
                                for labels in ranked]}
        if api == "azure":
            return {"tags": [{"name": n, "confidence": s} for n, s in ranked[0]],
                    "requestId": "loopback", "modelVersion": "loopback"}
        if api == "azure4":
            return {"modelVersion": "loopback",
                    "tagsResult": {"values": [{"name": n, "confidence": s} for n, s in ranked[0]]}}
        failed = [self._roll(self.faults.per_image) for _ in ranked]
        self.stats.faults["per_image"] += sum(failed)
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


def _decode(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        return as_image_tensor(image.convert("L") if image.mode == "L" else image.convert("RGB"))
