"""Any REST endpoint that answers with labels and scores in JSON: your own model server.

    adapter = HTTPAdapter(
        "http://models.internal:8080/v1/classify",
        send="multipart", field="file",
        labels_path="predictions", label_key="class", score_key="probability",
        header_env={"Authorization": "MODEL_SERVER_TOKEN"},
    )

How the image goes out (``send``): ``"raw"`` as the request body with its image
content type, ``"multipart"`` as the form field ``field``, or ``"json"`` as base64 in
the JSON field ``field`` (merged into ``json_extra``). Where the labels are in the
answer: ``labels_path`` is a dotted path (``"result.labels"``; list indices allowed:
``"outputs.0.labels"``) to either a list of objects with ``label_key`` / ``score_key``,
a list of ``[label, score]`` pairs, or an object mapping labels to scores.

With ``send="json"`` and ``max_batch > 1`` one request carries a list of base64 images
in ``field`` and the answer holds one result per image at ``batch_path``; each result
is then read with ``labels_path``.

Header values are secrets: give them directly or, better, name environment variables
in ``header_env``. They are sent, never logged, shown in ``repr`` or recorded.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from ..errors import (
    APIConnectionError,
    InvalidInputError,
    ProviderError,
    ServerError,
    error_for_status,
    parse_retry_after,
)
from .remote import Ranked, RemoteAdapter, rank

__all__ = ["HTTPAdapter"]

SEND_MODES = ("raw", "multipart", "json")


def _at(value: Any, path: str) -> Any:
    """Follow a dotted path (``"a.b.0.c"``) into parsed JSON."""
    for part in filter(None, path.split(".")):
        if isinstance(value, list) and part.lstrip("-").isdigit():
            value = value[int(part)]
        elif isinstance(value, Mapping):
            value = value[part]
        else:
            raise KeyError(part)
    return value


class HTTPAdapter(RemoteAdapter):
    """A vision model behind a generic HTTP API (see the module docstring for the options)."""

    name = "http"
    #: Your own server: no rate limit unless you set one with RateLimits.
    max_in_flight = 8

    def __init__(
        self,
        url: str,
        *,
        send: str = "raw",
        field: str = "image",
        json_extra: Mapping[str, Any] | None = None,
        labels_path: str = "labels",
        label_key: str = "label",
        score_key: str = "score",
        batch_path: str = "results",
        max_batch: int = 1,
        headers: Mapping[str, str] | None = None,
        header_env: Mapping[str, str] | None = None,
        method: str = "POST",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if send not in SEND_MODES:
            raise InvalidInputError(f"send must be one of {SEND_MODES}, got {send!r}")
        if max_batch < 1 or (max_batch > 1 and send != "json"):
            raise InvalidInputError("max_batch > 1 needs send='json' (a list of images)")
        missing = [env for env in (header_env or {}).values() if not os.environ.get(env)]
        if missing:
            raise InvalidInputError(f"environment variable(s) not set: {', '.join(missing)}")
        self.url, self.method, self.send = url, method.upper(), send
        self.field, self.json_extra = field, dict(json_extra or {})
        self.labels_path, self.label_key, self.score_key = labels_path, label_key, score_key
        self.batch_path, self.max_batch = batch_path, max_batch
        self._headers = {**(headers or {}),
                         **{k: os.environ[env] for k, env in (header_env or {}).items()}}

    def __repr__(self) -> str:
        return f"HTTPAdapter({self.url!r}, send={self.send!r}, headers={sorted(self._headers)})"

    def identity(self) -> dict:
        """The base identity, with the URL's path and query but not its scheme, host or
        port: the same model served elsewhere gives the same answers, so the same run."""
        identity = super().identity()
        where = urllib.parse.urlsplit(self.url)
        what = urllib.parse.urlunsplit(("", "", where.path, where.query, ""))
        return {**identity, "params": {**identity["params"], "url": what}}

    def request_params(self) -> dict[str, Any]:
        return {"url": self.url, "send": self.send, "field": self.field, "extra": self.json_extra}

    def parse(self, raw: Mapping[str, Any]) -> Ranked:  # type: ignore[override]
        try:
            found = _at(raw, self.labels_path)
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"no labels at {self.labels_path!r} in the answer",
                              provider=self.name) from None
        if isinstance(found, Mapping):
            return rank(found.items())
        pairs = []
        for item in found:
            if isinstance(item, Mapping):
                pairs.append((item[self.label_key], item[self.score_key]))
            else:
                label, score = item
                pairs.append((label, score))
        return rank(pairs)

    def _body(self, images: Sequence[bytes]) -> dict[str, Any]:
        content_type = "image/png" if self.image_format == "png" else "image/jpeg"
        if self.send == "raw":
            return {"data": images[0], "headers": {"Content-Type": content_type}}
        if self.send == "multipart":
            form = aiohttp.FormData()
            form.add_field(self.field, images[0], filename=f"image.{self.image_format}",
                           content_type=content_type)
            return {"data": form}
        encoded = [base64.b64encode(image).decode("ascii") for image in images]
        return {"json": {**self.json_extra,
                         self.field: encoded if self.max_batch > 1 else encoded[0]}}

    async def _send(self, images: Sequence[bytes]) -> list[Mapping[str, Any] | ProviderError]:
        session = self.loop_local("session", aiohttp.ClientSession)
        body = self._body(images)
        headers = {**self._headers, **body.pop("headers", {})}
        try:
            async with session.request(self.method, self.url, headers=headers, **body) as reply:
                text = await reply.text()
                if reply.status >= 400:
                    raise error_for_status(
                        reply.status, text[:200] or reply.reason or "", provider=self.name,
                        retry_after=parse_retry_after(reply.headers.get("Retry-After")),
                    )
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"{type(exc).__name__}: {exc}", provider=self.name) from None
        try:
            answer = json.loads(text)
            results = _at(answer, self.batch_path) if self.max_batch > 1 else [answer]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ServerError(f"malformed answer: {text[:100]!r}", provider=self.name) from None
        if not isinstance(results, list):
            raise ServerError(f"{self.batch_path!r} is not a list", provider=self.name)
        return results
