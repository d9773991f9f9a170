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
        ├── BadRequestError        400, 404, 413, 415, 422: the request itself is wrong
        │   └── InvalidImageError  the image was rejected (format, size, dimensions)
        ├── ServerError            5xx (retryable)
        └── APIConnectionError     no answer: refused, reset, DNS (retryable)
            └── APITimeoutError    no answer in time (retryable)

:class:`Interrupted` is not in the tree on purpose: it is a ``KeyboardInterrupt`` (Ctrl-C
stopped a run), so ``except Exception`` never swallows it.

``ProviderError.retryable`` says whether sending the same request again may succeed,
``retry_after`` how long the server asked to wait first (any status that sends it), and
``possibly_billed`` whether the request reached the provider and was abandoned unanswered
(a timeout), so the provider may have billed it. HTTP statuses map to classes through one
table, :data:`STATUS_ERRORS`. Errors never carry credentials: messages name the setting,
not its value, and every configured secret is redacted from them.
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
    "ReplayMissError",
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
    answer: the provider may have counted (and billed) it.
    """

    retryable = False
    possibly_billed = False
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


class BadRequestError(ProviderError):
    """The request is wrong and will fail again as it is (HTTP 400, 404, 413, 415, 422)."""


class InvalidImageError(BadRequestError):
    """The provider rejected the image (format, bytes or pixel dimensions)."""


class ServerError(ProviderError):
    """The provider failed (HTTP 5xx); retryable."""

    retryable = True


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
