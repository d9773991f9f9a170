"""The exceptions smoothapi raises.

Every error the package raises on purpose derives from :class:`SmoothAPIError`,
so ``except smoothapi.SmoothAPIError`` catches all of them::

    SmoothAPIError
    ├── InvalidInputError          (also a ValueError): bad image, sigma, alpha, n0, n ...
    │   └── ImageMismatchError     a journal holds other pixels under this image_id
    ├── CheckpointError            a weights file that is missing, malformed or of the wrong kind
    ├── MissingDependencyError     (also an ImportError): an optional extra is not installed
    ├── ReplayMissError            a replayed recording has no response for this request
    ├── BudgetExceededError        a run stopped at its query or cost cap
    ├── UsageError                 (also a RuntimeError): used after close(), or from two
    │                              event loops at once
    ├── JournalError               a journal file that cannot be used: a folder, unwritable,
    │   │                          not SQLite, damaged, or an unknown run
    │   └── JournalLockedError     another process is writing to it (``.holder`` says who)
    └── ProviderError              a vision API refused or failed a request
        ├── AuthenticationError    401: missing or wrong credentials
        ├── PermissionDeniedError  403: no access, or the quota is spent
        ├── RateLimitError         429: too many requests (retryable)
        │   └── RetryAfterTooLongError  the provider asked to wait longer than max_wait:
        │                          not retried; ``resume_at`` says when to try again
        ├── BadRequestError        400, 404, 413, 415, 422: the request itself is wrong
        │   └── InvalidImageError  the image was rejected (format, size, dimensions)
        ├── RedirectError          a 3xx not followed: to another origin (credentials never
        │                          go there), or one that would drop the request's body
        ├── ServerError            5xx, or a malformed answer (retryable)
        │   └── ResponseTooLargeError  an answer over the adapter's max_response_bytes
        │                              (retryable)
        └── APIConnectionError     no answer: refused, reset, DNS (retryable)
            └── APITimeoutError    no answer in time (retryable)

:class:`Interrupted` is not in the tree on purpose: it is a ``KeyboardInterrupt`` (Ctrl-C
stopped a run), so ``except Exception`` never swallows it.

``ProviderError.retryable`` says whether sending the same request again may succeed,
``retry_after`` how long the server asked to wait first (any status that sends it), and
``possibly_billed`` whether the request reached the provider and was abandoned unanswered
(a timeout), so the provider may have billed it. HTTP statuses map to classes through one
table, :data:`STATUS_ERRORS`. Errors never carry credentials: messages name the setting,
not its value, and every configured secret is redacted from them. Nor do they carry the
vendor SDK's exception (whose attributes may hold an echoed key or a signed request): an
adapter's error has no ``__cause__``, and keeps ``cause_type`` and a redacted
``cause_message`` of what the SDK raised instead.
"""

from __future__ import annotations

import datetime
import email.utils

from ._redaction import redact

__all__ = [
    "STATUS_ERRORS",
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "CheckpointError",
    "ImageMismatchError",
    "InvalidImageError",
    "InvalidInputError",
    "Interrupted",
    "JournalError",
    "JournalLockedError",
    "MissingDependencyError",
    "PermissionDeniedError",
    "ProviderError",
    "RateLimitError",
    "RetryAfterTooLongError",
    "RedirectError",
    "ReplayMissError",
    "ResponseTooLargeError",
    "ServerError",
    "SmoothAPIError",
    "UsageError",
    "error_for_status",
    "parse_retry_after",
]

DISTRIBUTION = "smoothapi-certified"


class SmoothAPIError(Exception):
    """Base class of every error smoothapi raises on purpose."""


class InvalidInputError(SmoothAPIError, ValueError):
    """An argument or image that cannot be used (wrong type, shape, range or value)."""


class ImageMismatchError(InvalidInputError):
    """An ``image_id`` that a journal run already holds answers for, made from other pixels:
    its answers are not this image's, so none are used."""


class CheckpointError(SmoothAPIError):
    """A checkpoint that is missing, unreadable, or lacks the metadata to rebuild its model."""


class MissingDependencyError(SmoothAPIError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed; install it with: pip install '{DISTRIBUTION}[{extra}]'"
        )


class ReplayMissError(SmoothAPIError, LookupError):
    """Replaying a recording met a request that was never recorded."""


class BudgetExceededError(SmoothAPIError):
    """A run reached its query (or cost) cap; the results so far were kept."""


class UsageError(SmoothAPIError, RuntimeError):
    """An object used in a way it cannot serve: after ``close()``, or from a second event
    loop while another is sending through it."""


class JournalError(SmoothAPIError):
    """A journal that cannot be used: the path is a folder or unwritable, the file is not
    SQLite or is damaged, or a run asked for is not in it."""


class JournalLockedError(JournalError):
    """Another process is writing to this journal; a journal has one writer at a time.
    ``holder`` is what its lock file says: ``pid``, ``host``, ``since``."""

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: no request was sent after it, the requests in flight were
    awaited and their answers kept (journaled, with a journal). ``stats`` is the
    classifier's :class:`~smoothapi.ClientStats`: what was spent in all."""

    def __init__(self, message: str, stats: object = None) -> None:
        super().__init__(message)
        self.stats = stats


class ProviderError(SmoothAPIError):
    """A vision API refused or failed a request.

    ``provider`` names the adapter, ``status`` is the HTTP (or mapped) status when
    there is one, ``code`` the provider's own error code, ``retryable`` says whether
    the same request may succeed if sent again, ``retry_after`` is the wait in seconds
    the server asked for (``Retry-After``, gRPC ``RetryInfo``), if it sent one, and
    ``possibly_billed`` is true when the request was sent and then abandoned without an
    answer: the provider may have counted (and billed) it. ``cause_type`` (e.g.
    ``"botocore.exceptions.ClientError"``) and ``cause_message`` (secrets redacted) say what
    the vendor SDK raised, if anything; the SDK's exception itself is not kept.
    """

    retryable = False
    possibly_billed = False
    cause_type: str | None = None
    cause_message: str | None = None
    #: On a per-image error of a batch response only: that image's index in the batch
    #: (set by the remote adapters; absent on other errors).
    image_index: int

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        prefix = f"{provider}: " if provider else ""
        super().__init__(redact(prefix + message))
        self.provider, self.status, self.code = provider, status, code
        self.retry_after = retry_after


class AuthenticationError(ProviderError):
    """Missing or wrong credentials (HTTP 401)."""


class PermissionDeniedError(ProviderError):
    """The credentials may not do this, or the quota is spent (HTTP 403)."""


class RateLimitError(ProviderError):
    """Too many requests (HTTP 429); ``retry_after`` is the server's wait in seconds, if sent."""

    retryable = True


class RetryAfterTooLongError(RateLimitError):
    """The provider asked to wait (``Retry-After``) longer than the client's
    ``RetryPolicy.max_wait``: the request is stopped, not retried. ``resume_at`` is when
    the wait ends (an aware UTC datetime), or ``None`` when it never does (``inf``) or
    lies past the year 9999. Raise ``max_wait`` to wait instead."""

    retryable = False
    resume_at: datetime.datetime | None = None


class BadRequestError(ProviderError):
    """The request is wrong and will fail again as it is (HTTP 400, 404, 413, 415, 422)."""


class InvalidImageError(BadRequestError):
    """The provider rejected the image (format, bytes or pixel dimensions)."""


class RedirectError(ProviderError):
    """A redirect that was not followed (not retryable: it would redirect again). One to
    another origin (scheme, host, port) would hand that origin the credentials, so none is
    followed; the message names its host. One that would resend the request without its
    body (301, 302 or 303 turn a POST into a GET) is refused too: its answer would not be
    this image's. Same-origin 307 and 308, which keep the method and body, are followed
    where the adapter says so."""


class ServerError(ProviderError):
    """The provider failed (HTTP 5xx), or answered without its documented shape; retryable."""

    retryable = True


class ResponseTooLargeError(ServerError):
    """An answer larger than the adapter's ``max_response_bytes``: it is not read past that
    (the server's fault, like a malformed answer, so retryable)."""


class APIConnectionError(ProviderError):
    """No answer: the connection was refused, reset or dropped; retryable."""

    retryable = True


class APITimeoutError(APIConnectionError):
    """No answer in time; retryable. The request was sent (``possibly_billed``) unless
    the connection itself could not be made in time."""

    possibly_billed = True

    def __init__(self, message: str, *, possibly_billed: bool = True, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.possibly_billed = possibly_billed


#: HTTP status -> error class. Statuses not listed map by range (4xx bad request, 5xx server).
STATUS_ERRORS: dict[int, type[ProviderError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: BadRequestError,
    408: APITimeoutError,
    413: InvalidImageError,
    415: InvalidImageError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str = "",
    code: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """The error for an HTTP ``status``, through :data:`STATUS_ERRORS`; ``retry_after``
    is kept whatever the status (a 503 may send ``Retry-After`` too)."""
    cls = STATUS_ERRORS.get(status) or (ServerError if status >= 500 else BadRequestError)
    return cls(message, provider=provider, status=status, code=code, retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
