"""Google Cloud Vision ``LABEL_DETECTION`` as a base classifier.

    adapter = GoogleVisionAdapter()                  # application default credentials
    adapter = GoogleVisionAdapter(api_key="...")     # or set GOOGLE_API_KEY

Requests go through ``ImageAnnotatorAsyncClient.batch_annotate_images`` (gRPC, asyncio)
of ``google-cloud-vision`` (``pip install 'smoothapi-certified[google]'``), up to 16
images a request. Credentials: ``api_key=``, else the ``GOOGLE_API_KEY`` environment
variable, else Google's application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud auth application-default login``, the metadata server on Google Cloud).

Each image's answer is turned into the REST API's JSON shape (``labelAnnotations`` with
``description``, ``score``, ``mid``, ``topicality``), so recordings and parsing are the
same whichever transport produced them.
"""

from __future__ import annotations

import os
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
    ResponseTooLargeError,
    ServerError,
    error_for_status,
)
from .encoding import ImageLimits
from .remote import Ranked, RemoteAdapter, checked, import_optional, rank

__all__ = ["GRPC_ERRORS", "GoogleVisionAdapter", "map_error", "map_exception"]

#: gRPC status code -> (name, HTTP status, error class): per-image ``responses[i].error``
#: and whole-request failures map through this one table. A per-image
#: ``INVALID_ARGUMENT`` is an :class:`~smoothapi.errors.InvalidImageError` (that image was
#: refused); an ``UNAVAILABLE`` that never reached the server (refused, DNS) is an
#: :class:`~smoothapi.errors.APIConnectionError`.
GRPC_ERRORS: dict[int, tuple[str, int, type[ProviderError]]] = {
    1: ("CANCELLED", 499, APIConnectionError),
    2: ("UNKNOWN", 500, ServerError),
    3: ("INVALID_ARGUMENT", 400, BadRequestError),
    4: ("DEADLINE_EXCEEDED", 504, APITimeoutError),
    5: ("NOT_FOUND", 404, BadRequestError),
    6: ("ALREADY_EXISTS", 409, BadRequestError),
    7: ("PERMISSION_DENIED", 403, PermissionDeniedError),
    8: ("RESOURCE_EXHAUSTED", 429, RateLimitError),
    9: ("FAILED_PRECONDITION", 400, BadRequestError),
    10: ("ABORTED", 409, ServerError),
    11: ("OUT_OF_RANGE", 400, BadRequestError),
    12: ("UNIMPLEMENTED", 501, BadRequestError),  # a wrong endpoint: sending again won't help
    13: ("INTERNAL", 500, ServerError),
    14: ("UNAVAILABLE", 503, ServerError),
    15: ("DATA_LOSS", 500, ServerError),
    16: ("UNAUTHENTICATED", 401, AuthenticationError),
}

_NO_CONNECTION = ("failed to connect", "connection refused", "dns resolution failed")
_NO_CREDENTIALS = (
    "no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS (or run "
    "'gcloud auth application-default login') or GOOGLE_API_KEY, or pass api_key"
)

_MAX_SEND = 64 * 1024 * 1024
#: What gRPC says when an answer is over the channel's receive limit (RESOURCE_EXHAUSTED).
TOO_LARGE = "received message larger than max"

# The documented limits: 16 images, 20 MB per image, 10 MB per JSON request (base64).
MAX_REQUEST_BYTES = 10_000_000
_PER_IMAGE_JSON = 128  # {"image":{"content":""},"features":[{"type":...,"maxResults":...}]}


def map_error(
    code: int | None,
    message: str,
    *,
    http_status: int | None = None,
    per_image: bool = False,
    retry_after: float | None = None,
    provider: str = "google",
) -> ProviderError:
    """The :mod:`smoothapi.errors` error for a gRPC status ``code`` (or, lacking one, an
    HTTP status), through :data:`GRPC_ERRORS`."""
    message = " ".join(str(message).split())[:300]
    if code not in GRPC_ERRORS:
        status = http_status or 500
        text = f"{code if code is not None else status}: {message}"
        return error_for_status(status, text, provider=provider, retry_after=retry_after)
    name, status, cls = GRPC_ERRORS[code]
    if per_image and cls is BadRequestError and code == 3:
        cls = InvalidImageError
    if code == 14 and any(marker in message.lower() for marker in _NO_CONNECTION):
        cls = APIConnectionError
    if code == 8 and TOO_LARGE in message.lower():  # over max_response_bytes, not a quota
        cls = ResponseTooLargeError
    text = f"{name}: {message}"
    error = cls(text, provider=provider, status=status, code=name, retry_after=retry_after)
    if code == 4 and not per_image:  # DEADLINE_EXCEEDED: sent, abandoned, maybe billed
        error.possibly_billed = True
    return error


def _retry_after(exc: Exception) -> float | None:
    """The wait a ``google.rpc.RetryInfo`` detail asks for, if the error carries one."""
    for detail in getattr(exc, "details", None) or ():
        delay = getattr(detail, "retry_delay", None)
        if delay is not None and hasattr(delay, "seconds"):
            return max(0.0, delay.seconds + delay.nanos / 1e9)
    return None


def map_exception(exc: Exception, provider: str = "google") -> ProviderError:
    """The error for a whole-request ``google.api_core.exceptions.GoogleAPICallError``:
    by its gRPC code, else its HTTP status; a ``RetryInfo`` detail sets ``retry_after``."""
    grpc_code = getattr(exc, "grpc_status_code", None)  # a grpc.StatusCode: value (n, name)
    value = getattr(grpc_code, "value", grpc_code)
    code = value[0] if isinstance(value, tuple) else value
    http_status = getattr(exc, "code", None)
    return map_error(
        code if isinstance(code, int) else None,
        getattr(exc, "message", None) or type(exc).__name__,
        http_status=http_status if isinstance(http_status, int) else None,
        retry_after=_retry_after(exc),
        provider=provider,
    )


class GoogleVisionAdapter(RemoteAdapter):
    """Google Cloud Vision label detection, 16 images per ``batch_annotate_images`` call.

    Ranking: labels by ``score``, highest first; equal scores go to the ``description``
    that sorts first alphabetically (the response order is not trusted, ``topicality``
    is ignored). An image with no ``labelAnnotations`` has no label; an annotation
    without a ``description`` makes the answer malformed.

    Answers over ``max_response_bytes`` (8 MiB by default) raise ``ResponseTooLargeError``:
    on the plaintext channel (``insecure``) gRPC refuses to receive them; the SDK's default
    channel sets no receive limit, so there the size is checked once received.

    Size limits: an image may be 20 MB, but a whole JSON request only 10 MB after
    base64 (4/3 of the bytes). Images are therefore kept to ``max_bytes`` = 7.3 MB, so
    that any one image fits a request, and a batch whose base64 total would pass
    10 MB is split into consecutive requests inside one :meth:`_send` (usually a batch
    of 16 fits one request). If a later one of those requests fails, the answers
    already received are kept and the error stands in the place of each image left, so
    that only those are sent again. The same limit is applied to the gRPC transport, whose
    limit Google does not document separately. No minimum side is documented (640x480
    is only recommended for accuracy), so ``min_side`` is 1 and small images are sent
    as they are.

    Args:
        max_results: labels asked for per image (``maxResults``).
        model: ``Feature.model``, e.g. ``"builtin/latest"``; ``None`` for the default.
        api_key: an API key; default ``GOOGLE_API_KEY``, else application default
            credentials. Never shown in ``repr``, logs, errors or recordings.
        client: an ``ImageAnnotatorAsyncClient`` (used as is, so only on the event loop
            it was made on) or a zero-argument callable making one (called once per
            event loop). Overrides ``api_key`` and ``endpoint``.
        endpoint: ``client_options.api_endpoint`` (``host:port``), e.g. a regional one.
        insecure: plaintext gRPC to ``endpoint`` (an emulator, a loopback test server such
            as :class:`~smoothapi.testing.LoopbackProvider`), through the SDK's own asyncio
            transport; an ``api_key`` then travels as ``x-goog-api-key`` metadata and no
            application default credentials are looked up.
        **options: the :class:`~smoothapi.adapters.remote.RemoteAdapter` options.

    The SDK's own retries are off (``retry=None``; the smoothing client retries) and
    each call has ``timeout=self.timeout``.
    """

    name = "google"
    max_batch = 16
    #: About 1,800 requests a minute by default.
    requests_per_second = 30.0
    max_in_flight = 16
    limits = ImageLimits(max_bytes=7_300_000, min_side=1)
    #: Largest request, counted as the REST API's JSON with base64 images.
    max_request_bytes = MAX_REQUEST_BYTES

    def __init__(
        self,
        *,
        max_results: int = 50,
        model: str | None = None,
        api_key: str | None = None,
        client: Any = None,
        endpoint: str | None = None,
        insecure: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if insecure and not endpoint:
            raise InvalidInputError("insecure=True needs endpoint='host:port'")
        if not isinstance(max_results, int) or max_results < 1:
            raise InvalidInputError(f"max_results must be a positive int, got {max_results!r}")
        self._vision = import_optional("google.cloud.vision", "google", "google-cloud-vision")
        self._api_core = import_optional("google.api_core.exceptions", "google", "google-api-core")
        self._auth_errors = import_optional("google.auth.exceptions", "google", "google-auth")
        self._json_format = import_optional("google.protobuf.json_format", "google", "protobuf")
        self.max_results, self.model, self.endpoint = max_results, model, endpoint
        self._client = client
        self.insecure = bool(insecure)
        self._api_key = api_key or os.environ.get("GOOGLE_API_KEY") or None
        self.secrets(self._api_key)

    def __repr__(self) -> str:
        auth = "client" if self._client is not None else "api_key" if self._api_key else "adc"
        return (
            f"GoogleVisionAdapter(max_results={self.max_results}, model={self.model!r}, "
            f"endpoint={self.endpoint!r}, auth={auth!r}"
            + (", insecure=True)" if self.insecure else ")")
        )

    def request_params(self) -> dict[str, Any]:
        return {"feature": "LABEL_DETECTION", "max_results": self.max_results, "model": self.model}

    @staticmethod
    def parse(raw: Mapping[str, Any]) -> Ranked:
        """One image's ``AnnotateImageResponse`` (REST JSON) -> ranked labels.

        No ``labelAnnotations`` is an image without labels (proto3 JSON leaves an empty
        list out, and a zero ``score``); one that is not a list of objects with a non-empty
        ``description`` string and a finite ``score`` raises ``TypeError`` / ``ValueError``:
        a malformed answer.
        """
        annotations = raw.get("labelAnnotations", [])
        if not isinstance(annotations, list):
            raise TypeError(f"labelAnnotations is a {type(annotations).__name__}, not a list")
        pairs = []
        for item in annotations:
            description = item.get("description")
            if not isinstance(description, str):
                raise TypeError(f"malformed label annotation {item!r:.100}")
            description, score = checked(description, item.get("score", 0.0))
            pairs.append((description, min(1.0, max(0.0, score))))
        return rank(pairs)

    @staticmethod
    def split_batch(
        body: Mapping[str, Any], provider: str = "google"
    ) -> list[Mapping[str, Any] | ProviderError]:
        """A ``BatchAnnotateImagesResponse`` (REST JSON) -> one body, or the mapped
        per-image ``error``, per image."""
        results: list[Mapping[str, Any] | ProviderError] = []
        responses = body.get("responses", [])
        if not isinstance(responses, list):
            raise ServerError("malformed answer: responses is not a list", provider=provider)
        for response in responses:
            if not isinstance(response, Mapping):
                raise ServerError(
                    "malformed answer: a response is not an object", provider=provider
                )
            error = response.get("error") or {}
            if error.get("code"):
                results.append(
                    map_error(
                        int(error["code"]),
                        error.get("message", ""),
                        per_image=True,
                        provider=provider,
                    )
                )
            else:
                results.append(response)
        return results

    # --- transport ---------------------------------------------------------------------

    def _make_client(self) -> Any:
        if callable(self._client):
            return self._client()
        if self.insecure:
            grpc = import_optional("grpc", "google", package="grpcio")
            transports = import_optional(
                "google.cloud.vision_v1.services.image_annotator.transports",
                "google",
                "google-cloud-vision",
            )
            channel = grpc.aio.insecure_channel(self.endpoint, options=[
                ("grpc.enable_retries", 0),
                ("grpc.max_send_message_length", _MAX_SEND),
                ("grpc.max_receive_message_length", self.max_response_bytes),
            ])
            transport = transports.ImageAnnotatorGrpcAsyncIOTransport(channel=channel)
            return self._vision.ImageAnnotatorAsyncClient(transport=transport)
        options: dict[str, str] = {}
        if self._api_key:
            options["api_key"] = self._api_key
        if self.endpoint:
            options["api_endpoint"] = self.endpoint
        try:
            return self._vision.ImageAnnotatorAsyncClient(client_options=options or None)
        except self._auth_errors.DefaultCredentialsError:
            raise AuthenticationError(_NO_CREDENTIALS, provider=self.name) from None

    def _get_client(self) -> Any:
        if self._client is not None and not callable(self._client):
            return self._client
        client = self.loop_local("client", self._make_client)
        self.loop_local("transport", lambda: client.transport)  # closed by aclose()
        return client

    def _groups(self, images: Sequence[bytes]) -> list[list[int]]:
        """Consecutive image indices whose JSON request stays under ``max_request_bytes``."""
        groups: list[list[int]] = [[]]
        size = 64  # {"requests":[...]}
        for index, image in enumerate(images):
            cost = 4 * ((len(image) + 2) // 3) + _PER_IMAGE_JSON
            if groups[-1] and size + cost > self.max_request_bytes:
                groups.append([])
                size = 64
            groups[-1].append(index)
            size += cost
        return groups

    async def _annotate(self, client: Any, request: Any) -> Any:
        """One ``batch_annotate_images`` call; every failure mapped to a ProviderError."""
        metadata: tuple[tuple[str, str], ...] = ()
        if self.insecure and self._api_key and not callable(self._client):
            metadata = (("x-goog-api-key", self._api_key),)
        try:
            return await client.batch_annotate_images(
                request=request, retry=None, timeout=self.timeout, metadata=metadata
            )
        except Exception as exc:  # noqa: BLE001 (every failure is typed, cause chained)
            raise self.map_exception(exc) from exc

    def map_exception(self, exc: Exception) -> ProviderError:
        """API errors by gRPC code (:func:`map_exception`), google-auth failures as
        authentication errors, a gRPC status the SDK left unwrapped by its code; anything
        else (a protobuf that does not parse) as the base class does."""
        if isinstance(exc, self._api_core.GoogleAPICallError):
            error = map_exception(exc, self.name)
            return self.too_large() if isinstance(error, ResponseTooLargeError) else error
        if isinstance(exc, self._auth_errors.DefaultCredentialsError):
            return AuthenticationError(_NO_CREDENTIALS, provider=self.name)
        if isinstance(exc, self._auth_errors.GoogleAuthError):
            return AuthenticationError(
                f"{type(exc).__name__}: could not get a token for the credentials",
                provider=self.name,
            )
        code, details = getattr(exc, "code", None), getattr(exc, "details", None)
        if callable(code) and callable(details):  # a raw grpc.RpcError
            value = getattr(code(), "value", (None,))
            error = map_error(value[0], str(details() or ""), provider=self.name)
            return self.too_large() if isinstance(error, ResponseTooLargeError) else error
        return super().map_exception(exc)

    async def _send(self, images: Sequence[bytes]) -> list[Mapping[str, Any] | ProviderError]:
        vision = self._vision
        client = self._get_client()
        feature = vision.Feature(
            type_=vision.Feature.Type.LABEL_DETECTION,
            max_results=self.max_results,
            model=self.model or "",
        )
        results: list[Mapping[str, Any] | ProviderError] = []
        groups = self._groups(images)
        for number, group in enumerate(groups):
            request = vision.BatchAnnotateImagesRequest(
                requests=[
                    vision.AnnotateImageRequest(
                        image=vision.Image(content=images[i]), features=[feature]
                    )
                    for i in group
                ]
            )
            try:
                reply = await self._annotate(client, request)
            except ProviderError as error:
                if not results:
                    raise
                # Earlier requests of this batch were answered (and paid): keep their
                # answers and put the error in the place of every image not answered,
                # so that only those are retried.
                results.extend(error for later in groups[number:] for _ in later)
                return results
            if reply is None:  # gRPC could not decode the answer's bytes
                raise ServerError(
                    "malformed answer: the response did not decode", provider=self.name
                )
            message = type(reply).pb(reply)
            if message.ByteSize() > self.max_response_bytes:  # a channel without the limit
                raise self.too_large()
            body = self._json_format.MessageToDict(message)
            part = self.split_batch(body, self.name)
            if len(part) != len(group):
                raise ServerError(
                    f"sent {len(group)} images, got {len(part)} responses", provider=self.name
                )
            results.extend(part)
        return results
