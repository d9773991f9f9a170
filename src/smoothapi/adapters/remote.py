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
the error tree, with the original chained as ``__cause__`` once configured secrets are
scrubbed from it. An answer without the provider's documented shape (``parse`` fails on
it) is a retryable :class:`~smoothapi.errors.ServerError`: never a sample, never recorded.

Blocking SDKs (boto3, msrest) run in a thread pool of the adapter's own, sized to its
``max_in_flight``, so the client's concurrency reaches the provider.

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
import functools
import importlib
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar, cast

import torch

from .._redaction import install_log_redaction, register_secret, safe_cause
from ..certification import Label
from ..dispatch import run_sync
from ..errors import (
    APITimeoutError,
    InvalidInputError,
    MissingDependencyError,
    ProviderError,
    ServerError,
)
from ..recording import Recording, request_key
from .base import Adapter
from .encoding import ImageLimits, encode_image

__all__ = ["RemoteAdapter", "import_optional", "rank", "run_sync"]

T = TypeVar("T")
Ranked = list[tuple[str, float]]
#: What a malformed answer makes ``parse`` raise (a missing field, a wrong type ...).
MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def rank(labels: Sequence[tuple[str, float]]) -> Ranked:
    """Sort ``(label, score)`` pairs by score, highest first; ties alphabetically."""
    return sorted(((str(n), float(s)) for n, s in labels), key=lambda item: (-item[1], item[0]))


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
        timeout: seconds before one request counts as failed (``APITimeoutError``).
        max_in_flight: requests this adapter serves at once (default: the class's);
            the thread pool of a blocking SDK and its connection pool are sized to it.
    """

    name = "remote"
    max_batch = 1
    limits = ImageLimits()

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
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
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
        """Run a blocking SDK call in this adapter's pool of ``max_in_flight`` threads."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.max_in_flight, thread_name_prefix=f"smoothapi-{self.name}"
                )
                weakref.finalize(self, self._executor.shutdown, wait=False)
        call = functools.partial(contextvars.copy_context().run, function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

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
        try:
            responses = await self._with_timeout(self._send(images))
        except ProviderError as error:
            error.__cause__ = safe_cause(error.__cause__)
            raise
        except Exception as exc:  # an SDK or transport exception: typed, cause scrubbed
            mapped = self.map_exception(exc)
            raise mapped from safe_cause(exc)
        if len(responses) != len(images):
            raise ServerError(
                f"sent {len(images)} images, got {len(responses)} responses", provider=self.name
            )
        for response in responses:
            if not isinstance(response, ProviderError):
                self._check_shape(response)
        if self.recording is not None:
            assert key is not None  # computed above whenever there is a recording
            self.recording.store(key, self.name, responses)
        return responses

    def _check_shape(self, response: Any) -> None:
        """Raise a retryable ServerError unless ``parse`` accepts the answer."""
        try:
            if not isinstance(response, Mapping):
                raise TypeError(f"a {type(response).__name__}, not an object")
            self.parse(response)
        except MALFORMED as exc:
            raise ServerError(
                f"malformed answer ({type(exc).__name__}: {str(exc)[:200]})", provider=self.name
            ) from None

    async def _with_timeout(self, request: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(request, self.timeout)
        except asyncio.TimeoutError:
            # Sent and abandoned: the provider may still answer it, and bill it.
            raise APITimeoutError(
                f"no answer within {self.timeout:g} s", provider=self.name
            ) from None

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

    async def ascored_or_errors(
        self, images: torch.Tensor
    ) -> list[tuple[Label | None, float | None] | ProviderError]:
        """Top label and its score per image, a per-image failure's error in its place."""
        return [
            r if isinstance(r, ProviderError) else (self._top(r), r[0][1] if r else None)
            for r in await self._ranked_or_errors(images)
        ]

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
