"""Datasets: certify or predict many images, shard them across processes, write and read logs.

* :func:`acertify_many` / :func:`apredict_many` (and their sync forms) are the one loop
  over a dataset: one :class:`ImageOutcome` per image, in order, with budget caps,
  a progress bar, and errors kept per image;
* :class:`Shard` is the one reader of ``RANK`` / ``WORLD_SIZE`` (``torchrun``): which
  images this process takes, where it writes, and the merge of the processes' logs;
* :class:`LogWriter` and :func:`read_log_rows` are the one writer / reader pair of the
  log format: Cohen et al.'s TSV columns, or JSON Lines with counts and bounds.
"""

from __future__ import annotations

import asyncio
import csv
import datetime
import json
import os
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Sized,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch.distributed as dist
from tqdm.auto import tqdm

from ._images import ImageLike
from .adapters.base import Adapter
from .certification import Certification, Prediction, check_alpha, check_count
from .errors import BudgetExceededError, InvalidInputError, JournalError, RateLimitError
from .pricing import PRICES, plan_run
from .sequential import RadiusCertification
from .smoothing import SmoothedClassifier

__all__ = [
    "ABSTAIN_CODE",
    "CERTIFY_COLUMNS",
    "CLEAN_COLUMNS",
    "PREDICT_COLUMNS",
    "RADIUS_COLUMNS",
    "ImageOutcome",
    "LogWriter",
    "Shard",
    "acertify_many",
    "apredict_many",
    "certify_many",
    "format_elapsed",
    "text_cell",
    "log_row",
    "predict_many",
    "read_log_rows",
    "write_log",
]

Result = Certification | RadiusCertification | Prediction

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "file")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time", "file")
#: The sequential mode's log (``radius=``): CERTIFY's columns and the test's outcome.
RADIUS_COLUMNS = ("idx", "label", "predict", "radius", "outcome", "correct", "time", "file")
#: With ``clean=True``, added at the end: the API's own answer on the clean image, and 1 where
#: the certificate (or prediction) is not that answer (another label, or an abstention).
CLEAN_COLUMNS = ("clean", "differs")
ABSTAIN_CODE = -1  # what Cohen et al.'s logs write in the ``predict`` column on abstention


@dataclass(frozen=True)
class ImageOutcome:
    """One image of a dataset run: its result (a certificate, or a prediction), or the error
    that stopped it (any exception: the run goes on); ``queries`` were sent for it (answers
    found in the journal are free); ``cost`` counts the images answered and those possibly
    billed (sent, then abandoned after a timeout)."""

    index: int
    image_id: str | None
    result: Result | None
    error: Exception | None
    queries: int
    seconds: float
    cost: float | None = None
    #: With ``clean=True``: the base classifier's own answer on the clean image (one query).
    clean: Any = None
    clean_asked: bool = False

    @property
    def certification(self) -> Result | None:
        """The result (the name from when only certificates were run)."""
        return self.result


# --- sharding under torchrun ---------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's share of a dataset: every ``world``-th image, starting at ``rank``."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        """The share ``torchrun`` gives this process (``RANK``, ``WORLD_SIZE``); all if none."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    def select(self, images: Iterable[ImageLike]) -> Iterator[tuple[int, ImageLike]]:
        """``(dataset index, image)`` of this share; a sequence is only indexed where needed."""
        if isinstance(images, Sequence):
            for index in range(self.rank, len(images), self.world):
                yield index, images[index]
            return
        for index, image in enumerate(images):
            if index % self.world == self.rank:
                yield index, image

    def size(self, total: int) -> int:
        """How many of ``total`` images this share holds."""
        return len(range(self.rank, total, self.world))

    def output(self, path: str | None) -> str | None:
        """Where this process writes its rows of the log ``path`` (``None``: stdout)."""
        return path if self.world == 1 else f"{path}.rank{self.rank}"

    def merge(self, path: str, fmt: str, columns: Sequence[str]) -> None:
        """Wait for every process, then the first merges the shards into ``path`` by idx."""
        if self.world == 1:
            return
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        if self.rank == 0:
            shards = [Path(f"{path}.rank{r}") for r in range(self.world)]
            rows = sorted((row for s in shards for row in read_log_rows(s)),
                          key=lambda row: int(row["idx"]))  # fmt: skip
            with open(path, "w", encoding="utf-8", newline="") as merged:
                writer = LogWriter(merged, fmt, columns)
                for row in rows:
                    writer.write(row)
            for shard in shards:
                shard.unlink()
        dist.barrier()
        dist.destroy_process_group()


# --- the log format --------------------------------------------------------------------------


def format_elapsed(seconds: float) -> str:
    """``h:mm:ss.ffffff``, as ``str(datetime.timedelta)`` prints it but always with microseconds."""
    delta = datetime.timedelta(seconds=seconds)
    minutes, secs = divmod(delta.seconds, 60)
    hours, minutes = divmod(minutes, 60)
    hours += delta.days * 24
    return f"{hours}:{minutes:02d}:{secs:02d}.{delta.microseconds:06d}"


def _json_label(label: Any) -> Any:
    return label if label is None or isinstance(label, (str, int, float, bool)) else str(label)


def _counts(counts: Mapping[Any, int]) -> dict[str, int]:
    """Label -> count with string keys (``None``, "no label", becomes ``"None"``), largest first."""
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return {str(label): int(count) for label, count in ranked}


def log_row(
    index: int,
    outcome: ImageOutcome,
    *,
    label: Any = None,
    file: str | None = None,
    sigma: float | None = None,
    detail: bool = False,
) -> dict[str, Any]:
    """One image's row: Cohen et al.'s columns (``radius`` only for certificates), and with
    ``detail`` the bounds, sample sizes and counts our JSON Lines add. ``label`` is the true
    label if known (``correct`` is then 0 or 1, else empty); an abstention predicts -1 (Cohen
    et al.'s TSV code), or ``None`` with ``detail`` (JSON: ``null`` among the label strings).
    ``sigma`` is the noise level to report (a prediction does not carry it)."""
    result = outcome.result
    if result is None:
        raise outcome.error or InvalidInputError(f"image {index} has no result")
    row: dict[str, Any] = {
        "idx": index,
        "label": label,
        "predict": (None if detail else ABSTAIN_CODE) if result.abstained
        else _json_label(result.label),
    }
    if not isinstance(result, Prediction):
        row["radius"] = float(result.radius)
    if isinstance(result, RadiusCertification):
        row["outcome"] = str(result.outcome)
    correct = 0 if result.abstained else int(str(result.label) == str(label))
    row["correct"] = None if label is None else correct
    row["time"] = format_elapsed(outcome.seconds)
    row["file"] = file
    if outcome.clean_asked:
        row["clean"] = _json_label(outcome.clean)
        row["differs"] = int(result.abstained or str(result.label) != str(outcome.clean))
    if detail:
        if isinstance(result, Certification):
            row.update(p_a_lower=result.p_a_lower, n0=result.n0)
        elif isinstance(result, RadiusCertification):
            row["tested_radius"] = result.tested_radius
        else:
            row["p_value"] = result.p_value
        row.update(n=result.n, alpha=result.alpha, sigma=getattr(result, "sigma", sigma),
                   queries=result.queries, counts=_counts(result.counts))  # fmt: skip
    return row


#: ``fmt="text"``: the width of each column (others: 8), for a table people read.
TEXT_WIDTHS = {"idx": 5, "label": 14, "predict": 22, "radius": 7, "outcome": 16, "correct": 7,
               "time": 15, "file": 24, "clean": 22, "differs": 7}  # fmt: skip


def text_cell(column: str, value: Any) -> str:
    """One cell of a log row as ``--format text`` shows it (radii to 3 decimals, abstain)."""
    if value is None:
        return ""
    if column == "radius":
        return f"{float(value):.3f}"
    if column == "predict" and value == ABSTAIN_CODE:
        return "abstain"
    if column == "differs":
        return "*" if value else ""
    return str(value)


class LogWriter:
    """Writes one row per image as TSV (``fmt="tsv"``, with a header), JSON Lines
    (``fmt="json"``) or an aligned table to read (``fmt="text"``: radii to 3 decimals, an
    abstention as ``abstain``, a row whose ``differs`` is 1 marked ``*``), flushing each, so
    a log is readable while it is written. TSV and JSON keep full precision."""

    def __init__(self, out: TextIO, fmt: str = "tsv", columns: Sequence[str] = CERTIFY_COLUMNS):
        if fmt not in ("tsv", "json", "text"):
            raise InvalidInputError(f"log format must be 'tsv', 'json' or 'text', got {fmt!r}")
        self.out, self.fmt, self.columns = out, fmt, columns
        self._tsv = csv.writer(out, delimiter="\t", lineterminator="\n") if fmt == "tsv" else None
        if self._tsv is not None:
            self._tsv.writerow(columns)
            out.flush()
        elif fmt == "text":
            out.write(self._text_line(list(columns)) + "\n")
            out.flush()

    def _text_line(self, cells: list[str]) -> str:
        return "  ".join(f"{cell:<{TEXT_WIDTHS.get(c, 8)}}"
                         for c, cell in zip(self.columns, cells, strict=True)).rstrip()

    def write(self, row: dict[str, Any]) -> None:
        if self._tsv is not None:
            self._tsv.writerow(["" if row.get(c) is None else row[c] for c in self.columns])
        elif self.fmt == "text":
            cells = [text_cell(c, row.get(c)) for c in self.columns]
            self.out.write(self._text_line(cells) + "\n")
        else:
            self.out.write(json.dumps(row) + "\n")
        self.out.flush()


def read_log_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a log :class:`LogWriter` (or Cohen et al.'s code) wrote: TSV with a header,
    as strings, or JSON Lines, as written."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"log not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip()[:1] == "{":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


def write_log(
    outcomes: Iterable[ImageOutcome],
    writer: LogWriter,
    *,
    labels: Sequence[Any] | None = None,
    files: Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
    sigma: float | None = None,
) -> int:
    """Write one row per outcome as it comes; ``labels``, ``files`` and ``indices`` are
    looked up by the outcome's position in the dataset. An image that failed raises its
    error. Returns the number of rows written."""
    written = 0
    for outcome in outcomes:
        i = outcome.index
        row = log_row(
            i if indices is None else indices[i],
            outcome,
            label=None if labels is None else labels[i],
            file=None if files is None else files[i],
            sigma=sigma,
            detail=writer.fmt == "json",
        )
        writer.write(row)
        written += 1
    return written


# --- the loop over a dataset ---------------------------------------------------------------


def certify_many(
    smoothed: SmoothedClassifier,
    images: Iterable[ImageLike],
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    **options: Any,
) -> Iterator[ImageOutcome]:
    """Certify a stream of images, yielding one :class:`ImageOutcome` each, in order.

    Options as in :func:`acertify_many`. Use :func:`acertify_many` from async code.
    """
    return smoothed._bridge.iterate(acertify_many(smoothed, images, n0, n, alpha, **options))


def predict_many(
    smoothed: SmoothedClassifier,
    images: Iterable[ImageLike],
    n: int = 1_000,
    alpha: float = 0.001,
    **options: Any,
) -> Iterator[ImageOutcome]:
    """PREDICT for a stream of images; options as in :func:`apredict_many`."""
    return smoothed._bridge.iterate(apredict_many(smoothed, images, n, alpha, **options))


async def acertify_many(
    smoothed: SmoothedClassifier,
    images: Iterable[ImageLike],
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    *,
    target_radius: float | None = None,
    radius: float | None = None,
    selection: str | Adapter | None = None,
    **options: Any,
) -> AsyncIterator[ImageOutcome]:
    """Certify images one after another, each with its requests fanned out.

    * An image whose request fails for good (a non-retryable error, or retries spent)
      gets an outcome with ``error`` set, and the run goes on to the next image; but a
      journal that can keep no more answers (:class:`~smoothapi.errors.JournalError`) and a
      provider asking to wait longer than ``RetryPolicy.max_wait`` (a
      :class:`~smoothapi.errors.RateLimitError` that is not retryable) stop the run: every
      later image would meet them too.
    * ``max_queries`` and ``max_cost`` (USD, at ``price_per_1000``, by default the
      adapter's entry in :data:`smoothapi.pricing.PRICES`) cap what this run sends:
      before an image that could take it past a cap, the run stops with
      :class:`~smoothapi.errors.BudgetExceededError`; what was done is already yielded
      (and journaled).
    * ``target_radius``: refuse at once, saying why, if ``n`` samples could never
      certify it. ``progress=True`` prints the plan (queries, cost, best radius) and
      shows a bar with queries, cost, requests per second and the ETA; ``show_plan=False``
      leaves the plan out (a caller that printed its own, as the command line does).
    * ``clean=True``: also ask the base classifier once on each clean image
      (:meth:`~smoothapi.SmoothedClassifier.clean_answer`, one more query per image);
      the log then adds :data:`CLEAN_COLUMNS`.
    * ``shard=True`` (default): under ``torchrun`` each process takes its :class:`Shard`
      of the images (or give the :class:`Shard`; ``False`` takes all); outcomes keep
      the dataset index so the processes' logs merge.
    * ``ids`` name the images for the noise and the journal (default: pixel hashes).
    * ``radius`` / ``selection``: certify that radius sequentially for each image
      (:meth:`~smoothapi.SmoothedClassifier.certify_radius`); ``n`` is then each
      image's budget.
    """
    per_image = check_count("n0", n0) + check_count("n", n)
    total = _length(images)
    plan = plan_run(total or 1, n0, n, alpha, smoothed.sigma,
                    provider=smoothed.adapter.name, target_radius=target_radius)  # fmt: skip

    async def certify(image: ImageLike, image_id: str | None) -> Result:
        return await smoothed.acertify(
            image, n0, n, alpha, radius=radius, selection=selection, image_id=image_id
        )

    plan = f"plan: {plan}" if total is not None else f"plan per image: {plan}"
    async for outcome in _each_image(smoothed, images, certify, per_image, plan, **options):
        yield outcome


async def apredict_many(
    smoothed: SmoothedClassifier,
    images: Iterable[ImageLike],
    n: int = 1_000,
    alpha: float = 0.001,
    **options: Any,
) -> AsyncIterator[ImageOutcome]:
    """PREDICT images one after another; options as in :func:`acertify_many` (no radius)."""
    per_image, alpha = check_count("n", n), check_alpha(alpha)

    async def predict(image: ImageLike, image_id: str | None) -> Result:
        return await smoothed.apredict(image, n, alpha, image_id=image_id)

    plan = f"plan per image: {n} queries"
    async for outcome in _each_image(smoothed, images, predict, per_image, plan, **options):
        yield outcome


async def _each_image(
    smoothed: SmoothedClassifier,
    images: Iterable[ImageLike],
    job: Callable[[ImageLike, str | None], Awaitable[Result]],
    per_image: int,
    plan: str,
    *,
    ids: Sequence[str] | None = None,
    max_queries: int | None = None,
    max_cost: float | None = None,
    price_per_1000: float | None = None,
    shard: bool | Shard = True,
    progress: bool = False,
    show_plan: bool = True,
    clean: bool = False,
) -> AsyncIterator[ImageOutcome]:
    """Run ``job`` on each image of this process's share, within the caps."""
    share = shard if isinstance(shard, Shard) else Shard.from_env() if shard else Shard()
    price, cap = _caps(smoothed.adapter.name, max_queries, max_cost, price_per_1000)
    total = _length(images)
    bar = None
    if progress:
        bar = _Progress(smoothed, plan if show_plan else None, price,
                        None if total is None else share.size(total), per_image + clean)
    spent = 0
    try:
        for index, image in share.select(images):
            if cap is not None and spent + per_image + clean > cap:
                raise BudgetExceededError(
                    f"stopped before image {index}: {spent} queries sent, the next image "
                    f"may need {per_image + clean} and max_queries is {cap}; the results "
                    "so far were returned (and journaled, if a journal is set)"
                )
            stats, started = smoothed.stats, asyncio.get_running_loop().time()
            before, billable = stats.images, stats.billable
            image_id = None if ids is None else str(ids[index])
            result, error = None, None
            answer = None
            try:
                result = await job(image, image_id)
                if clean:
                    answer = await smoothed.aclean_answer(image, image_id=image_id)
            except Exception as exc:  # any failure is this image's; the run goes on
                if _stops_the_run(exc):
                    raise
                error = exc
            queries = stats.images - before
            spent += queries
            seconds = asyncio.get_running_loop().time() - started
            cost = None if price is None else (stats.billable - billable) * price / 1000
            if bar is not None:
                bar.image_done()
            yield ImageOutcome(index, image_id, result, error, queries, seconds, cost,
                               clean=answer, clean_asked=clean)
    finally:
        if bar is not None:
            bar.close()


def _stops_the_run(error: Exception) -> bool:
    """A failure that every later image would meet too, after paying for queries: a journal
    that can keep no answer (deleted, replaced, its disk full), or a provider that asked to
    wait longer than the retry policy allows."""
    return isinstance(error, JournalError) or (
        isinstance(error, RateLimitError) and not error.retryable
    )


def _length(images: Iterable[ImageLike]) -> int | None:
    return len(images) if isinstance(images, Sized) else None


def _caps(
    provider: str, max_queries: int | None, max_cost: float | None, price: float | None
) -> tuple[float | None, int | None]:
    """The price per 1,000 queries (given, or the provider's) and the cap on queries."""
    if price is None and provider in PRICES:
        price = PRICES[provider].per_1000
    if max_cost is not None:
        if price is None:
            raise InvalidInputError("max_cost needs price_per_1000 for this adapter")
        if price > 0:  # free queries: the cost cap never binds
            by_cost = int(max_cost / price * 1000)
            max_queries = by_cost if max_queries is None else min(max_queries, by_cost)
    return price, max_queries


class _Progress:
    """Prints the plan, then shows a bar that moves with each batch of answers as it arrives:
    answers out of those the images may take at most, their rate and the ETA, with the
    images done, queries sent, queries per second, cost and retries beside them. An image
    that needed fewer answers than its budget (a sequential test that stopped early) takes
    the rest off the total when it is done."""

    def __init__(
        self,
        smoothed: SmoothedClassifier,
        plan: str | None,
        price: float | None,
        total: int | None,
        per_image: int,
    ) -> None:
        self.smoothed, self.stats, self.price = smoothed, smoothed.stats, price
        self.images, self.per_image, self.done, self.this_image = total, per_image, 0, 0
        self.started, self.base = time.monotonic(), smoothed.stats.images
        if plan is not None:
            tqdm.write(plan, file=sys.stderr)
        self.bar = tqdm(total=None if total is None else total * per_image, unit="answer",
                        desc=f"certify {smoothed.adapter.name}", dynamic_ncols=True)  # fmt: skip
        smoothed.answer_listeners.append(self.answers)

    def answers(self, count: int) -> None:
        """A batch of ``count`` answers came in (or was found in the journal)."""
        self.this_image += count
        self.bar.update(count)
        self._postfix()

    def image_done(self) -> None:
        """An image is done."""
        self.done += 1
        if self.bar.total is not None and self.this_image < self.per_image:
            self.bar.total -= self.per_image - self.this_image
        self.this_image = 0
        self._postfix()
        self.bar.refresh()

    def _postfix(self) -> None:
        elapsed, spent = time.monotonic() - self.started, self.stats.images - self.base
        images = f"{self.done}" if self.images is None else f"{self.done}/{self.images}"
        self.bar.set_postfix(
            images=images,
            queries=self.stats.images,
            qps=f"{spent / max(elapsed, 1e-9):.1f}",
            cost="-" if self.price is None else f"${spent * self.price / 1000:.2f}",
            retries=self.stats.retries,
            refresh=False,
        )

    def close(self) -> None:
        if self.answers in self.smoothed.answer_listeners:
            self.smoothed.answer_listeners.remove(self.answers)
        self.bar.close()
