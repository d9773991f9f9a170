"""Azure AI Vision image tagging as a base classifier, over API v3.2 or 4.0.

    adapter = AzureVisionAdapter()             # v3.2 tags, through the SDK
    adapter = AzureVisionAdapter(api="4.0")    # Image Analysis 4.0 tags, plain REST

Credentials: ``endpoint=`` and ``key=``, or the environment variables
``AZURE_VISION_ENDPOINT`` / ``AZURE_VISION_KEY`` (also ``VISION_ENDPOINT`` /
``VISION_KEY``, the names Microsoft's samples use). The key travels only in the
``Ocp-Apim-Subscription-Key`` header; it is never logged, shown in ``repr`` or recorded.

``api="v3.2"`` calls ``POST {endpoint}/vision/v3.2/tag`` through the SDK
``azure-cognitiveservices-vision-computervision`` (msrest-based, deprecated upstream;
``pip install 'smoothapi-certified[azure]'``), with msrest's retries, redirects and HTTP
logging off. ``api="4.0"`` calls ``POST {endpoint}/computervision/imageanalysis:analyze``
with aiohttp and needs no extra.

Redirects: the key never goes to another origin. v3.2 follows no redirect; 4.0 follows a
same-origin 307 or 308 only (the method and body kept); any other redirect is a
:class:`~smoothapi.errors.RedirectError`. Answers over ``max_response_bytes`` (8 MiB by
default) are not read further (:class:`~smoothapi.errors.ResponseTooLargeError`).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    InvalidImageError,
    InvalidInputError,
    ProviderError,
    ServerError,
    error_for_status,
    parse_retry_after,
)
from ._transport import fetch, read_body, redirect_error
from .encoding import ImageLimits
from .remote import Ranked, RemoteAdapter, checked, import_optional, rank

__all__ = ["API_VERSIONS", "ENDPOINT_ENV", "ERRORS", "KEY_ENV", "AzureVisionAdapter", "map_error"]

ENDPOINT_ENV = ("AZURE_VISION_ENDPOINT", "VISION_ENDPOINT")
KEY_ENV = ("AZURE_VISION_KEY", "VISION_KEY")
ANALYZE_API_VERSION = "2023-10-01"  # Image Analysis 4.0, generally available

_MB = 1_000_000  # "MB" read as 10^6 bytes: below the limit under either reading
#: Image limits per API. The docs say "less than 4 MB / 20 MB" and "greater than
#: 50 x 50 and less than 16,000 x 16,000 pixels"; older v3.2 pages give no maximum
#: side (10,000 for Read), so v3.2 keeps the smaller 10,000.
API_VERSIONS: dict[str, ImageLimits] = {
    "v3.2": ImageLimits(max_bytes=4 * _MB - 1, min_side=51, max_side=10_000),
    "4.0": ImageLimits(max_bytes=20 * _MB - 1, min_side=51, max_side=15_999),
}

#: Azure error code (``error.code``, ``error.innererror.code``, a top-level ``code`` or
#: the ``ms-azure-ai-errorcode`` header) -> error class, for 4xx answers. Everything
#: else maps by HTTP status through :func:`~smoothapi.errors.error_for_status`.
ERRORS: dict[str, type[ProviderError]] = {
    code: InvalidImageError
    for code in (
        "InvalidImage",
        "InvalidImageFormat",
        "InvalidImageSize",
        "InvalidImageDimension",
        "UnsupportedImageFormat",
        "NotSupportedImage",
        "UnsupportedMediaType",
    )
}


def _codes_and_message(body: Any) -> tuple[list[str], str]:
    """Error codes (outermost first) and message from an Azure error body."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body or b"{}")
        except ValueError:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return [], text.strip()[:200]
    if not isinstance(body, Mapping):
        return [], ""
    error = body.get("error")
    if not isinstance(error, Mapping):
        error = body
    inner = error.get("innererror")
    if not isinstance(inner, Mapping):
        inner = {}
    codes = [str(c) for c in (error.get("code"), inner.get("code")) if c]
    message = str(inner.get("message") or error.get("message") or "")
    return codes, message


def map_error(
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    secret: str | None = None,
) -> ProviderError:
    """The error for an Azure HTTP answer: its code through :data:`ERRORS` for 4xx,
    else its status through :func:`~smoothapi.errors.error_for_status`; ``Retry-After``
    becomes ``RateLimitError.retry_after``. ``secret`` is cut out of the message."""
    headers = headers or {}
    codes, message = _codes_and_message(body)
    if headers.get("ms-azure-ai-errorcode"):
        codes.append(headers["ms-azure-ai-errorcode"])
    if secret:
        message = message.replace(secret, "<redacted>")
    code = next((c for c in reversed(codes) if c in ERRORS), codes[-1] if codes else None)
    text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    cls = ERRORS.get(code or "") if 400 <= status < 500 and status not in (401, 403, 429) else None
    if cls is not None:
        return cls(text, provider="azure", status=status, code=code)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    return error_for_status(status, text, provider="azure", code=code, retry_after=retry_after)


def _no_answer(exc: BaseException, timed_out: bool) -> APIConnectionError:
    """The error for a request that got no HTTP answer at all (a connect timeout was
    never sent; a read timeout may have been billed)."""
    if timed_out:
        sent = "connect" not in type(exc).__name__.lower()
        return APITimeoutError(
            f"no answer in time ({type(exc).__name__})", provider="azure", possibly_billed=sent
        )
    return APIConnectionError(f"no answer: {type(exc).__name__}: {exc}", provider="azure")


class AzureVisionAdapter(RemoteAdapter):
    """Azure AI Vision tags as a base classifier (see the module docstring).

    The top label is the tag with the highest confidence. Azure's order is not
    relied upon: tags are sorted by confidence, highest first, and tags with equal
    confidence alphabetically by name, so the top label is a fixed function of the
    response. No tags: top label ``None``.

    One image per request (``max_batch = 1``). Limits: v3.2 images < 4 MB, 4.0 < 20 MB,
    both more than 50 px and less than 16,000 px a side (v3.2 kept to 10,000 here);
    images are scaled into them before sending. Throughput (for a rate limiter, not
    enforced here): free tier F0 20 calls a minute, S1 about 20 calls a second
    (raised on request); both unverified. A 429 is raised as ``RateLimitError`` with
    the ``Retry-After`` wait; nothing is retried here.

    Args:
        endpoint: ``https://<resource>.cognitiveservices.azure.com`` (default: env).
        key: the resource key (default: env).
        api: ``"v3.2"`` (SDK) or ``"4.0"`` (REST, Image Analysis).
        language: tag language (``"en"``; v3.2 also es, ja, pt, zh).
        model_version: ``"latest"`` or a dated model version.
        **options: :class:`~smoothapi.adapters.RemoteAdapter` options (``timeout`` ...).
    """

    name = "azure"
    max_batch = 1
    #: Half of S1's ~20 TPS; the free tier allows 20 calls a minute:
    #: pass RateLimits(requests_per_second=0.33) there.
    requests_per_second = 10.0
    max_in_flight = 8
    limits = API_VERSIONS["v3.2"]

    def __init__(
        self,
        endpoint: str | None = None,
        key: str | None = None,
        *,
        api: str = "v3.2",
        language: str = "en",
        model_version: str = "latest",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if api not in API_VERSIONS:
            raise InvalidInputError(f"api must be one of {tuple(API_VERSIONS)}, got {api!r}")
        self.api, self.language, self.model_version = api, language, model_version
        self.limits = API_VERSIONS[api]
        endpoint = endpoint or next((os.environ[n] for n in ENDPOINT_ENV if os.environ.get(n)), "")
        self._key = key or next((os.environ[n] for n in KEY_ENV if os.environ.get(n)), "")
        self.secrets(self._key)
        self.endpoint = endpoint.rstrip("/")
        if self.endpoint and not self.endpoint.startswith(("https://", "http://")):
            raise InvalidInputError("endpoint must be an http(s) URL")
        self._client: Any = None
        replay_only = self.recording is not None and self.recording.mode == "replay"
        if not (self.endpoint and self._key):
            if not replay_only:
                raise self._missing_credentials()
        elif api == "v3.2":
            self._client = self._make_sdk_client()

    def __repr__(self) -> str:
        return f"AzureVisionAdapter(endpoint={self.endpoint!r}, api={self.api!r})"

    def request_params(self) -> dict[str, Any]:
        params = {"api": self.api, "language": self.language, "model_version": self.model_version}
        if self.api == "4.0":
            params.update(api_version=ANALYZE_API_VERSION, features="tags")
        return params

    @staticmethod
    def parse(raw: Mapping[str, Any]) -> Ranked:
        """v3.2 ``{"tags": [...]}`` or 4.0 ``{"tagsResult": {"values": [...]}}`` -> ranked.

        An answer without that shape (no tag list, a tag without a non-empty ``name``
        string or a finite ``confidence``) raises ``KeyError`` / ``TypeError`` /
        ``ValueError``: a malformed answer.
        """
        tags = raw["tagsResult"]["values"] if "tagsResult" in raw else raw["tags"]
        if not isinstance(tags, list):
            raise TypeError(f"the tags are a {type(tags).__name__}, not a list")
        pairs = []
        for tag in tags:
            name, confidence = tag["name"], tag["confidence"]
            if not isinstance(name, str):
                raise TypeError(f"malformed tag {tag!r:.100}")
            name, confidence = checked(name, confidence)
            pairs.append((name, min(1.0, max(0.0, confidence))))
        return rank(pairs)

    async def _send(self, images: Sequence[bytes]) -> list[Mapping[str, Any] | ProviderError]:
        if not (self.endpoint and self._key):
            raise self._missing_credentials()
        if self.api == "v3.2":
            return [await self.in_thread(self._tag_v32, images[0])]
        return [await self._analyze_v40(images[0])]

    # --- transports ---------------------------------------------------------------------

    def _missing_credentials(self) -> AuthenticationError:
        return AuthenticationError(
            f"no Azure AI Vision credentials: pass endpoint= and key=, or set "
            f"{ENDPOINT_ENV[0]} and {KEY_ENV[0]}",
            provider=self.name,
        )

    def _make_sdk_client(self) -> Any:
        package = "azure-cognitiveservices-vision-computervision"
        vision = import_optional("azure.cognitiveservices.vision.computervision", "azure", package)
        auth = import_optional("msrest.authentication", "azure", package="msrest")
        client = vision.ComputerVisionClient(
            self.endpoint, auth.CognitiveServicesCredentials(self._key)
        )
        # No retries of any kind (msrest retries 5xx and connection errors 3 times by
        # default): the smoothing client decides. Statuses and read timeouts come back
        # as they are, not wrapped in "max retries exceeded".
        retry_policy = client.config.retry_policy
        retry_policy.retries = 0  # total, connect and read
        retry = retry_policy.policy  # urllib3's Retry, edited in place (msrest reads it)
        retry.read, retry.status_forcelist = False, frozenset()
        retry.raise_on_status, retry.respect_retry_after_header = False, False
        client.config.connection.timeout = self.timeout
        # No redirects: requests would take the key header to another origin (it only drops
        # Authorization there). A response hook runs once the headers are in, before
        # requests reads the body: it refuses a 3xx, and reads the body itself, bounded in
        # size and cut at the deadline.
        client.config.redirect_policy.allow = False
        client.config.hooks.append(self._read_bounded)
        # msrest's HTTP logger prints request headers at DEBUG level. The key is a session
        # header there, not among them, but keep the logger off regardless.
        client.config.enable_http_logger = False
        return client

    def _read_bounded(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """A requests response hook: a redirect refused (none is followed here), else the
        body read by :func:`read_body` and kept in memory."""
        if 300 <= response.status_code < 400:
            response.close()
            location = response.headers.get("Location")
            error = redirect_error(response.status_code, response.url, location, self.name,
                                   followed=())
            if error is not None:  # always, with nothing followed
                raise error
        response.raw = io.BytesIO(read_body(self, response.raw, decode_content=True))

    def _tag_v32(self, image: bytes) -> dict[str, Any]:
        """One blocking v3.2 tag call through the SDK; the REST JSON body."""
        import requests
        from msrest.exceptions import ClientRequestError, DeserializationError, HttpOperationError

        try:
            answer = self._client.tag_image_in_stream(
                io.BytesIO(image),
                language=self.language,
                model_version=self.model_version,
                raw=True,
            )
        except HttpOperationError as exc:  # ComputerVisionErrorResponseException included
            response = exc.response
            raise map_error(
                response.status_code, response.content, response.headers, secret=self._key
            ) from exc
        except ClientRequestError as exc:
            inner = exc.inner_exception
            raise _no_answer(inner or exc, isinstance(inner, requests.Timeout)) from exc
        except DeserializationError as exc:
            raise ServerError("malformed answer", provider=self.name) from exc
        # The SDK parsed the body into a TagResult already; keep the REST JSON itself.
        return answer.response.json()

    async def _analyze_v40(self, image: bytes) -> dict[str, Any]:
        """One Image Analysis 4.0 call with aiohttp; the REST JSON body."""
        import aiohttp

        session = self.loop_local(
            "session",
            lambda: aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)),
        )
        params = {
            "api-version": ANALYZE_API_VERSION,
            "features": "tags",
            "language": self.language,
            "model-version": self.model_version,
        }
        headers = {
            "Ocp-Apim-Subscription-Key": self._key,
            "Content-Type": "application/octet-stream",
        }
        url = f"{self.endpoint}/computervision/imageanalysis:analyze"
        try:
            status, reply_headers, body = await fetch(
                self, session, "POST", url, lambda: {"data": image, "headers": headers},
                params=params,
            )
        except asyncio.TimeoutError as exc:  # aiohttp.ServerTimeoutError included
            raise _no_answer(exc, timed_out=True) from exc
        except aiohttp.ClientError as exc:
            raise _no_answer(exc, timed_out=False) from exc
        if status != 200:
            raise map_error(status, body, reply_headers, secret=self._key)
        try:
            return json.loads(body)  # its shape is checked by parse before it counts
        except ValueError as exc:
            raise ServerError("malformed answer", provider=self.name) from exc
