"""Amazon Rekognition ``DetectLabels`` as a base classifier.

Credentials and region come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, shared config
files, SSO, instance and container roles; ``AWS_REGION`` / ``AWS_DEFAULT_REGION``)
or from a boto3 client you pass in. boto3 is imported when the adapter is built
(``pip install 'smoothapi-certified[aws]'``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidImageError,
    InvalidInputError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ServerError,
    error_for_status,
    parse_retry_after,
)
from ._transport import read_body
from .encoding import ImageLimits
from .remote import Ranked, RemoteAdapter, checked, import_optional

__all__ = ["ERRORS", "RekognitionAdapter", "map_error"]

#: Rekognition error code, or botocore exception class name -> error class. Codes not
#: listed map by HTTP status (:func:`~smoothapi.errors.error_for_status`); botocore
#: exceptions by the first class of their MRO listed here.
ERRORS: dict[str, type[ProviderError]] = {
    "ThrottlingException": RateLimitError,
    "ProvisionedThroughputExceededException": RateLimitError,
    "LimitExceededException": RateLimitError,
    "AccessDeniedException": PermissionDeniedError,
    "UnrecognizedClientException": AuthenticationError,
    "InvalidSignatureException": AuthenticationError,
    "IncompleteSignatureException": AuthenticationError,
    "MissingAuthenticationTokenException": AuthenticationError,
    "ExpiredTokenException": AuthenticationError,
    "ExpiredToken": AuthenticationError,
    "InvalidImageFormatException": InvalidImageError,
    "ImageTooLargeException": InvalidImageError,
    "InvalidParameterException": BadRequestError,
    "InternalServerError": ServerError,
    "ServiceUnavailable": ServerError,
    "ServiceUnavailableException": ServerError,
    # botocore's own exceptions: nothing came back from the service.
    "NoCredentialsError": AuthenticationError,
    "PartialCredentialsError": AuthenticationError,
    "NoRegionError": BadRequestError,
    "ParamValidationError": BadRequestError,
    "ResponseParserError": ServerError,  # a body botocore could not parse: malformed answer
    "ReadTimeoutError": APITimeoutError,
    "ConnectTimeoutError": APITimeoutError,
    "EndpointConnectionError": APIConnectionError,
    "ConnectionClosedError": APIConnectionError,
    "HTTPClientError": APIConnectionError,
}

# What to do about the errors that are about this machine's configuration.
_HINTS = {
    "NoCredentialsError": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    "PartialCredentialsError": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    "NoRegionError": "set AWS_REGION or AWS_DEFAULT_REGION, or pass region_name",
}

# Anything shaped like an AWS access key id, or a long token-like run, in a server message.
_SECRETISH = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{12,}|[A-Za-z0-9/+=]{32,}")


def _clean(message: str) -> str:
    """The first line of a message, shortened, with anything key-like redacted.

    (AWS signature errors append the canonical request, which holds signed headers
    such as the session token, after a blank line.)
    """
    first = (message.strip().splitlines() or [""])[0]

    def redact(match: re.Match[str]) -> str:
        text = match.group()
        return "<redacted>" if any(c.isdigit() for c in text) else text

    return _SECRETISH.sub(redact, first)[:300]


# botocore's own DEBUG logging writes the signed request: the session token and the
# access key id. These loggers get a filter that redacts them (the secret key is never logged).
_SIGNING_LOGGERS = ("botocore.auth", "botocore.endpoint")
_SIGNED_VALUES = re.compile(
    r"(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?|Credential=)[^\s'\",/}]+", re.IGNORECASE
)


class _RedactSigning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SIGNED_VALUES.sub(r"\1<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _redact_signing_logs() -> None:
    for name in _SIGNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSigning) for f in logger.filters):
            logger.addFilter(_RedactSigning())


def map_error(exc: Exception, provider: str = "aws") -> ProviderError:
    """The :mod:`smoothapi.errors` error for a botocore ``ClientError`` or ``BotoCoreError``."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping) and "Error" in response:  # botocore ClientError
        error = response.get("Error") or {}
        meta = response.get("ResponseMetadata") or {}
        code = str(error.get("Code") or "") or None
        status = meta.get("HTTPStatusCode")
        message = f"{code}: {_clean(str(error.get('Message') or ''))}"
        cls = ERRORS.get(code or "")
        headers = {str(k).lower(): v for k, v in (meta.get("HTTPHeaders") or {}).items()}
        retry_after = parse_retry_after(headers.get("retry-after"))
        if cls is None:
            return error_for_status(
                int(status or 500), message, provider=provider, code=code, retry_after=retry_after
            )
        return cls(message, provider=provider, status=status, code=code, retry_after=retry_after)
    for klass in type(exc).__mro__:
        if klass.__name__ in ERRORS:
            name = klass.__name__
            hint = f" ({_HINTS[name]})" if name in _HINTS else ""
            error = ERRORS[name](f"{name}: {_clean(str(exc))}{hint}", provider=provider)
            if isinstance(error, APITimeoutError):  # a read timeout was sent; a connect one not
                error.possibly_billed = name == "ReadTimeoutError"
            return error
    return ProviderError(f"{type(exc).__name__}: {_clean(str(exc))}", provider=provider)


class RekognitionAdapter(RemoteAdapter):
    """Amazon Rekognition ``DetectLabels``: one image per request, scores ``Confidence / 100``.

    Ranking: by score, highest first. Rekognition returns each label's ancestors
    (``Parents``) as labels of their own, often with exactly the same confidence
    (e.g. Vulture, Bird and Animal all at 99.63). Among tied scores the most specific
    label wins: a label that is a parent of another tied label ranks after it
    (grandparents after parents), and what is still tied sorts alphabetically. The
    response order is not trusted; ``Aliases`` and ``Categories`` are ignored.

    Rekognition leaves out labels below ``MinConfidence`` (55 by default), so a very
    noisy image may come back with no labels: its top label is then ``None``.

    Args:
        max_labels: ``MaxLabels`` (the service's default and maximum is 1,000).
        min_confidence: ``MinConfidence``, 0-100.
        region_name: the AWS region (default: ``AWS_REGION``, else ``AWS_DEFAULT_REGION``,
            else the profile's region).
        endpoint_url: another endpoint (VPC or FIPS endpoint, a local test server).
        client: a ready boto3 ``rekognition`` client to use instead; its own config
            applies, so turn its retries off (``retries={"total_max_attempts": 1}``).
        **options: the :class:`~smoothapi.adapters.remote.RemoteAdapter` options.

    The client this adapter builds makes one attempt per request (the smoothing
    client does the retrying), uses ``timeout`` for connecting and reading, and keeps
    as many pooled connections (``max_pool_connections``) as threads in the adapter's
    pool (``max_in_flight`` at first; the client is rebuilt when the pool grows). It
    reads each answer's body itself, at most ``max_response_bytes`` (8 MiB by default),
    and lets go of it when ``timeout`` has passed (a server dripping the answer in).
    A client you pass keeps its own configuration. The access key id, secret key and
    session token are redacted from every error and from every botocore log record; a
    filter on ``botocore.auth`` and ``botocore.endpoint`` also redacts signed-request
    values.
    """

    name = "aws"
    max_batch = 1
    #: Rekognition DetectLabels: 5 TPS is the smallest regional default quota (some regions
    #: allow 50); raise it with RateLimits(requests_per_second=...) if yours is higher.
    requests_per_second = 5.0
    max_in_flight = 16
    # DetectLabels: JPEG or PNG of at most 5 MB as raw bytes, 80 to 10,000 px per side.
    limits = ImageLimits(max_bytes=5 * 1024 * 1024, min_side=80, max_side=10_000)

    def __init__(
        self,
        *,
        max_labels: int | None = None,
        min_confidence: float | None = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if max_labels is not None and (
            isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1
        ):
            raise InvalidInputError(f"max_labels must be a positive integer, got {max_labels!r}")
        if min_confidence is not None and not 0 <= min_confidence <= 100:
            raise InvalidInputError(f"min_confidence must lie in 0..100, got {min_confidence!r}")
        self.max_labels = max_labels
        self.min_confidence = None if min_confidence is None else float(min_confidence)
        self.region_name, self.endpoint_url = region_name, endpoint_url
        if client is None:
            self._boto3 = import_optional("boto3", "aws")
            self._botocore_config = import_optional("botocore.config", "aws", package="botocore")
        self._exceptions = import_optional("botocore.exceptions", "aws", package="botocore")
        _redact_signing_logs()
        self._client = client
        self._client_pool = 0  # max_pool_connections of the client built here (0: none)
        self._lock = threading.Lock()
        if client is not None:
            self._register_credentials(client)

    @property
    def max_pool_connections(self) -> int:
        """botocore's connection pool: one connection per thread of the adapter's pool."""
        return max(10, self.threads)

    def _register_credentials(self, client: Any) -> None:
        signer = getattr(client, "_request_signer", None)
        credentials = getattr(signer, "_credentials", None)
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            self.secrets(frozen.access_key, frozen.secret_key, frozen.token)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(region_name={self.region_name!r}, "
            f"max_labels={self.max_labels!r}, min_confidence={self.min_confidence!r})"
        )

    def request_params(self) -> dict[str, Any]:
        return {
            "operation": "DetectLabels",
            "max_labels": self.max_labels,
            "min_confidence": self.min_confidence,
        }

    @staticmethod
    def parse(raw: Mapping[str, Any]) -> Ranked:
        """A ``DetectLabels`` answer -> ranked labels; ``ValueError`` (or ``TypeError``,
        ``KeyError``) if it lacks the documented shape: a ``Labels`` list of objects
        with a non-empty ``Name`` string and a finite ``Confidence``."""
        labels = raw["Labels"]
        if not isinstance(labels, list):
            raise TypeError(f"Labels is a {type(labels).__name__}, not a list")
        scores: dict[str, float] = {}
        parents: dict[str, set[str]] = {}
        for label in labels:
            if not isinstance(label["Name"], str):
                raise TypeError(f"malformed label {label!r:.100}")
            name, confidence = checked(label["Name"], label["Confidence"])
            score = min(1.0, max(0.0, confidence / 100))
            scores[name] = max(score, scores.get(name, 0.0))
            parents.setdefault(name, set()).update(
                p["Name"] for p in label.get("Parents") or [] if p.get("Name")
            )
        # Tied labels form a small forest: children[p] = the labels tied with p that name p
        # as a parent. height = how many tied generations sit below (0: the most specific).
        children: dict[str, list[str]] = {name: [] for name in scores}
        for child, ps in parents.items():
            for parent in ps:
                if parent in scores and parent != child and scores[parent] == scores[child]:
                    children[parent].append(child)
        height: dict[str, int] = {}

        def height_of(name: str, path: frozenset[str]) -> int:
            if name not in height:
                below = [height_of(c, path | {name}) + 1 for c in children[name] if c not in path]
                height[name] = max(below, default=0)
            return height[name]

        return sorted(
            scores.items(), key=lambda item: (-item[1], height_of(item[0], frozenset()), item[0])
        )

    def _make_client(self) -> Any:
        config = self._botocore_config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            max_pool_connections=self.max_pool_connections,
            user_agent_extra="smoothapi",
        )
        # botocore itself reads AWS_DEFAULT_REGION and the profile, not AWS_REGION.
        region = self.region_name or os.environ.get("AWS_REGION") or None
        session = self._boto3.session.Session(region_name=region)
        client = session.client("rekognition", config=config, endpoint_url=self.endpoint_url)
        self._register_credentials(client)
        # botocore's own send (its pool, proxies and TLS settings) with the body left unread,
        # read by _send_bounded instead. ``_endpoint`` is private, but has been stable for
        # years; "before-send" is botocore's documented way to supply the response.
        http_session = client._endpoint.http_session
        client.meta.events.register(
            "before-send.rekognition", functools.partial(self._send_bounded, http_session)
        )
        self._client_pool = self.max_pool_connections
        return client

    def _send_bounded(self, http_session: Any, request: Any, **_: Any) -> Any:
        """Send ``request`` and read its answer's body: at most ``max_response_bytes``,
        and no longer than the request's deadline (see :func:`read_body`)."""
        awsrequest = import_optional("botocore.awsrequest", "aws", package="botocore")
        request.stream_output = True  # the status and headers only: the body is read below
        response = http_session.send(request)
        body = read_body(self, response.raw)
        return awsrequest.AWSResponse(request.url, response.status_code, response.headers,
                                      _Read(body))

    def _detect_labels(self, image: bytes) -> dict[str, Any]:
        with self._lock:
            if self._client is None or 0 < self._client_pool < self.max_pool_connections:
                self._client = self._make_client()  # none yet, or the thread pool grew
            client = self._client
        params: dict[str, Any] = {"Image": {"Bytes": image}}
        if self.max_labels is not None:
            params["MaxLabels"] = self.max_labels
        if self.min_confidence is not None:
            params["MinConfidence"] = self.min_confidence
        response = client.detect_labels(**params)
        return {k: v for k, v in response.items() if k != "ResponseMetadata"}

    async def _send(self, images: Sequence[bytes]) -> list[Mapping[str, Any] | ProviderError]:
        (image,) = images
        if self.limits.max_bytes and len(image) > self.limits.max_bytes:
            raise InvalidImageError(
                f"image of {len(image)} bytes is over DetectLabels' limit of "
                f"{self.limits.max_bytes} bytes",
                provider=self.name,
            )
        return [await self.in_thread(self._detect_labels, image)]

    def map_exception(self, exc: Exception) -> ProviderError:
        """botocore's ``ClientError`` and ``BotoCoreError`` through :func:`map_error`;
        anything else (botocore's parser choking on a malformed body) as the base does."""
        if isinstance(exc, (self._exceptions.ClientError, self._exceptions.BotoCoreError)):
            return map_error(exc, self.name)
        return super().map_exception(exc)


class _Read:
    """An answer body already read, as botocore's ``AWSResponse`` reads its ``raw``."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        yield self.body
