"""Clarifai's image recognition models over gRPC (``pip install 'smoothapi-certified[clarifai]'``).

    adapter = ClarifaiAdapter()                       # reads the PAT from CLARIFAI_PAT
    adapter = ClarifaiAdapter(pat=..., model_id="general-image-recognition")

One ``PostModelOutputs`` call carries up to 128 images, sent as raw bytes on an
asyncio gRPC channel (one per event loop) to ``api.clarifai.com:443``. The answer is
converted to Clarifai's REST JSON shape with ``MessageToDict`` (snake_case field
names, status codes as integers)::

    {"status": {"code": 10000, "description": "Ok"},
     "outputs": [{"status": {"code": 10000, ...}, "data": {"concepts": [
         {"id": "ai_...", "name": "train", "value": 0.9996}, ...]}}]}

and each image gets its output, trimmed to ``id``, ``status``, ``created_at`` and
``data`` (the echoed ``input`` and ``model`` are dropped: recordings hold no image
data and stay small). Outputs are matched to images by position, the order the
API returns them in.

Failures: a request-level status other than ``SUCCESS`` raises the mapped error; a
``MIXED_STATUS`` (or ``FAILURE``) answer with one output per image puts a
:class:`~smoothapi.errors.ProviderError` in place of each failed output. Clarifai
status codes and gRPC status codes map onto the error tree through one table,
:data:`ERRORS`. gRPC retries are switched off on the channel (no retry service
config, ``grpc.enable_retries=0``): the smoothing client does the retrying.

Limits: 20 MB and 85 megapixels per image; Clarifai documents no minimum side, so
images of any size are sent as they are. The default throughput is about 15
requests per second per account (:data:`REQUESTS_PER_SECOND`, not verified against
a primary source); a rate limiter should stay under it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from ..errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidImageError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ServerError,
    error_for_status,
    parse_retry_after,
)
from .encoding import ImageLimits
from .remote import Ranked, RemoteAdapter, checked, import_optional, rank

__all__ = ["ERRORS", "REQUESTS_PER_SECOND", "ClarifaiAdapter", "error_for_code", "split_outputs"]

DEFAULT_TARGET = "api.clarifai.com:443"
#: What gRPC says when an answer is over the channel's receive limit (RESOURCE_EXHAUSTED).
TOO_LARGE = "received message larger than max"
PAT_ENV = "CLARIFAI_PAT"
#: Clarifai's default per-account throughput (about; check your plan).
REQUESTS_PER_SECOND = 15

SUCCESS, MIXED_STATUS, FAILURE = 10000, 10010, 10020
_KEEP = ("id", "status", "created_at", "data")
_MAX_SEND = 1024 * 1024 * 1024

#: Clarifai status code (int) or gRPC status name (str) -> error class. Codes not
#: listed fall back to the ranges in :data:`ERROR_RANGES`.
ERRORS: dict[int | str, type[ProviderError]] = {
    10020: ServerError,  # FAILURE with no outputs to say why
    10030: ServerError,  # TRY_AGAIN
    11000: PermissionDeniedError,  # CONN_ACCOUNT_ISSUES
    11003: PermissionDeniedError,  # CONN_EXCEED_HOURLY_LIMIT
    11004: PermissionDeniedError,  # CONN_EXCEED_MONTHLY_LIMIT
    11005: RateLimitError,  # CONN_THROTTLED
    11006: PermissionDeniedError,  # CONN_EXCEEDS_LIMITS
    11007: PermissionDeniedError,  # CONN_INSUFFICIENT_SCOPES
    11104: PermissionDeniedError,  # CONN_NO_GDPR_CONSENT
    21201: PermissionDeniedError,  # MODEL_PERMISSION_DENIED
    21313: ServerError,  # MODEL_PREDICTION_FAILED
    21351: ServerError,  # MODEL_DEPLOYING
    21352: ServerError,  # MODEL_QUEUED_FOR_DEPLOYMENT
    21354: ServerError,  # MODEL_BUSY_PLEASE_RETRY
    21355: ServerError,  # MODEL_LOADING
    30103: PermissionDeniedError,  # INPUT_PERMISSION_DENIED
    30210: ServerError,  # INPUT_STORAGE_HOST_FAILED
    39996: ServerError,  # INPUT_CONNECTION_FAILED
    39998: ServerError,  # INPUT_WRITES_DISABLED_FOR_MAINTENANCE
    39999: BadRequestError,  # INPUT_INVALID_REQUEST
    40001: BadRequestError,  # PREDICT_INVALID_REQUEST
    40033: BadRequestError,  # RPC_MAX_MESSAGE_SIZE_EXCEEDED
    46003: InvalidImageError,  # FILETYPE_UNSUPPORTED
    "UNAVAILABLE": APIConnectionError,
    "CANCELLED": APIConnectionError,
    "DEADLINE_EXCEEDED": APITimeoutError,
    "RESOURCE_EXHAUSTED": RateLimitError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "INVALID_ARGUMENT": BadRequestError,
    "NOT_FOUND": BadRequestError,
    "FAILED_PRECONDITION": BadRequestError,
    "OUT_OF_RANGE": BadRequestError,
    "UNIMPLEMENTED": BadRequestError,
    "INTERNAL": ServerError,
    "UNKNOWN": ServerError,
    "DATA_LOSS": ServerError,
    "ABORTED": ServerError,
}

#: (first, last, class) for Clarifai codes not in :data:`ERRORS`.
ERROR_RANGES: tuple[tuple[int, int, type[ProviderError]], ...] = (
    (11000, 11099, AuthenticationError),  # CONN_TOKEN_INVALID, CONN_KEY_INVALID, ..._NOT_FOUND
    (11100, 11199, BadRequestError),  # CONN_BAD_REQUEST_FORMAT, CONN_DOES_NOT_EXIST ...
    (11200, 11299, AuthenticationError),  # CONN_AUTH_METHOD_DISABLED
    (21000, 21999, BadRequestError),  # MODEL_DOES_NOT_EXIST, MODEL_INVALID_ARGUMENT ...
    (30000, 31999, InvalidImageError),  # INPUT_DOWNLOAD_FAILED, INPUT_UNSUPPORTED_FORMAT ...
    (40000, 45999, ServerError),  # RPC, database, queue and cache failures
    (47100, 47199, InvalidImageError),  # MP_IMAGE_DECODE_ERROR, MP_DOWNLOAD_MAX_SIZE_...
    (69000, 69999, PermissionDeniedError),  # BILLING_INVALID_INFO, BILLING_MISSING_TOKENS
    (98000, 99999, ServerError),  # INTERNAL_*, *_UNCATEGORIZED
)


def error_for_code(
    code: int | str,
    message: str,
    *,
    provider: str = "clarifai",
    http_status: int | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """The error for a Clarifai status code or a gRPC status name, through :data:`ERRORS`.

    A Clarifai code found in neither table maps by its ``http_status`` when the
    answer gave one, else to a plain (not retryable) :class:`ProviderError`.
    """
    cls = ERRORS.get(code)
    if cls is None and isinstance(code, int):
        cls = next((c for first, last, c in ERROR_RANGES if first <= code <= last), None)
    if cls is None:
        if http_status:
            return error_for_status(
                http_status, message, provider=provider, code=str(code), retry_after=retry_after
            )
        cls = ProviderError
    error = cls(
        message, provider=provider, status=http_status, code=str(code), retry_after=retry_after
    )
    if code == "DEADLINE_EXCEEDED":  # sent and abandoned: it may have been billed
        error.possibly_billed = True
    return error


def _status_error(
    status: Mapping[str, Any], *, provider: str, retry_after: float | None = None, where: str = ""
) -> ProviderError:
    code = int(status.get("code", 0))
    text = " - ".join(str(status[k])[:200] for k in ("description", "details") if status.get(k))
    return error_for_code(
        code,
        f"{where}status {code}: {text or 'no description'}",
        provider=provider,
        http_status=status.get("http_status_code") or None,
        retry_after=retry_after,
    )


def split_outputs(
    body: Mapping[str, Any],
    count: int,
    *,
    provider: str = "clarifai",
    retry_after: float | None = None,
) -> list[Mapping[str, Any] | ProviderError]:
    """A whole REST-shaped ``PostModelOutputs`` answer -> one trimmed output (or error) per image.

    Raises the mapped error when the request as a whole failed.
    """
    status = body.get("status") or {}
    outputs = body.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
        raise ServerError("malformed answer: outputs is not a list of objects", provider=provider)
    code = int(status.get("code", 0))
    per_image = code in (SUCCESS, MIXED_STATUS) or (code == FAILURE and len(outputs) == count)
    if not per_image:
        raise _status_error(status, provider=provider, retry_after=retry_after)
    results: list[Mapping[str, Any] | ProviderError] = []
    for index, output in enumerate(outputs):
        output_status = output.get("status") or {}
        if int(output_status.get("code", SUCCESS)) != SUCCESS:
            results.append(
                _status_error(output_status, provider=provider, where=f"input {index}: ")
            )
        else:
            results.append({k: output[k] for k in _KEEP if k in output})
    return results


def _sdk() -> SimpleNamespace:
    """The gRPC and Clarifai modules, or MissingDependencyError naming the extra."""
    return SimpleNamespace(
        grpc=import_optional("grpc", "clarifai", package="grpcio"),
        service_pb2=import_optional(
            "clarifai_grpc.grpc.api.service_pb2", "clarifai", package="clarifai-grpc"
        ),
        resources_pb2=import_optional(
            "clarifai_grpc.grpc.api.resources_pb2", "clarifai", package="clarifai-grpc"
        ),
        json_format=import_optional("google.protobuf.json_format", "clarifai", package="protobuf"),
    )


class ClarifaiAdapter(RemoteAdapter):
    """A Clarifai model (by default ``clarifai/main/general-image-recognition``) as ``f``.

    Labels are the concepts' ``name`` (``id`` when a concept has no name; neither makes
    the answer malformed), scored by ``value`` in [0, 1]. Concepts are re-ranked here by
    value, highest first, not taken in the answer's order; equal values go to the name
    that sorts first alphabetically. Answers over ``max_response_bytes`` (32 MiB by
    default: up to 128 images an answer) are refused by gRPC before they are received
    (``ResponseTooLargeError``).

    Args:
        pat: a Clarifai personal access token; default: the ``CLARIFAI_PAT`` variable.
            Sent as ``authorization: Key <pat>`` metadata; never logged, shown or recorded.
        user_id, app_id, model_id: which model answers (a public one by default).
        model_version_id: pin a model version; default: the model's latest.
        target: ``host:port`` of the gRPC API; default ``api.clarifai.com:443``.
        insecure: plaintext gRPC to ``target``, for a local test server only.
        **options: :class:`~smoothapi.adapters.remote.RemoteAdapter` options (``timeout``,
            ``image_format``, ``recording`` ...).

    About :data:`REQUESTS_PER_SECOND` (15) requests a second are allowed by default;
    beyond that Clarifai answers ``CONN_THROTTLED`` (:class:`~smoothapi.errors.RateLimitError`).
    """

    name = "clarifai"
    max_batch = 128
    requests_per_second = float(REQUESTS_PER_SECOND)
    max_in_flight = 16
    limits = ImageLimits(max_bytes=20_000_000, max_pixels=85_000_000)
    max_response_bytes = 32 * 1024 * 1024

    def __init__(
        self,
        *,
        pat: str | None = None,
        user_id: str = "clarifai",
        app_id: str = "main",
        model_id: str = "general-image-recognition",
        model_version_id: str | None = None,
        target: str | None = None,
        insecure: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._sdk = _sdk()
        pat = pat or os.environ.get(PAT_ENV)
        if not pat:
            raise AuthenticationError(
                f"no personal access token: pass pat= or set {PAT_ENV}", provider=self.name
            )
        self.secrets(pat)
        self._metadata = (("authorization", f"Key {pat}"),)
        self.user_id, self.app_id, self.model_id = user_id, app_id, model_id
        self.model_version_id = model_version_id
        self.target = target or DEFAULT_TARGET
        self.insecure = insecure

    def __repr__(self) -> str:
        version = f", model_version_id={self.model_version_id!r}" if self.model_version_id else ""
        return (
            f"ClarifaiAdapter(user_id={self.user_id!r}, app_id={self.app_id!r}, "
            f"model_id={self.model_id!r}{version}, target={self.target!r})"
        )

    def request_params(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "app_id": self.app_id,
            "model_id": self.model_id,
            "model_version_id": self.model_version_id,
        }

    @staticmethod
    def parse(raw: Mapping[str, Any]) -> Ranked:
        """One output (``{"data": {"concepts": [...]}}``) -> ranked ``[(name, value), ...]``.

        No ``data`` or ``concepts`` is an image without labels (proto3 JSON leaves them
        out when empty, and a zero value); concepts that are not a list of objects with a
        non-empty string name (or id) and a finite value raise ``TypeError`` /
        ``ValueError``: a malformed answer.
        """
        concepts = raw.get("data", {}).get("concepts", [])
        if not isinstance(concepts, list):
            raise TypeError(f"concepts is a {type(concepts).__name__}, not a list")
        pairs = []
        for concept in concepts:
            name = concept.get("name") or concept.get("id")
            if not isinstance(name, str):
                raise TypeError(f"malformed concept {concept!r:.100}")
            name, value = checked(name, concept.get("value", 0.0))
            pairs.append((name, min(1.0, max(0.0, value))))
        return rank(pairs)

    def _channel(self) -> Any:
        """A fresh asyncio gRPC channel to ``target``, with gRPC retries off."""
        grpc = self._sdk.grpc
        options = [
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", self.max_response_bytes),
            ("grpc.max_send_message_length", _MAX_SEND),
        ]
        if self.insecure:
            return grpc.aio.insecure_channel(self.target, options=options)
        return grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(), options=options)

    def _post_model_outputs(self) -> Any:
        """``V2/PostModelOutputs`` on this event loop's channel.

        Bound straight on the channel rather than through ``V2Stub``: the stub reads a
        module global that only ``ClarifaiChannel``'s factories set, and those factories
        install a gRPC retry policy.
        """
        pb = self._sdk.service_pb2
        channel = self.loop_local("channel", self._channel)
        return channel.unary_unary(
            "/clarifai.api.V2/PostModelOutputs",
            request_serializer=pb.PostModelOutputsRequest.SerializeToString,
            response_deserializer=pb.MultiOutputResponse.FromString,
        )

    async def _send(self, images: Sequence[bytes]) -> list[Mapping[str, Any] | ProviderError]:
        sdk = self._sdk
        resources = sdk.resources_pb2
        request = sdk.service_pb2.PostModelOutputsRequest(
            user_app_id=resources.UserAppIDSet(user_id=self.user_id, app_id=self.app_id),
            model_id=self.model_id,
            version_id=self.model_version_id or "",
            inputs=[
                resources.Input(data=resources.Data(image=resources.Image(base64=image)))
                for image in images
            ],
        )
        post = self._post_model_outputs()
        call = post(request, metadata=self._metadata, timeout=self.timeout)
        response = await call
        trailing = await call.trailing_metadata()
        if response is None:  # gRPC could not decode the answer's bytes
            raise ServerError("malformed answer: the response did not decode", provider=self.name)
        body = sdk.json_format.MessageToDict(
            response, preserving_proto_field_name=True, use_integers_for_enums=True
        )
        return split_outputs(
            body, len(images), provider=self.name, retry_after=_retry_after(trailing)
        )

    def map_exception(self, exc: Exception) -> ProviderError:
        """A gRPC status by its name through :data:`ERRORS` (``retry-after`` metadata
        kept); anything else (a protobuf that does not parse) as the base class does."""
        if isinstance(exc, self._sdk.grpc.aio.AioRpcError):
            details = (exc.details() or "").lower()
            if exc.code().name == "RESOURCE_EXHAUSTED" and TOO_LARGE in details:
                return self.too_large()  # over max_response_bytes, not a quota
            return error_for_code(
                exc.code().name,
                f"gRPC {exc.code().name}: {(exc.details() or '')[:200]}",
                provider=self.name,
                retry_after=_retry_after(exc.trailing_metadata()),
            )
        return super().map_exception(exc)


def _retry_after(metadata: Any) -> float | None:
    """A ``retry-after`` entry of gRPC metadata, if the server sent one (undocumented)."""
    for key, value in metadata or ():
        if key.lower() == "retry-after":
            return parse_retry_after(value if isinstance(value, str) else value.decode())
    return None
