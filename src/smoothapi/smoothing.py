"""SmoothedClassifier, the facade: one base classifier, one noise level, Cohen et al.'s algorithms.

It wires a :class:`~smoothapi.sampling.Sampler` (which noise) to a
:class:`~smoothapi.dispatch.Dispatcher` (how queries are sent) and a journal run
(where answers are kept), and runs PREDICT and CERTIFY with fixed ``n``, and the
sequential certification of one radius (:meth:`SmoothedClassifier.certify_radius`).
The async methods do the work; the sync ones run them on the classifier's own event
loop. Datasets are :mod:`smoothapi.runs`' job (which also gives the facade its
``certify_many`` / ``acertify_many`` methods: this module imports nothing above it).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch

from ._checkpoint import module_digest
from ._images import ImageLike
from ._queries import Attempts, Queries
from .adapters.base import Adapter
from .adapters.remote import RemoteAdapter
from .certification import (
    Certification,
    Label,
    Prediction,
    check_alpha,
    check_count,
    check_radius,
    check_seed,
    check_sigma,
)
from .decisions import Decision, Ranked, as_decision
from .dispatch import (
    ClientStats,
    Dispatcher,
    RateLimits,
    RetryPolicy,
    SyncBridge,
    interruptible,
)
from .errors import InvalidInputError, UsageError
from .journal import Journal, JournalRun
from .sampling import NOISE_SCHEME, Sampler
from .sequential import RadiusCertification, SequentialTest

if TYPE_CHECKING:  # smoothapi.runs imports this module at load, never the reverse
    from .runs import ImageOutcome

__all__ = ["ClientStats", "RateLimits", "RetryPolicy", "SmoothedClassifier"]

DEFAULT_BATCH_SIZE = 256
log = logging.getLogger("smoothapi")

_T = TypeVar("_T")
_Self = TypeVar("_Self", bound="_Closing")



class _Closing:
    """Closing a classifier: the adapter's connections and an owned journal; ``with`` and
    ``async with``. Any use after :meth:`close` raises :class:`~smoothapi.errors.UsageError`."""

    adapter: Adapter
    journal: Journal | None
    _bridge: SyncBridge
    _owns_journal: bool = False
    _closed: bool = False

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close the adapter's connections made by the sync methods, and an owned journal."""
        self._closed = True
        self._bridge.close()
        if self._owns_journal and self.journal is not None:
            self.journal.close()

    async def aclose(self) -> None:
        """:meth:`close`, and the adapter's connections made on the running event loop by
        the async methods (``close()`` from sync code cannot reach those)."""
        self._closed = True
        await self.adapter.aclose()
        await asyncio.to_thread(self.close)


_Method = Callable[..., Coroutine[Any, Any, _T]]


def _entry(method: _Method[_T]) -> _Method[_T]:
    """An async entry point: refused after ``close()``, and from a second event loop while
    another is sending through this classifier (:meth:`Dispatcher.one_loop`); Ctrl-C stops it
    cleanly (:func:`~smoothapi.dispatch.interruptible`)."""

    @functools.wraps(method)
    async def guarded(self: SmoothedClassifier, *args: Any, **kwargs: Any) -> _T:
        if self._closed:
            raise UsageError("this SmoothedClassifier is closed; make a new one")
        with self.dispatcher.one_loop(), interruptible(self.stats):
            return await method(self, *args, **kwargs)

    return guarded


class SmoothedClassifier(_Closing):
    """The smoothed classifier ``g(x) = argmax_c P[f(D(x + delta)) = c]``, delta ~ N(0, sigma^2 I).

    ``f`` is the base classifier behind ``adapter`` and ``D`` the optional ``denoiser``
    (a ``torch.nn.Module`` mapping ``(B, C, H, W)`` to the same shape). The noise is
    added to the image as given, scaled to [0, 1], so ``sigma`` and every certified
    radius are l2 distances in that space; anything the model needs afterwards
    (resizing, normalisation, encoding) belongs to ``f``.

    Args:
        adapter: the base classifier.
        sigma: the noise level, > 0.
        denoiser: run on ``device`` in inference mode before ``adapter``: a module, the name
            of a shipped denoiser or a ``.safetensors`` file (:func:`~smoothapi.load_denoiser`),
            ``None`` for none, or ``"auto"`` (the default): for a vision API (a
            :class:`~smoothapi.adapters.remote.RemoteAdapter`), the shipped natural-photo
            denoiser for ``sigma`` (:func:`~smoothapi.denoisers.default_denoiser`: the one
            trained for it, else the noise-level-aware ``photo-mse`` up to 0.5), applied to
            RGB images only, as ``smoothapi certify --api`` does; one line on the
            ``"smoothapi"`` logger names it. No denoiser for a local model (pass your own), nor
            when none ships for ``sigma``. ``denoiser=None`` opts out. The denoiser is part of
            the journal's run key: ``"auto"`` keys a run as passing that denoiser does.
        batch_size: noisy samples per batch sent through ``D`` and ``f``.
        device: where noise is drawn and the denoiser runs (default: CUDA if available).
        seed: makes runs reproducible; by default a fresh seed from OS entropy,
            kept in ``self.seed`` so a run can be repeated.
        journal: a :class:`~smoothapi.journal.Journal` (or a path for one) where every
            answer is committed before it counts; rerunning with the same seed resumes.
        retry: how failed requests are retried (:class:`RetryPolicy`).
        limits: request rate, image rate and requests in flight (:class:`RateLimits`).
        decision: the question certified (:mod:`smoothapi.decisions`): what each ranked
            answer counts as, e.g. ``Vocabulary(["cat", "dog"], other="other")``,
            ``Flag(["Weapon"], 0.8)``, ``Ancestor(["cat", "dog"])`` or any callable from
            ``[(label, score), ...]`` to a class or ``None``. ``None`` (default): the
            adapter's top label (after its ``label_map``). A decision is part of the
            journal's run key; the journal keeps every ranked answer, so
            :meth:`Journal.recertify(run, alpha, decision=...)
            <smoothapi.journal.Journal.recertify>` asks other questions without paying.

    Use it as a context manager (``with``, or ``async with`` after the async methods), or
    call :meth:`close` / :meth:`aclose`, to release the adapter's connections and the
    journal. One classifier may serve several threads: sync calls take turns, and the
    async methods may run concurrently on one event loop, not on two at once.
    """

    def __init__(
        self,
        adapter: Adapter,
        sigma: float,
        denoiser: torch.nn.Module | str | None = "auto",
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device | None = None,
        seed: int | None = None,
        journal: Journal | str | os.PathLike | None = None,
        retry: RetryPolicy = RetryPolicy(),
        limits: RateLimits = RateLimits(),
        decision: Decision | Callable[[Ranked], Label | None] | None = None,
    ) -> None:
        self.adapter = _checked_adapter(adapter)
        self.sigma = check_sigma(sigma)
        self.batch_size = check_count("batch_size", batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        denoiser, channels = _choose_denoiser(denoiser, adapter, self.sigma, self.device)
        self.denoiser = None if denoiser is None else denoiser.to(self.device).eval()
        seed = check_seed(seed)
        self.seed = secrets.randbits(63) if seed is None else seed
        self.journal, self._owns_journal = _open_journal(journal)
        self.sampler = Sampler(self.sigma, self.seed, self.device, self.denoiser, self.batch_size,
                               channels)
        self.decision = None if decision is None else as_decision(decision)
        self.dispatcher = Dispatcher(adapter, self.batch_size, retry, limits, self.decision)
        self.retry = retry
        self.stats = self.dispatcher.stats
        self._bridge = SyncBridge(adapter, self.stats)
        self._journal_run: JournalRun | None = None
        if self.journal is not None:  # registers the run, so the journal shows what it was
            self._journal_run = self.journal.run(self.run_key, self.run_config())
        #: Called with the number of answers of each batch as it arrives (those found in the
        #: journal too): :mod:`smoothapi.runs`' progress bar moves with them.
        self.answer_listeners: list[Callable[[int], None]] = []
        attempts = Attempts(self.sampler, self._journal_run, self.answer_listeners)
        self._queries = Queries(adapter, self.sampler, self.dispatcher, attempts)

    @functools.cached_property
    def run_key(self) -> str:
        """What decides the noise and the answers, hashed: the journal's run key."""
        return hashlib.sha256(json.dumps(self.run_config(), sort_keys=True).encode()).hexdigest()

    def run_config(self) -> dict[str, Any]:
        """The settings a journal run is keyed by (no credentials: adapter identities only)."""
        return {
            "adapter": self.adapter.identity(),
            "denoiser": module_digest(self.denoiser),
            "sigma": self.sigma,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "noise_scheme": NOISE_SCHEME,
            # Only a decision is keyed: runs of the adapter's top label keep their keys.
            **({} if self.decision is None else {"decision": self.decision.identity()}),
        }

    # --- Cohen et al.'s algorithms ----------------------------------------------------

    def predict(
        self, image: ImageLike, n: int = 1_000, alpha: float = 0.001, *, image_id: str | None = None
    ) -> Prediction:
        """PREDICT: ``g(x)``, or ``ABSTAIN``; wrong with probability at most ``alpha``. The top
        class of ``n`` noisy samples, when a binomial test of the top two counts rejects a tie.
        ``image_id`` as in :meth:`acertify`."""
        return self._bridge.run(self.apredict(image, n, alpha, image_id=image_id))

    @_entry
    async def apredict(
        self, image: ImageLike, n: int = 1_000, alpha: float = 0.001, *, image_id: str | None = None
    ) -> Prediction:
        """Async :meth:`predict`; ``image_id`` as in :meth:`acertify`."""
        n, alpha = check_count("n", n), check_alpha(alpha)
        return await self._queries.predict(self._queries.image(image, n), image_id, n, alpha)

    def clean_answer(self, image: ImageLike, *, image_id: str | None = None) -> Label | None:
        """The base classifier's own answer on the clean image: ``f(x)``, no noise and no
        denoiser (``None``: no label). One query, journaled as the samples are, so a resumed
        run does not pay for it again. ``image_id`` as in :meth:`acertify`."""
        return self._bridge.run(self.aclean_answer(image, image_id=image_id))

    @_entry
    async def aclean_answer(self, image: ImageLike, *, image_id: str | None = None) -> Label | None:
        """Async :meth:`clean_answer`."""
        return await self._queries.clean_answer(self._queries.image(image, 1), image_id)

    @overload
    def certify(
        self, image: ImageLike, n0: int = ..., n: int = ..., alpha: float = ..., *,
        radius: None = None, selection: str | Adapter | None = ..., futility: bool | float = ...,
        budget: int | None = ..., image_id: str | None = ...,
    ) -> Certification: ...

    @overload
    def certify(
        self, image: ImageLike, n0: int = ..., n: int = ..., alpha: float = ..., *,
        radius: float, selection: str | Adapter | None = ..., futility: bool | float = ...,
        budget: int | None = ..., image_id: str | None = ...,
    ) -> RadiusCertification: ...

    def certify(
        self,
        image: ImageLike,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        radius: float | None = None,
        selection: str | Adapter | None = None,
        futility: bool | float = True,
        budget: int | None = None,
        image_id: str | None = None,
    ) -> Certification | RadiusCertification:
        """CERTIFY: a class and an l2 radius around ``image`` where ``g`` cannot change.

        The candidate class comes from ``n0`` samples; ``p_A`` is bounded from ``n``
        fresh samples. With probability at least ``1 - alpha`` over the noise, the
        returned class is ``g(x')`` for every ``x'`` with ``||x' - x||_2 < radius``.
        ``radius`` is at most :func:`~smoothapi.max_certifiable_radius` ``(n, alpha, sigma)``.

        ``radius=r`` (with ``selection``, ``futility``) is :meth:`certify_radius`: certify
        that one radius with as few queries as possible, ``n`` being the budget of
        estimation samples. ``budget=`` is another name for ``n``. ``image_id`` as in
        :meth:`acertify`.
        """
        options = dict(radius=radius, selection=selection, futility=futility, budget=budget,
                       image_id=image_id)  # fmt: skip
        return self._bridge.run(self.acertify(image, n0, n, alpha, **options))

    @_entry
    async def acertify(
        self,
        image: ImageLike,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        radius: float | None = None,
        selection: str | Adapter | None = None,
        futility: bool | float = True,
        budget: int | None = None,
        image_id: str | None = None,
    ) -> Certification | RadiusCertification:
        """Async :meth:`certify`.

        ``image_id`` names the image for the noise streams and the journal (e.g. its
        dataset index); by default it is the SHA-256 of the pixels. A journal binds an id
        to the pixels it was first given with and refuses others under it. ``radius=r`` is
        :meth:`acertify_radius`.

        A call with another ``n`` for the same image draws fresh noise (:mod:`.journal`).
        """
        n = n if budget is None else budget  # ``budget`` names ``n``: the samples to spend
        n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
        x = self._queries.image(image, max(n0, n))
        if radius is not None:  # the default selection there: one query on the clean image
            options = dict(selection="clean" if selection is None else selection,
                           futility=futility, image_id=image_id)
            return await self.acertify_radius(x, radius, n0, n, alpha, **options)
        if selection not in (None, "samples"):
            raise InvalidInputError("selection is only used with radius=...; leave it out")
        return await self._queries.certify(x, image_id, n0, n, alpha)

    # --- certifying one radius with the fewest queries -----------------------------------

    def certify_radius(
        self,
        image: ImageLike,
        radius: float,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        selection: str | Adapter = "clean",
        futility: bool | float = True,
    ) -> RadiusCertification:
        """Certify "the smoothed classifier's radius at ``image`` is at least ``radius``".

        Instead of spending ``n`` samples to find the largest radius, this runs the
        anytime-valid :class:`~smoothapi.SequentialTest` (``futility`` as there), stopping
        as soon as it decides; ``n`` is its budget. The outcome is "certified" (false with
        probability at most ``alpha``), "not_certifiable", "candidate_rejected" (another
        class came back more often than the candidate), "no_candidate" (the selection
        returned no class; nothing was tested) or "budget_exhausted".
        ``selection`` as in :meth:`acertify_radius`.
        """
        options = dict(selection=selection, futility=futility)
        return self._bridge.run(self.acertify_radius(image, radius, n0, n, alpha, **options))

    @_entry
    async def acertify_radius(
        self,
        image: ImageLike,
        radius: float,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        selection: str | Adapter = "clean",
        futility: bool | float = True,
        image_id: str | None = None,
    ) -> RadiusCertification:
        """Async :meth:`certify_radius`; ``image_id`` as in :meth:`acertify`.

        ``selection`` picks the candidate class before any estimation sample is used:

        * ``"clean"`` (default): ONE query of ``f(D(x))`` on the clean image (no noise);
          on held-out photos through a vision API it certified as many as ``"samples"``
          for a tenth of the queries (``benchmarks/bench_selection.py``);
        * ``"samples"``: the top class of ``n0`` noisy samples (as CERTIFY does);
        * an :class:`~smoothapi.adapters.Adapter` (a local surrogate, e.g. a
          :class:`~smoothapi.LocalModelAdapter` speaking the same labels), asked once on
          ``D(x)``; it costs no query of ``self.adapter``.

        All three are valid: the candidate depends only on data independent of the
        estimation noise, so given it the estimation samples are still i.i.d.
        Bernoulli(``p_candidate``) and the test's level-``alpha`` guarantee holds given the
        candidate, hence overall (a candidate other than the top class only has a smaller
        ``p``). Only samples the test will use are asked for: none past its stop.
        """
        n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
        x = self._queries.image(image, max(n0, n))
        test = SequentialTest(check_radius(radius), self.sigma, alpha, n, futility)
        return await self._queries.certify_radius(x, image_id, test, selection, n0)

    # --- many images: the dataset layer (smoothapi.runs), imported when first used ---------

    def certify_many(
        self,
        images: Iterable[ImageLike],
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        **options: Any,
    ) -> Iterator[ImageOutcome]:
        """Certify a stream of images, yielding one :class:`~smoothapi.runs.ImageOutcome`
        each, in order: :func:`smoothapi.runs.certify_many` (its options: budgets, radius
        mode, sharding, progress) with this classifier."""
        from . import runs  # built on this module, so imported only when called

        return runs.certify_many(self, images, n0, n, alpha, **options)

    def acertify_many(
        self,
        images: Iterable[ImageLike],
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        **options: Any,
    ) -> AsyncIterator[ImageOutcome]:
        """:meth:`certify_many` for async code: ``async for outcome in ...``
        (:func:`smoothapi.runs.acertify_many`)."""
        from . import runs  # built on this module, so imported only when called

        return runs.acertify_many(self, images, n0, n, alpha, **options)

    # --- datasets: smoothapi.runs -------------------------------------------------------


def _choose_denoiser(
    spec: torch.nn.Module | str | None, adapter: Adapter, sigma: float, device: torch.device
) -> tuple[torch.nn.Module | None, int | None]:
    """The denoiser ``spec`` stands for, and the channels it is limited to (``"auto"``: the
    shipped photo denoiser for ``sigma``, RGB only, for a vision API; else ``None``)."""
    if spec is None or isinstance(spec, torch.nn.Module):
        return spec, None
    if not isinstance(spec, str):
        raise InvalidInputError(
            f"denoiser must be a torch.nn.Module, a name or path, 'auto' or None, got "
            f"{type(spec).__name__}"
        )
    from .denoisers import default_denoiser, load_denoiser  # the denoisers import torch models

    if spec != "auto":
        return load_denoiser(spec, device=device), None
    if not isinstance(adapter, RemoteAdapter):
        return None, None
    name = default_denoiser(sigma)
    if name is None:
        log.info("smoothapi: no shipped photo denoiser for sigma=%g in this install: the "
                 "noisy images go to the API as they are", sigma)  # fmt: skip
        return None, None
    log.info("smoothapi: denoising RGB images with the shipped photo denoiser %s for "
             "sigma=%g (denoiser=None to opt out)", name, sigma)  # fmt: skip
    return load_denoiser(name, device=device), 3


def _checked_adapter(adapter: Adapter) -> Adapter:
    """``adapter``, once it is known to be a smoothapi Adapter."""
    if not isinstance(adapter, Adapter):
        raise InvalidInputError(
            f"adapter must be a smoothapi Adapter, got {type(adapter).__name__}; "
            "wrap a torch model in LocalModelAdapter"
        )
    return adapter


def _open_journal(journal: Journal | str | os.PathLike | None) -> tuple[Journal | None, bool]:
    """The journal ``journal`` stands for, and whether the classifier owns it (opened it from
    a path, so closes it)."""
    if journal is None or isinstance(journal, Journal):
        return journal, False
    return Journal(journal), True
