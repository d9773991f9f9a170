"""What a :class:`~smoothapi.SmoothedClassifier`'s calls do under its public methods.

:class:`Attempts` keys each call and records it in the classifier's journal run (if it has
one); :class:`Queries` draws each call's noisy samples (the sampler), sends them (the
dispatcher), keeps their answers (the attempts) and makes of them what each algorithm
returns: PREDICT, CERTIFY, the clean answer, and the sequential certification of one radius
(the candidate's selection and the test fed in sample order). The facade checks the
arguments and hands the work here.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import torch

from ._images import PEAK_FLOATS_PER_PIXEL, ImageLike, as_image_tensor, check_batch_memory
from .adapters.base import Adapter
from .adapters.local import LocalModelAdapter
from .certification import (
    ABSTAIN,
    Certification,
    Label,
    Prediction,
    certify_counts,
    predict_counts,
    top_label,
)
from .dispatch import UNRECORDED, AnswerStore, Dispatcher, all_or_nothing
from .errors import InvalidInputError
from .journal import JournalRun
from .sampling import ImageKey, Phase, Sampler
from .sequential import Outcome, RadiusCertification, SequentialTest

R = TypeVar("R", Certification, Prediction, RadiusCertification)


class Attempts:
    """Keys each call of one classifier and records it in its journal run, if it has one."""

    def __init__(
        self,
        sampler: Sampler,
        run: JournalRun | None,
        listeners: list[Callable[[int], None]] | None = None,
    ) -> None:
        self.sampler, self.run = sampler, run
        self.listeners = [] if listeners is None else listeners

    def begin(self, x: torch.Tensor, image_id: str | None, settings: dict[str, Any]) -> ImageKey:
        """The key of this call (its settings make it an attempt of its own); with a journal,
        the attempt is recorded first (and an id for other pixels refused)."""
        key = self.sampler.key(x, image_id, settings)
        if self.run is not None:
            self.run.begin(key, settings["method"], settings)
        return key

    def store(self, key: ImageKey, phase: Phase) -> AnswerStore:
        """Where the answers of one stream are kept: the journal run, if there is one (each
        batch of answers, and those found there, told to the listeners)."""
        store = UNRECORDED if self.run is None else self.run.stream(key, phase)
        return Told(store, self.listeners) if self.listeners else store

    def finish(self, key: ImageKey, result: R) -> R:
        """Record ``result`` as the attempt's outcome (with a journal); return it."""
        if self.run is not None:
            summary = {"label": None if result.abstained else result.label, "n": result.n}
            for name in ("outcome", "radius", "n0", "p_a_lower", "queries"):
                if hasattr(result, name):
                    summary[name] = getattr(result, name)
            self.run.finish(key, summary)
        return result


class Told:
    """An answer store that tells listeners how many answers each batch brought."""

    def __init__(self, store: AnswerStore, listeners: list[Callable[[int], None]]) -> None:
        self.store, self.listeners = store, listeners

    def _tell(self, count: int) -> None:
        for listener in list(self.listeners):
            listener(count)

    def answers(self) -> dict[int, Label | None]:
        known = self.store.answers()
        if known:
            self._tell(len(known))
        return known

    def record(self, answers: Iterable[tuple[int, Label | None, float | None, Any]]) -> None:
        answers = list(answers)
        self.store.record(answers)
        self._tell(len(answers))


class Queries:
    """The queries of one classifier's calls: ``f(D(x + delta))`` asked of ``adapter``
    through ``dispatcher`` for the noise ``sampler`` draws, each call kept by ``attempts``."""

    def __init__(
        self, adapter: Adapter, sampler: Sampler, dispatcher: Dispatcher, attempts: Attempts
    ) -> None:
        self.adapter, self.sampler = adapter, sampler
        self.dispatcher, self.attempts = dispatcher, attempts

    def image(self, image: ImageLike, samples: int) -> torch.Tensor:
        """``image`` as a tensor, once its largest noisy batch is known to fit in memory."""
        x = as_image_tensor(image)
        sampler = self.sampler
        local = sampler.denoiser is not None or isinstance(self.adapter, LocalModelAdapter)
        check_batch_memory(tuple(x.shape), min(sampler.batch_size, samples), sampler.device,
                           floats_per_pixel=PEAK_FLOATS_PER_PIXEL if local else 0)  # fmt: skip
        return x

    async def counts(self, x: torch.Tensor, key: ImageKey, phase: Phase, num: int) -> Counter:
        """How often ``f(D(x + delta))`` returns each label over ``num`` noise draws."""
        produce = functools.partial(self.sampler.noisy_batch, x, key, phase)
        return await self.dispatcher.counts(produce, num, self.attempts.store(key, phase))

    async def once(self, batch: torch.Tensor, key: ImageKey) -> Label | None:
        """The one answer on ``batch`` (a single clean image) of the attempt ``key``: the one
        its journal kept, else asked (one query)."""
        store = self.attempts.store(key, Phase.CLEAN_SELECTION)
        known = store.answers()
        if 0 in known:
            return known[0]
        return (await self.dispatcher.ask(batch, [0], store))[0]

    # --- Cohen et al.'s algorithms, the arguments checked -------------------------------

    async def predict(
        self, x: torch.Tensor, image_id: str | None, n: int, alpha: float
    ) -> Prediction:
        """PREDICT from ``n`` noisy samples."""
        key = self.attempts.begin(x, image_id, {"method": "predict", "n": n, "alpha": alpha})
        prediction = predict_counts(await self.counts(x, key, Phase.PREDICTION, n), alpha)
        return self.attempts.finish(key, prediction)

    async def clean_answer(self, x: torch.Tensor, image_id: str | None) -> Label | None:
        """``f(x)``: one query on the clean image, no noise and no denoiser."""
        key = self.attempts.begin(x, image_id, {"method": "clean_answer"})
        answer = await self.once(x[None], key)
        if self.attempts.run is not None:
            self.attempts.run.finish(key, {"label": answer, "n": 1})
        return answer

    async def certify(
        self, x: torch.Tensor, image_id: str | None, n0: int, n: int, alpha: float
    ) -> Certification:
        """CERTIFY: the candidate from ``n0`` samples, ``p_A`` bounded from ``n`` others."""
        settings = {"method": "certify", "n0": n0, "n": n, "alpha": alpha}
        key = self.attempts.begin(x, image_id, settings)
        # Independent sample sets, drawn at once; the candidate still comes from selection alone.
        selection_counts, estimation_counts = await all_or_nothing(
            self.counts(x, key, Phase.SELECTION, n0), self.counts(x, key, Phase.ESTIMATION, n)
        )
        return self.attempts.finish(
            key, certify_counts(selection_counts, estimation_counts, self.sampler.sigma, alpha)
        )

    # --- certifying one radius with the fewest queries -----------------------------------

    async def certify_radius(
        self,
        x: torch.Tensor,
        image_id: str | None,
        test: SequentialTest,
        selection: str | Adapter,
        n0: int,
    ) -> RadiusCertification:
        """Run ``test`` on the candidate ``selection`` picks (``n0``: its samples, for
        ``"samples"``), asking only for the samples the test will use."""
        if not isinstance(selection, Adapter) and selection not in ("samples", "clean"):
            raise InvalidInputError(
                f"selection must be 'samples', 'clean' or an Adapter, got {selection!r}"
            )
        key = self.attempts.begin(x, image_id, radius_settings(test, selection, n0))
        candidate, selection_queries = await self.select(x, key, selection, n0)
        counts: Counter = Counter()
        evaluated = 0
        if candidate is None:  # nothing to test: no class was ever returned
            outcome = Outcome.NO_CANDIDATE
        else:
            counts, evaluated = await self.sequential_counts(x, key, candidate, test)
            outcome = radius_outcome(test, candidate, counts)
        certified = outcome is Outcome.CERTIFIED
        return self.attempts.finish(key, RadiusCertification(
            label=candidate if certified else ABSTAIN,
            radius=test.radius if certified else 0.0,
            outcome=outcome,
            n=test.t, alpha=test.alpha, sigma=self.sampler.sigma, tested_radius=test.radius,
            candidate=candidate, counts=dict(counts), selection_queries=selection_queries,
            estimation_queries=evaluated, max_n=test.max_n,
        ))  # fmt: skip

    async def select(
        self, x: torch.Tensor, key: ImageKey, selection: str | Adapter, n0: int
    ) -> tuple[Label | None, int]:
        """The candidate class and the queries of ``self.adapter`` it takes."""
        if isinstance(selection, str) and selection == "samples":
            return top_label(await self.counts(x, key, Phase.SELECTION, n0)), n0
        clean = self.sampler.clean_batch(x)
        if isinstance(selection, Adapter):
            decision = self.dispatcher.decision
            if decision is None:
                return (await selection.atop_labels(clean))[0], 0
            answer = (await selection.aanswers_or_errors(clean))[0]
            if isinstance(answer, Exception) or answer.ranked is None:
                raise InvalidInputError(
                    f"the selection model {type(selection).__name__} gives no ranked answer for "
                    f"the decision {decision!r} to read"
                ) from (answer if isinstance(answer, Exception) else None)
            return decision(answer.ranked), 0
        return await self.once(clean, key), 1

    async def sequential_counts(
        self, x: torch.Tensor, key: ImageKey, candidate: Label, test: SequentialTest
    ) -> tuple[Counter, int]:
        """Feed ``test`` noisy answers until it stops; returns the labels of the samples
        it used and how many estimation answers were paid for (now or in an earlier run)."""
        produce = functools.partial(self.sampler.noisy_batch, x, key, Phase.SEQUENTIAL)
        stop = lambda: test.outcome is not None  # noqa: E731
        # Only ask for samples the test will surely use: it cannot stop sooner than
        # samples_to_decide() more, so those may be in flight at once, and none past them.
        window = self.dispatcher.in_flight * self.dispatcher.request_size
        wanted = lambda: test.t + test.samples_to_decide(window)  # noqa: E731
        store = self.attempts.store(key, Phase.SEQUENTIAL)
        answers = self.dispatcher.answers(produce, test.max_n, store, stop, wanted)
        return await feed(test, candidate, answers)


def radius_settings(test: SequentialTest, selection: str | Adapter, n0: int) -> dict[str, Any]:
    """What makes a radius attempt: not the budget (nor futility), since the test's guarantee
    survives extending its stream; the radius, alpha and how the candidate is chosen do."""
    chosen: Any = selection.identity() if isinstance(selection, Adapter) else selection
    settings = {"method": "radius", "radius": test.radius, "alpha": test.alpha, "selection": chosen}
    if chosen == "samples":
        settings["n0"] = n0
    return settings


def radius_outcome(test: SequentialTest, candidate: Label, counts: Counter) -> Outcome:
    """The test's outcome, saying when the futility stop rejected the candidate itself:
    another class came back more often than it in the samples the test used."""
    if test.outcome is None:
        return Outcome.BUDGET_EXHAUSTED
    rivals = [c for label, c in counts.items() if label is not None and label != candidate]
    if test.outcome is Outcome.NOT_CERTIFIABLE and max(rivals, default=0) > counts[candidate]:
        return Outcome.CANDIDATE_REJECTED
    return test.outcome


async def feed(
    test: SequentialTest,
    candidate: Label,
    answers: AsyncIterator[tuple[list[int], list[Label | None]]],
) -> tuple[Counter, int]:
    """Feed ``test`` whether each answer is ``candidate``, in sample order: it only ever sees
    the prefix of indices answered so far, so completion order cannot sway it. Returns the
    labels of the samples it used and how many answers came (all of them paid for)."""
    answered: dict[int, Label | None] = {}
    fed = 0  # the test has seen samples 0 .. fed - 1
    async for indices, labels in answers:
        answered.update(zip(indices, labels, strict=True))
        start = fed
        while fed < test.max_n and fed in answered:
            fed += 1
        if fed > start and test.outcome is None:
            test.feed([answered[i] == candidate for i in range(start, fed)])
    return Counter(answered[i] for i in range(test.t)), len(answered)
