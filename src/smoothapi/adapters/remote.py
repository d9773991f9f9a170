"""The shared half of every vision-API adapter: encode, batch, send, parse, rank.

A provider module subclasses :class:`RemoteAdapter` and supplies three things:

* ``parse(raw)``, a pure static function from one image's response body (a JSON-like
  dict) to its ranked ``[(label, score), ...]``, so parsing is tested on real payloads;
* ``async _send(images)``, the thin transport: one request carrying up to
  ``max_batch`` encoded images, returning one response body per image, or a
  :class:`~smoothapi.errors.ProviderError` in that image's place when the provider
  failed just that image inside a successful batch. Whole-request failures raise
  the mapped error. The vendor SDK is imported here, never at module import;
* the class attributes ``name``, ``max_batch`` and ``limits``.

Anything else ``_send`` raises (an SDK's parser, transport or timeout exception) goes
through the adapter's one mapping function, :meth:`RemoteAdapter.map_exception`, into
the error tree. No error keeps the SDK's exception (its attributes may hold an echoed key
or a signed request): it is raised with nothing chained, and ``cause_type`` /
``cause_message`` hold the SDK exception's type and redacted message. An answer without
the provider's documented shape (``parse`` fails on it: a missing field, a label that is
not a non-empty string, a score that is not a finite number, see :func:`checked`) is a
retryable :class:`~smoothapi.errors.ServerError`: never a sample, never recorded.

Answers are bounded: at most ``max_response_bytes`` (8 MiB unless the provider says
otherwise; an option) are read, in chunks, and a larger answer is a retryable
:class:`~smoothapi.errors.ResponseTooLargeError`. A request has ``timeout`` seconds in
all: then it is an :class:`~smoothapi.errors.APITimeoutError`, ``possibly_billed`` only
if it left (started in its thread, for a blocking SDK).

Blocking SDKs (boto3, msrest) run in a thread pool of the adapter's own. It starts with
``max_in_flight`` threads and grows so that no call waits for a thread: the smoothing
client's own limit (``RateLimits(max_in_flight=...)``) is what bounds them. When the
deadline passes while an answer is still arriving (a server dripping it in), its socket
is shut, so the thread is free again (the status line and headers are bounded by the
SDK's own read timeout only).

Clients bound to an event loop (HTTP sessions, async gRPC channels) are made with
:meth:`RemoteAdapter.loop_local`; the sync methods close them when their call ends,
and async users close them with ``await adapter.aclose()``.

Labels are ranked by score, highest first; ties go to the label that sorts first
alphabetically unless the provider's ``parse`` documents a better rule. An image with
no labels has top label ``None``. A ``label_map`` (e.g. synonyms onto your own class
names) is applied to the top label: a fixed function of the provider's answer, so
the smoothed classifier built on it is certified just the same.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextvars
import importlib
import inspect
import math
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar, cast

import torch

from .._redaction import describe_cause, install_log_redaction, register_secret
from ..certification import Label
from ..dispatch import run_sync
from ..errors import (
    APITimeoutError,
    InvalidInputError,
    MissingDependencyError,
    ProviderError,
    ResponseTooLargeError,
    ServerError,
)
from ..recording import Recording, request_key
from .base import Adapter, Answer
from .encoding import ImageLimits, encode_image

__all__ = ["RemoteAdapter", "checked", "current_request", "import_optional", "rank", "run_sync"]

T = TypeVar("T")
Ranked = list[tuple[str, float]]
#: What a malformed answer makes ``parse`` raise (a missing field, a wrong type ...).
MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def rank(labels: Sequence[tuple[str, float]]) -> Ranked:
    """Sort ``(label, score)`` pairs by score, highest first; ties alphabetically."""
    return sorted(((str(n), float(s)) for n, s in labels), key=lambda item: (-item[1], item[0]))


def checked(label: Any, score: Any) -> tuple[str, float]:
    """One ``(label, score)`` entry of an answer, or ``TypeError`` / ``ValueError`` (a
    malformed answer): the label must be a non-empty string (or an integer class id), the
    score a finite number. A null or empty label would be certified as a class of its own,
    a NaN score would rank by the answer's order."""
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise TypeError(f"malformed label {label!r:.100}")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise TypeError(f"malformed score {score!r:.100} of {label!r:.100}")
    if not math.isfinite(score):
        raise ValueError(f"score {score!r} of {label!r:.100} is not finite")
    return str(label), float(score)


class _Request:
    """One request, as its deadline sees it: whether it ``left`` (a call still waiting for a
    thread has not), whether the deadline ``expired``, and how to cut its answer short."""

    def __init__(self) -> None:
        self.left, self.expired = True, False
        self._abort: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def on_expiry(self, abort: Callable[[], None] | None) -> None:
        """Call ``abort`` when the deadline passes (now, if it has); ``None``: no longer."""
        with self._lock:
            self._abort = abort
            if abort is not None and self.expired:
                abort()

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._abort is not None:
                self._abort()


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "smoothapi_request", default=None
)


def current_request() -> _Request | None:
    """The request being sent (in its task, and in the thread a blocking SDK runs it in)."""
    return _REQUEST.get()


def detached(error: ProviderError) -> ProviderError:
    """``error`` without the exception it was raised from (``raise ... from exc``):
    ``cause_type`` and a redacted ``cause_message`` instead, and nothing chained (raise it
    outside an ``except``)."""
    if error.__cause__ is not None and error.cause_type is None:
        error.cause_type, error.cause_message = describe_cause(error.__cause__)
    error.__cause__ = error.__context__ = None
    error.__suppress_context__ = True
    return error


def import_optional(module: str, extra: str, package: str | None = None) -> Any:
    """Import a vendor SDK, or raise MissingDependencyError naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package or module.split(".")[0], extra) from None


class RemoteAdapter(Adapter):
    """Base class of the adapters that send images to a vision API.

    Args:
        image_format: ``"png"`` (lossless, default) or ``"jpeg"``.
        jpeg_quality: 1-100, for ``image_format="jpeg"``.
        small_images: ``"upscale"`` images below the provider's minimum side, or ``"reject"``.
        label_map: provider label -> your label, applied to the top label.
        recording: a :class:`~smoothapi.recording.Recording` to record or replay responses.
        timeout: seconds one request may take in all before it counts as failed
            (``APITimeoutError``).
        max_in_flight: the smoothing client's default for requests in flight (default: the
            class's); a blocking SDK's thread pool and connection pool start at this size
            and grow with the requests in flight, so a client's higher limit is reached.
        max_response_bytes: the largest answer read (default: the class's; larger ones
            raise ``ResponseTooLargeError``).
    """

    name = "remote"
    max_batch = 1
    limits = ImageLimits()
    #: The largest answer read, in bytes (JSON or protobuf, after decompression).
    max_response_bytes = 8 * 1024 * 1024

    def __init__(
        self,
        *,
        image_format: str = "png",
        jpeg_quality: int = 95,
        small_images: str = "upscale",
        label_map: Mapping[str, Label] | None = None,
        recording: Recording | None = None,
        timeout: float = 30.0,
        max_in_flight: int | None = None,
        max_response_bytes: int | None = None,
    ) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise InvalidInputError(f"jpeg_quality must lie in 1..100, got {jpeg_quality}")
        if timeout <= 0:
            raise InvalidInputError(f"timeout must be positive, got {timeout}")
        if max_in_flight is not None:
            if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
                raise InvalidInputError(f"max_in_flight must be an int, got {max_in_flight!r}")
            if max_in_flight < 1:
                raise InvalidInputError(f"max_in_flight must be >= 1, got {max_in_flight}")
            self.max_in_flight = max_in_flight
        if max_response_bytes is not None:
            if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) \
                    or max_response_bytes < 1:
                raise InvalidInputError(
                    f"max_response_bytes must be a positive int, got {max_response_bytes!r}"
                )
            self.max_response_bytes = max_response_bytes
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        #: Threads of the blocking-SDK pool now (it grows with the calls in flight).
        self.threads = max(1, self.max_in_flight)
        self._calls = 0
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.small_images = small_images
        self.label_map = dict(label_map or {})
        self.recording = recording
        self.timeout = float(timeout)
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        encode_image(torch.zeros(1, 1, 1), ImageLimits(), fmt=image_format, small=small_images)

    # --- what a provider supplies ------------------------------------------------------

    @staticmethod
    @abc.abstractmethod
    def parse(raw: Mapping[str, Any]) -> Ranked:
        """One image's response body -> ranked ``[(label, score), ...]``."""

    @abc.abstractmethod
    async def _send(self, images: Sequence[bytes]) -> list[Mapping[str, Any] | ProviderError]:
        """One request with ``len(images) <= max_batch`` images; one body (or error) each."""

    def map_exception(self, exc: Exception) -> ProviderError:
        """The error-tree error for anything the SDK or transport raised in :meth:`_send`.

        Providers override it for their SDK's exceptions and fall back to this: a
        malformed answer the SDK choked on (``MALFORMED``) is a retryable
        :class:`~smoothapi.errors.ServerError`, anything else a plain ``ProviderError``.
        """
        if isinstance(exc, MALFORMED):
            return ServerError(
                f"malformed answer ({type(exc).__name__}: {str(exc)[:200]})", provider=self.name
            )
        return ProviderError(f"{type(exc).__name__}: {str(exc)[:200]}", provider=self.name)

    def too_large(self) -> ResponseTooLargeError:
        """The error for an answer over :attr:`max_response_bytes`."""
        return ResponseTooLargeError(
            f"answer larger than max_response_bytes ({self.max_response_bytes} bytes)",
            provider=self.name,
        )

    def request_params(self) -> dict[str, Any]:
        """What, besides the images, decides the response (model, features ...); keys recordings."""
        return {}

    def identity(self) -> dict:
        return {
            **super().identity(),
            "params": self.request_params(),
            "format": self.image_format,
            "quality": self.jpeg_quality,
            "small": self.small_images,
            "label_map": self.label_map,
        }

    # --- shared machinery --------------------------------------------------------------

    def encode(self, image: torch.Tensor) -> bytes:
        """One ``(C, H, W)`` image as the bytes this provider will receive."""
        return encode_image(
            image,
            self.limits,
            fmt=self.image_format,
            quality=self.jpeg_quality,
            small=self.small_images,
        )

    @staticmethod
    def secrets(*values: str | None) -> None:
        """Register credentials: redacted from every error, repr and SDK log record."""
        register_secret(*values)
        install_log_redaction()

    async def in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking SDK call in this adapter's thread pool. No call waits for a
        thread: when all are busy the pool is replaced by one twice the size (the old one
        finishes its calls), so the smoothing client's limit is what bounds them."""
        request = current_request()
        if request is not None:
            request.left = False  # until a thread takes it

        def run() -> T:
            if request is not None:
                request.left = True
            return function(*args)

        with self._executor_lock:
            self._calls += 1
            if self._executor is None or self._calls > self.threads:
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                    self.threads *= 2
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.threads, thread_name_prefix=f"smoothapi-{self.name}"
                )
                weakref.finalize(self, self._executor.shutdown, wait=False)
            future = self._executor.submit(contextvars.copy_context().run, run)
        future.add_done_callback(self._call_done)
        return await asyncio.wrap_future(future)

    def _call_done(self, _: concurrent.futures.Future) -> None:
        with self._executor_lock:
            self._calls -= 1

    def loop_local(self, key: str, factory: Callable[[], T]) -> T:
        """An object (HTTP session, async channel) made once per running event loop."""
        loop = asyncio.get_running_loop()
        objects = self._per_loop.setdefault(loop, {})
        if key not in objects:
            objects[key] = factory()
        return objects[key]

    async def aclose(self) -> None:
        """Close what :meth:`loop_local` made for the running event loop (sessions, channels)."""
        objects = self._per_loop.pop(asyncio.get_running_loop(), {})
        for obj in objects.values():
            closer = getattr(obj, "aclose", None) or getattr(obj, "close", None)
            if closer is not None:
                result = closer()
                if inspect.isawaitable(result):
                    await result

    def _run_scoped(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run from sync code on a loop of its own, closing that loop's clients afterwards."""

        async def scoped() -> T:
            try:
                return await coroutine
            finally:
                await self.aclose()

        return run_sync(scoped())

    async def send_encoded(
        self, images: Sequence[bytes]
    ) -> list[Mapping[str, Any] | ProviderError]:
        """One request, through the recording when there is one."""
        if len(images) > self.max_batch:
            raise InvalidInputError(f"{self.name} takes at most {self.max_batch} images a request")
        key = None
        if self.recording is not None:
            key = request_key(self.name, self.request_params(), images)
            recorded = self.recording.lookup(key, self.name)
            if recorded is not None:
                return recorded
        failure: ProviderError | None = None
        try:
            responses = await self._with_timeout(self._send(images))
        except ProviderError as error:
            failure = error
        except Exception as exc:  # an SDK or transport exception, typed
            failure = self.map_exception(exc)
            failure.__cause__ = exc
        if failure is not None:
            raise detached(failure)  # outside the except clauses: nothing is chained
        if len(responses) != len(images):
            raise ServerError(
                f"sent {len(images)} images, got {len(responses)} responses", provider=self.name
            )
        responses = [detached(r) if isinstance(r, ProviderError) else r for r in responses]
        for response in responses:
            malformed = None if isinstance(response, ProviderError) else _malformed(self, response)
            if malformed is not None:
                raise malformed
        if self.recording is not None:
            assert key is not None  # computed above whenever there is a recording
            self.recording.store(key, self.name, responses)
        return responses

    async def _with_timeout(self, request: Awaitable[T]) -> T:
        """``request``, given :attr:`timeout` seconds in all (:func:`_within`)."""
        return await _within(request, self.timeout, self.name)

    async def _ranked_or_errors(self, images: torch.Tensor) -> list[Ranked | ProviderError]:
        """Ranked labels of each image, ``max_batch`` per request; per-image errors in place."""
        encoded = [self.encode(image) for image in images]
        results: list[Ranked | ProviderError] = []
        for start in range(0, len(encoded), self.max_batch):
            for index, response in enumerate(
                await self.send_encoded(encoded[start : start + self.max_batch]), start
            ):
                if isinstance(response, ProviderError):
                    response.image_index = index
                    results.append(response)
                else:
                    results.append(self.parse(response))
        return results

    async def aranked_labels_batch(self, images: torch.Tensor) -> list[Ranked]:
        """Ranked labels of each image of a ``(B, C, H, W)`` batch, ``max_batch`` per request.

        A per-image error inside a batch response is raised, never dropped.
        """
        results = await self._ranked_or_errors(images)
        for result in results:
            if isinstance(result, ProviderError):
                raise result
        return cast(list[Ranked], results)  # every ProviderError was raised above

    ranks = True

    async def aanswers_or_errors(self, images: torch.Tensor) -> list[Answer | ProviderError]:
        """Each image's :class:`~smoothapi.adapters.base.Answer` (top label after
        ``label_map``, its score, the ranked labels as parsed), a per-image failure's error
        in its place."""
        return [
            r if isinstance(r, ProviderError)
            else Answer(self._top(r), r[0][1] if r else None, tuple(r))
            for r in await self._ranked_or_errors(images)
        ]  # fmt: skip

    def _top(self, ranked: Ranked) -> Label | None:
        if not ranked:
            return None
        top = ranked[0][0]
        return self.label_map.get(top, top)

    async def atop_labels(self, images: torch.Tensor) -> list[Label | None]:
        return [self._top(r) for r in await self.aranked_labels_batch(images)]

    def top_labels(self, images: torch.Tensor) -> list[Label | None]:
        return self._run_scoped(self.atop_labels(images))

    def ranked_labels(self, image: torch.Tensor) -> Ranked:
        return self._run_scoped(self.aranked_labels_batch(image.unsqueeze(0)))[0]


def _malformed(adapter: RemoteAdapter, response: Any) -> ProviderError | None:
    """A retryable ServerError unless ``adapter.parse`` accepts the answer (``None`` if it
    does)."""
    try:
        if not isinstance(response, Mapping):
            raise TypeError(f"a {type(response).__name__}, not an object")
        adapter.parse(response)
    except MALFORMED as exc:
        return ServerError(
            f"malformed answer ({type(exc).__name__}: {str(exc)[:200]})", provider=adapter.name
        )
    except ProviderError as error:  # a parse that raises the tree's error itself
        return detached(error)
    return None


async def _within(request: Awaitable[T], timeout: float, provider: str) -> T:
    """The answer to ``request``, or :class:`~smoothapi.errors.APITimeoutError` once it took
    ``timeout`` seconds (``possibly_billed`` if it left): its :class:`_Request` expires."""
    state = _Request()
    token = _REQUEST.set(state)  # seen by the task wait_for makes, and its thread
    try:
        return await asyncio.wait_for(request, timeout)
    except asyncio.TimeoutError:
        state.expire()  # a blocking SDK's answer is cut short: its thread is free
        # Sent and abandoned: the provider may still answer it, and bill it; a call
        # still waiting for a thread was never sent.
        failure = APITimeoutError(
            f"no answer within {timeout:g} s", provider=provider, possibly_billed=state.left
        )
    finally:
        _REQUEST.reset(token)
    raise failure
