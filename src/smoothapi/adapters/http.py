"""Any REST endpoint that answers with labels and scores in JSON: your own model server.

    adapter = HTTPAdapter(
        "http://models.internal:8080/v1/classify",
        send="multipart", field="file",
        labels_path="predictions", label_key="class", score_key="probability",
        header_env={"Authorization": "MODEL_SERVER_TOKEN"},
    )

How the image goes out (``send``): ``"raw"`` as the request body with its image
content type, ``"multipart"`` as the form field ``field``, or ``"json"`` as base64 at
the dotted JSON path ``field`` of a body built from the template ``json_extra``. Where
the labels are in the answer: ``labels_path`` is a dotted path (``"result.labels"``;
list indices allowed: ``"outputs.0.labels"``) to either a list of objects with
``label_key`` / ``score_key``, a list of ``[label, score]`` pairs, or an object mapping
labels to scores.

Request-body templates (``send="json"``) front most JSON model servers::

    field="image"                       {"image": "<b64>"}
    field="instances.0.image.b64"       {"instances": [{"image": {"b64": "<b64>"}}]}
    max_batch=16, field="images"        {"images": ["<b64>", ...]}
    max_batch=16, field="instances.*.b64"   {"instances": [{"b64": "<b64>"}, ...]}

Anything else in ``json_extra`` is sent as it is; list items the template already has
are filled in, and with ``*`` every image gets a copy of the template's first item. With
``max_batch > 1`` the answer holds one result per image at ``batch_path``, each read
with ``labels_path``.

Query parameters: the URL takes no query string (any of its values could be a secret,
and the URL is shown and keyed). Plain parameters go in ``query={"version": "2"}``: sent,
shown in ``repr`` and part of the journal's run key, since they may decide the answers
(a name that looks like a credential, such as ``key``, ``token`` or ``client_secret``, is
refused there). Secret ones go in ``query_env={"key": "ENV_VARIABLE"}``, read from the
environment.

Secrets: header values (``headers``, or better environment variables named in
``header_env``) and ``query_env`` values are sent, never logged, shown in ``repr``,
recorded or journaled, and are redacted from errors. Redirects: a same-origin 307 or 308
(the method and body kept) is followed; any other redirect, and every one to another
origin (which would get the credentials), is a :class:`~smoothapi.errors.RedirectError`.
An answer over ``max_response_bytes`` (8 MiB by default) is not read further
(:class:`~smoothapi.errors.ResponseTooLargeError`). A 400, 415 or 422 whose body says the
image is bad (matched by ``invalid_image``) is an :class:`~smoothapi.errors.InvalidImageError`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from ..errors import (
    APIConnectionError,
    APITimeoutError,
    InvalidImageError,
    InvalidInputError,
    ProviderError,
    ServerError,
    error_for_status,
    parse_retry_after,
)
from ._transport import fetch
from .remote import Ranked, RemoteAdapter, checked, rank

__all__ = ["INVALID_IMAGE", "SECRET_QUERY", "HTTPAdapter"]

SEND_MODES = ("raw", "multipart", "json")
#: Query parameter names that look like credentials: refused in ``query=`` (whose values
#: are shown and journaled); pass them with ``query_env``.
SECRET_QUERY = re.compile(
    r"key|secret|token|passw|signature|credential|auth|^(code|sig|pat|session)$", re.IGNORECASE
)
#: Header names whose values are secrets even when given directly (``headers=``).
SECRET_HEADER = re.compile(r"auth|key|token|secret|password|signature|cookie", re.IGNORECASE)
#: A 4xx body that says the image itself is bad.
INVALID_IMAGE = (
    r"(?i)(invalid|unsupported|corrupt|malformed|bad|unreadable|too (large|small|big)"
    r"|cannot (decode|identify|read)|could not (decode|identify|read)|failed to decode)"
    r"\W+(\w+\W+){0,3}?image|image\W+(\w+\W+){0,4}?(invalid|unsupported|corrupt|malformed"
    r"|too (large|small|big)|could not be (decoded|read)|cannot be (decoded|read)|decod)"
)


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


def _put(body: Any, path: Sequence[str], value: Any) -> None:
    """Set ``value`` at a dotted path of a JSON template, making objects (lists where
    the next part is an index) on the way."""
    for index, part in enumerate(path):
        if isinstance(body, list) and part.isdigit() and int(part) <= len(body):
            key: Any = int(part)
            if key == len(body):
                body.append({})
        elif isinstance(body, dict):
            key = part
        else:
            raise InvalidInputError(f"field path: cannot put a value at {part!r}")
        if index == len(path) - 1:
            body[key] = value
            return
        if isinstance(body, dict) and not isinstance(body.get(key), (dict, list)):
            body[key] = [] if path[index + 1].isdigit() else {}
        body = body[key]


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
        query: Mapping[str, str] | None = None,
        query_env: Mapping[str, str] | None = None,
        invalid_image: str | None = INVALID_IMAGE,
        method: str = "POST",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if send not in SEND_MODES:
            raise InvalidInputError(f"send must be one of {SEND_MODES}, got {send!r}")
        if max_batch < 1 or (max_batch > 1 and send != "json"):
            raise InvalidInputError("max_batch > 1 needs send='json' (a list of images)")
        if "*" in field and (send != "json" or field.count("*") > 1):
            raise InvalidInputError("a '*' in field needs send='json' and may appear once")
        given = urllib.parse.urlsplit(url).query
        if given:
            names = [n for n, _ in urllib.parse.parse_qsl(given, keep_blank_values=True)]
            raise InvalidInputError(
                f"the URL takes no query string (its values could be secrets, and the URL is "
                f"shown and journaled; got {', '.join(names)[:200]}): pass plain parameters "
                f"with query={{...}} and secret ones with query_env={{'NAME': 'ENV_VARIABLE'}}"
            )
        secret_names = [name for name in query or {} if SECRET_QUERY.search(name)]
        if secret_names:
            raise InvalidInputError(
                f"query= values are shown and journaled, and {secret_names[0]!r} looks like a "
                f"credential: pass it with query_env={{{secret_names[0]!r}: 'ENV_VARIABLE'}}"
            )
        envs = {**(header_env or {}), **(query_env or {})}
        missing = [env for env in envs.values() if not os.environ.get(env)]
        if missing:
            raise InvalidInputError(f"environment variable(s) not set: {', '.join(missing)}")
        self.url, self.method, self.send = url, method.upper(), send
        self.field, self.json_extra = field, copy.deepcopy(dict(json_extra or {}))
        self.labels_path, self.label_key, self.score_key = labels_path, label_key, score_key
        self.batch_path, self.max_batch = batch_path, max_batch
        self.invalid_image = re.compile(invalid_image) if invalid_image else None
        self._headers = {**(headers or {}),
                         **{k: os.environ[env] for k, env in (header_env or {}).items()}}
        self.query = {str(k): str(v) for k, v in (query or {}).items()}
        self._secret_query = {k: os.environ[env] for k, env in (query_env or {}).items()}
        secret = [v for k, v in self._headers.items() if k in (header_env or {})
                  or SECRET_HEADER.search(k)] + list(self._secret_query.values())
        self.secrets(*secret, *(word for v in secret for word in v.split()[1:]))  # "Bearer x"

    def __repr__(self) -> str:
        return (f"HTTPAdapter({self.url!r}, send={self.send!r}, headers={sorted(self._headers)}, "
                f"query={self.query}, query_env={sorted(self._secret_query)})")

    def _with_query(self, url: str) -> str:
        """``url`` with the plain ``query`` parameters (never the ``query_env`` ones)."""
        return url + ("?" + urllib.parse.urlencode(self.query) if self.query else "")

    def identity(self) -> dict:
        """The base identity, with the URL's path and the plain ``query`` but not its scheme,
        host or port: the same model served elsewhere gives the same answers, so the same run."""
        identity = super().identity()
        what = self._with_query(urllib.parse.urlsplit(self.url).path)
        return {**identity, "params": {**identity["params"], "url": what}}

    def request_params(self) -> dict[str, Any]:
        return {"url": self._with_query(self.url), "send": self.send, "field": self.field,
                "extra": self.json_extra}

    def parse(self, raw: Mapping[str, Any]) -> Ranked:  # type: ignore[override]  # per-instance layout
        try:
            found = _at(raw, self.labels_path)
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"no labels at {self.labels_path!r} in the answer",
                              provider=self.name) from None
        if isinstance(found, Mapping):
            pairs = list(found.items())
        elif isinstance(found, list):
            pairs = [(item[self.label_key], item[self.score_key]) if isinstance(item, Mapping)
                     else tuple(item) for item in found]
        else:
            raise TypeError(f"the labels are a {type(found).__name__}")
        for pair in pairs:
            if len(pair) != 2:
                raise TypeError(f"malformed (label, score): {pair!r:.100}")
        return rank([checked(label, score) for label, score in pairs])

    def _json_body(self, images: Sequence[bytes]) -> dict[str, Any]:
        encoded = [base64.b64encode(image).decode("ascii") for image in images]
        body = copy.deepcopy(self.json_extra)
        if "*" not in self.field:
            _put(body, self.field.split("."), encoded if self.max_batch > 1 else encoded[0])
            return body
        head, _, tail = self.field.partition("*")
        head_path = [p for p in head.split(".") if p]
        try:
            existing = _at(body, ".".join(head_path))
        except (KeyError, IndexError, TypeError):
            existing = None
        template = existing[0] if isinstance(existing, list) and existing else {}
        items = []
        for image in encoded:
            item = copy.deepcopy(template)
            tail_path = [p for p in tail.split(".") if p]
            if tail_path:
                _put(item, tail_path, image)
            else:
                item = image
            items.append(item)
        _put(body, head_path, items)
        return body

    def _body(self, images: Sequence[bytes]) -> dict[str, Any]:
        content_type = "image/png" if self.image_format == "png" else "image/jpeg"
        if self.send == "raw":
            return {"data": images[0], "headers": {"Content-Type": content_type}}
        if self.send == "multipart":
            form = aiohttp.FormData()
            form.add_field(self.field, images[0], filename=f"image.{self.image_format}",
                           content_type=content_type)
            return {"data": form}
        return {"json": self._json_body(images)}

    def _error(self, status: int, text: str, headers: Mapping[str, str]) -> ProviderError:
        message = " ".join(text.split())[:200] or f"HTTP {status}"
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if (status in (400, 415, 422) and self.invalid_image is not None
                and self.invalid_image.search(text[:2000])):
            return InvalidImageError(message, provider=self.name, status=status,
                                     retry_after=retry_after)
        return error_for_status(status, message, provider=self.name, retry_after=retry_after)

    def _request(self, images: Sequence[bytes]) -> dict[str, Any]:
        """The body and headers of one request (made afresh for each redirect hop)."""
        body = self._body(images)
        return {**body, "headers": {**self._headers, **body.get("headers", {})}}

    async def _send(self, images: Sequence[bytes]) -> list[Mapping[str, Any] | ProviderError]:
        session = self.loop_local("session", aiohttp.ClientSession)
        params = {**self.query, **self._secret_query}
        status, headers, raw = await fetch(self, session, self.method, self.url,
                                           lambda: self._request(images), params=params or None)
        text = raw.decode("utf-8", "replace")
        if status >= 400:
            raise self._error(status, text, headers)
        try:
            answer = json.loads(text)
            results = _at(answer, self.batch_path) if self.max_batch > 1 else [answer]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServerError(f"malformed answer: {text[:100]!r}", provider=self.name) from exc
        if not isinstance(results, list):
            raise ServerError(f"{self.batch_path!r} is not a list", provider=self.name)
        return results

    def map_exception(self, exc: Exception) -> ProviderError:
        """aiohttp's connection errors and timeouts; the rest as the base class does."""
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            sent = not isinstance(exc, aiohttp.ConnectionTimeoutError)
            return APITimeoutError(f"no answer in time ({type(exc).__name__})",
                                   provider=self.name, possibly_billed=sent)
        if isinstance(exc, aiohttp.ClientError):
            return APIConnectionError(f"{type(exc).__name__}: {exc}", provider=self.name)
        return super().map_exception(exc)
