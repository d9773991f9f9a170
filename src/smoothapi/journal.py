"""A durable journal of base-classifier answers: no paid query is ever lost.

:meth:`Journal.run` opens one run of it; ``run.stream(image_key, phase)`` is the
answer store of one stream of samples, which the dispatcher reads before asking and
writes before counting.

Every answer is written (and committed) before it is counted, keyed by

* the **run**: a hash of what decides the noise and the answers — adapter identity
  (provider, model, options; not the host or port it is reached at, so a run resumes
  against another replica of the same model), denoiser identity, sigma, seed and batch size;
* the **image**: the SHA-256 of its pixels (or of the caller's ``image_id``, which the
  journal binds to the pixels' digest: the same id with other pixels is refused with
  :class:`~smoothapi.errors.ImageMismatchError`), the **attempt** (a hash of the call's
  settings) and which occurrence of that image and attempt in the run it is;
* the **phase** (selection, estimation, prediction, sequential, clean selection) and the
  **sample index**.

Running the same job again with the same seed regenerates the same noise, finds the
answers already paid for, and sends only what is missing, so a run killed at any
point (SIGKILL included) resumes with nothing re-sent, nothing lost, and the same
certificates. A call with other settings for the same image (more samples, another
``alpha``) is another attempt: it draws fresh noise rather than extending the earlier
answers, and warns (:class:`RepeatedAttemptWarning`). Every attempt is recorded with its
settings and result (:meth:`Journal.attempts`), so repeated tries can be accounted for:
reporting the best of ``k`` attempts at level ``alpha`` holds at ``k * alpha``. Attempts are
counted by the pixels' digest across the whole journal (:meth:`Journal.tries`), so the same
image tried under another seed (another run) or another ``image_id`` counts too. The journal
holds labels and the provider's score for each (when the adapter gives one), digests of
images, never credentials, and never image bytes.

**Pay once, ask many.** Each answer is kept whole, as the adapter ranked it (the labels and
scores the provider returned, bounded by its own list length), beside the label the run
counted. :meth:`Journal.recertify` with a ``decision`` (:mod:`smoothapi.decisions`)
certifies another question from the same answers, with no query sent. Each question's
certificate holds at ``alpha`` on its own; keeping the answers to ``k`` questions asked of
the same samples holds at ``k * alpha`` jointly (union bound), so the journal records which
questions were asked of each attempt (:attr:`Recertified.questions`). Journals written
before ranked answers were kept (or by an adapter that gives none) re-certify the run's own
question only.

One process writes to a journal at a time (an OS lock on the journal file itself; the
journal names the holder), so two runs never buy the same answer twice. A journal file
deleted or replaced while a process writes to it stops that process at its next commit
(:class:`~smoothapi.errors.JournalError`) instead of writing on to a file no rerun finds.

SQLite in WAL mode; ``durability="full"`` (default) fsyncs every commit, so even a
power cut loses nothing committed; ``"normal"`` survives a killed process but may lose
the last commits on power loss, in exchange for speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._journal_lock import WriterLock, check_file, identity, take_writer
from .certification import Certification, Label, certify_counts
from .decisions import Decision, Ranked
from .errors import ImageMismatchError, InvalidInputError, JournalError, UsageError
from .sampling import ImageKey, Phase

__all__ = [
    "OWN_QUESTION",
    "Attempt",
    "Journal",
    "JournalRun",
    "JournalStream",
    "Recertified",
    "RepeatedAttemptWarning",
]

# The sampling phases by their old names (the journal stores them as integers).
SELECTION, ESTIMATION, PREDICTION = Phase.SELECTION, Phase.ESTIMATION, Phase.PREDICTION
SEQUENTIAL, CLEAN_SELECTION = Phase.SEQUENTIAL, Phase.CLEAN_SELECTION

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    run TEXT NOT NULL, image TEXT NOT NULL, attempt TEXT NOT NULL, occurrence INTEGER NOT NULL,
    phase INTEGER NOT NULL, idx INTEGER NOT NULL, label TEXT NOT NULL, score REAL,
    ranked TEXT,
    PRIMARY KEY (run, image, attempt, occurrence, phase, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS questions (
    run TEXT NOT NULL, image TEXT NOT NULL, attempt TEXT NOT NULL, occurrence INTEGER NOT NULL,
    decision TEXT NOT NULL, asked REAL NOT NULL,
    PRIMARY KEY (run, image, attempt, occurrence, decision)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    run TEXT NOT NULL, image TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (run, image)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    run TEXT NOT NULL, image TEXT NOT NULL, attempt TEXT NOT NULL, occurrence INTEGER NOT NULL,
    method TEXT NOT NULL, settings TEXT NOT NULL, started REAL NOT NULL, result TEXT,
    PRIMARY KEY (run, image, attempt, occurrence)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS images_by_content ON images (content);
CREATE TABLE IF NOT EXISTS writer (
    one INTEGER PRIMARY KEY CHECK (one = 1), pid INTEGER NOT NULL, host TEXT NOT NULL,
    since TEXT NOT NULL
);
"""


def _connect(path: Path, durability: str) -> tuple[sqlite3.Connection, bool]:
    """A connection to the journal at ``path`` with the schema in place, and whether its
    samples have the column of ranked answers. Journals from before ranked answers were kept
    get the column at their first write (under the writer's lock), not here: a reader must not
    alter a journal."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={durability.upper()}")
    columns = [row[1] for row in db.execute("PRAGMA table_info(samples)")]
    if columns and "attempt" not in columns:
        db.close()
        raise JournalError(
            f"{path} was written by an earlier smoothapi (noise scheme 1), whose "
            "answers cannot be replayed; keep it for its records and start a new journal"
        )
    db.executescript(_SCHEMA)
    return db, not columns or "ranked" in columns


class RepeatedAttemptWarning(UserWarning):
    """An image is certified again in a journal with other settings (or again with the
    same): the new attempt draws fresh noise, and each attempt may be wrong with
    probability ``alpha``. An image is known by its pixels, whatever the run (seed) or
    ``image_id``."""


@dataclass(frozen=True)
class Attempt:
    """One call recorded in a journal run: the image key, the method ("certify",
    "predict", "radius") and its settings, when it started, and its result (``None`` if it
    did not finish: a crash, or still running)."""

    run: str
    key: ImageKey
    method: str
    settings: dict[str, Any]
    started: float
    result: dict[str, Any] | None


@dataclass(frozen=True)
class Recertified:
    """One CERTIFY attempt of a journal run, certified again from its stored answers.

    ``n0``, ``n`` are the samples used (the attempt's own unless a re-analysis asked for
    fewer); ``answered`` how many of them the journal holds. An incomplete attempt (a
    crash before all its answers came) has ``certification=None``: a bound from fewer
    samples than were asked for would be another test. ``attempts`` counts this image's
    CERTIFY attempts in the journal, by its pixels (in any run, so under any seed, and under
    any ``image_id``): when it is above 1, keeping the best of them holds only at
    ``attempts * alpha``. ``questions`` counts the decisions asked of this attempt's
    answers (the run's own and every other certified offline, this one included): keeping
    all their answers holds at ``questions * alpha``."""

    key: ImageKey
    n0: int
    n: int
    answered: tuple[int, int]
    certification: Certification | None
    attempts: int
    questions: int = 1

    @property
    def complete(self) -> bool:
        return self.answered == (self.n0, self.n)


def _encode_label(label: Label | None) -> str:
    try:
        return json.dumps(label)
    except TypeError:
        raise InvalidInputError(
            f"the journal stores JSON labels (str, int, float, None); got {label!r}"
        ) from None


def _decode_label(text: str) -> Label | None:
    return _label_of(json.loads(text))


def _label_of(value: Any) -> Label | None:
    return tuple(value) if isinstance(value, list) else value


def _encode_ranked(ranked: Iterable[tuple[Label, float]] | None) -> str | None:
    if ranked is None:
        return None
    return json.dumps([[_checked_label(label), score] for label, score in ranked])


def _checked_label(label: Label) -> Label:
    _encode_label(label)  # raises for what JSON cannot hold
    return label


def _decode_ranked(text: str | None) -> Ranked | None:
    if text is None:
        return None
    return tuple((_label_of(label), score) for label, score in json.loads(text))


#: The question a run without a decision counts: its adapter's top label.
OWN_QUESTION = {"decision": "top", "by": "adapter"}


def _question(decision: Decision | None, config: Mapping[str, Any]) -> str:
    """The JSON identity of ``decision`` (``None``: the run's own)."""
    identity = config.get("decision", OWN_QUESTION) if decision is None else decision.identity()
    return json.dumps(identity, sort_keys=True)


class Journal:
    """An SQLite file of answers and attempts; see the module docstring.

    A journal has one writing process at a time: the first write (registering a run)
    takes an exclusive OS lock on the journal file itself, held until :meth:`close` or the
    process ends (a killed process releases it too); no file beside it can be deleted to get
    around it. Another process that writes to it gets
    :class:`~smoothapi.errors.JournalLockedError` naming the holder (pid, host, since);
    reading (:meth:`runs`, :meth:`recertify`) needs no lock. A path that is a folder, cannot be
    written, or holds no SQLite database, and a damaged file, are
    :class:`~smoothapi.errors.JournalError`; so is every write once the file was deleted or
    replaced under this object. One object may serve several threads.
    """

    def __init__(self, path: str | os.PathLike, durability: str = "full") -> None:
        if durability not in ("full", "normal"):
            raise InvalidInputError(f"durability must be 'full' or 'normal', got {durability!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise JournalError(f"the journal {self.path} is a folder; give a file in it, "
                               f"e.g. {self.path / 'journal.sqlite'}")  # fmt: skip
        self._lock = threading.RLock()
        self._writer: WriterLock | None = None
        self._db: sqlite3.Connection | None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db, self._ranked = _connect(self.path, durability)
            self._file = identity(self.path)
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise JournalError(f"cannot use {self.path} as a journal: {reason}") from exc

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._writer is not None:
                self._writer.release()
                self._writer = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _sql(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, one thread at a time; SQLite's errors as JournalError. Writing
        takes the writer's lock first, and checks that the file is still the journal."""
        with self._lock:
            if self._db is None:
                raise UsageError(f"the journal {self.path} is closed")
            try:
                if write:
                    check_file(self.path, self._file)
                if write and self._writer is None:
                    self._writer = take_writer(self._db, self.path, self._file)
                yield self._db
            except (OSError, sqlite3.Error) as exc:
                raise JournalError(f"the journal {self.path} cannot be used: {exc}") from exc

    def start_run(self, run: str, config: Mapping[str, Any]) -> None:
        """Register a run (idempotent): ``config`` is kept to show what the run was."""
        with self._sql(write=True) as db:
            db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?)",
                (run, json.dumps(config, sort_keys=True, default=str), time.time()),
            )

    def run(self, run: str, config: Mapping[str, Any]) -> JournalRun:
        """Register a run (idempotent) and return it: the answers of that run only."""
        self.start_run(run, config)
        return JournalRun(self, run)

    def runs(self) -> dict[str, dict[str, Any]]:
        """Run key -> its configuration."""
        with self._sql() as db:
            rows = db.execute("SELECT run, config FROM runs ORDER BY created").fetchall()
        return {run: json.loads(config) for run, config in rows}

    def answers(self, run: str, key: ImageKey, phase: int) -> dict[int, Label | None]:
        """Sample index -> recorded answer, for one phase of one image key."""
        with self._sql() as db:
            rows = _stream_rows(db, "label", run, key, phase)
        return {idx: _decode_label(label) for idx, label in rows}

    def record(
        self,
        run: str,
        key: ImageKey,
        phase: int,
        answers: Iterable[tuple[Any, ...]],
    ) -> None:
        """Commit answers ``(sample index, label, score or None[, ranked answer or None])``
        in one transaction (the label is the one the run counts)."""
        rows = [
            (run, key.digest, key.attempt, key.occurrence, int(phase), idx,
             _encode_label(label), score, _encode_ranked(ranked[0] if ranked else None))
            for idx, label, score, *ranked in answers
        ]  # fmt: skip
        with self._sql(write=True) as db, db:
            if not self._ranked:
                db.execute("ALTER TABLE samples ADD COLUMN ranked TEXT")
                self._ranked = True
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO samples (run, image, attempt, occurrence, phase, idx, "
                "label, score, ranked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def ranked(self, run: str, key: ImageKey, phase: int) -> dict[int, Ranked | None]:
        """Sample index -> the whole answer as the adapter ranked it (``None`` where the
        journal keeps the counted label only: written before ranked answers were kept, or by
        an adapter that gives none)."""
        if not self._ranked:
            return dict.fromkeys(self.answers(run, key, phase))
        with self._sql() as db:
            rows = _stream_rows(db, "ranked", run, key, phase)
        return {idx: _decode_ranked(text) for idx, text in rows}

    def scores(self, run: str, key: ImageKey, phase: int) -> dict[int, float | None]:
        """Sample index -> the score of the recorded label (``None`` where none was given)."""
        with self._sql() as db:
            return dict(_stream_rows(db, "score", run, key, phase))

    def images(self, run: str) -> list[ImageKey]:
        """The image keys (image, attempt, occurrence) with answers in ``run``."""
        with self._sql() as db:
            rows = db.execute(
                "SELECT DISTINCT s.image, s.occurrence, s.attempt, i.content FROM samples s "
                "LEFT JOIN images i ON i.run = s.run AND i.image = s.image WHERE s.run=? "
                "ORDER BY s.image, s.attempt, s.occurrence",
                (run,),
            ).fetchall()
        return [
            ImageKey(image, occ, attempt, content or "") for image, occ, attempt, content in rows
        ]

    def attempts(self, run: str | None = None) -> list[Attempt]:
        """Every call recorded (in ``run``, or in all runs), oldest first."""
        with self._sql() as db:
            rows = db.execute(
                "SELECT a.run, a.image, a.occurrence, a.attempt, i.content, a.method, "
                "a.settings, a.started, a.result FROM attempts a LEFT JOIN images i "
                "ON i.run = a.run AND i.image = a.image WHERE ? IS NULL OR a.run = ? "
                "ORDER BY a.started",
                (run, run),
            ).fetchall()
        return [
            Attempt(run_, ImageKey(image, occ, attempt, content or ""), method,
                    json.loads(settings), started, None if result is None else json.loads(result))
            for run_, image, occ, attempt, content, method, settings, started, result in rows
        ]  # fmt: skip

    def tries(self) -> dict[str, Counter]:
        """Method -> the digest of an image's pixels -> its attempts in the whole journal,
        whatever the run (another seed is another run) or ``image_id``: keeping the best of
        an image's ``k`` attempts holds only at ``k * alpha``."""
        tries: dict[str, Counter] = {}
        for attempt in self.attempts():
            tries.setdefault(attempt.method, Counter())[_pixels(attempt.key)] += 1
        return tries

    def recertify(
        self,
        run: str,
        alpha: float,
        n0: int | None = None,
        n: int | None = None,
        *,
        decision: Decision | None = None,
    ) -> list[Recertified]:
        """CERTIFY again from the journal alone: another ``alpha``, fewer samples, or
        another question.

        One :class:`Recertified` per CERTIFY attempt of ``run``, each from the first ``n0``
        selection and ``n`` estimation answers of that attempt (its own ``n0`` and ``n`` by
        default, never more); no query is sent. Attempts whose answers stop short (a crash)
        are reported incomplete, without a certificate. As with any re-analysis, choosing
        ``alpha`` or ``n`` after looking at the results voids the guarantee, and so does
        keeping the best of an image's repeated attempts, in this run or any other of the
        journal (see :attr:`Recertified.attempts`).

        ``decision`` (:mod:`smoothapi.decisions`) certifies that question instead of the
        run's own, from the ranked answers kept (:class:`~smoothapi.errors.JournalError`
        for answers kept without them). A question other than the run's own is recorded
        as asked of each attempt (a write: it takes the journal's writer lock), so
        :attr:`Recertified.questions` counts every question asked of the same samples.
        """
        runs = self.runs()
        if run not in runs:
            known = ", ".join(key[:12] for key in runs) or "none"
            raise JournalError(f"no run {run!r} in the journal {self.path} (runs: {known})")
        sigma = runs[run]["sigma"]
        question, own = _question(decision, runs[run]), _question(None, runs[run])
        tried = [a for a in self.attempts(run) if a.method == "certify"]
        per_image = self.tries().get("certify", Counter())
        results = []
        for attempt in tried:
            want = (min(n0 or attempt.settings["n0"], attempt.settings["n0"]),
                    min(n or attempt.settings["n"], attempt.settings["n"]))  # fmt: skip
            phases = zip((SELECTION, ESTIMATION), want, strict=True)
            used = [self._decided(run, attempt.key, p, decision, k) for p, k in phases]
            answered = (len(used[0]), len(used[1]))
            certification = None
            if answered == want:
                certification = certify_counts(Counter(used[0]), Counter(used[1]), sigma, alpha)
            if question != own:
                self._asked(run, attempt.key, question)
            results.append(Recertified(attempt.key, *want, answered, certification,
                                       per_image[_pixels(attempt.key)],
                                       len(self._questions(run, attempt.key) | {own})))  # fmt: skip
        return results

    def _decided(
        self, run: str, key: ImageKey, phase: int, decision: Decision | None, count: int
    ) -> list[Label | None]:
        """The labels of the first ``count`` answers of a stream, as ``decision`` reads them
        (``None``: the labels the run counted)."""
        if decision is None:
            return [v for i, v in self.answers(run, key, phase).items() if i < count]
        kept = {i: r for i, r in self.ranked(run, key, phase).items() if i < count}
        if any(r is None for r in kept.values()):
            raise JournalError(
                f"the journal {self.path} kept only the counted label of some answers of run "
                f"{run[:12]} (written by a smoothapi before ranked answers were kept, or by an "
                "adapter that gives none): it can re-certify the run's own question only "
                "(no decision); certify again to ask another"
            )
        return [decision(r) for r in kept.values() if r is not None]

    def _asked(self, run: str, key: ImageKey, question: str) -> None:
        with self._sql(write=True) as db:
            db.execute("INSERT OR IGNORE INTO questions VALUES (?, ?, ?, ?, ?, ?)",
                       (run, key.digest, key.attempt, key.occurrence, question, time.time()))

    def _questions(self, run: str, key: ImageKey) -> set[str]:
        with self._sql() as db:
            rows = db.execute(
                "SELECT decision FROM questions WHERE run=? AND image=? AND attempt=? "
                "AND occurrence=?",
                (run, key.digest, key.attempt, key.occurrence),
            ).fetchall()
        return {row[0] for row in rows}

    def questions(self, run: str | None = None) -> dict[tuple[str, ImageKey], list[dict]]:
        """(run, image key) -> the questions certified from that attempt's answers besides
        the run's own (each a decision's identity), for every attempt asked more than one."""
        with self._sql() as db:
            rows = db.execute(
                "SELECT q.run, q.image, q.occurrence, q.attempt, i.content, q.decision "
                "FROM questions q LEFT JOIN images i ON i.run = q.run AND i.image = q.image "
                "WHERE ? IS NULL OR q.run = ? ORDER BY q.asked",
                (run, run),
            ).fetchall()
        asked: dict[tuple[str, ImageKey], list[dict]] = {}
        for run_, image, occ, attempt, content, decision in rows:
            key = ImageKey(image, occ, attempt, content or "")
            asked.setdefault((run_, key), []).append(json.loads(decision))
        return asked

    def _begin(self, run: str, key: ImageKey, method: str, settings: Mapping[str, Any]) -> int:
        """Bind the image's id to its pixels and record the attempt; how many other attempts
        of ``method`` these pixels have in the journal (any run, any id) if the attempt is new
        (0 for a rerun of it). Raises :class:`ImageMismatchError`."""
        with self._sql(write=True) as db:
            return _record_attempt(db, run, key, method, settings)

    def _finish(self, run: str, key: ImageKey, result: Mapping[str, Any]) -> None:
        with self._sql(write=True) as db:
            db.execute(
                "UPDATE attempts SET result=? WHERE run=? AND image=? AND attempt=? "
                "AND occurrence=?",
                (json.dumps(dict(result), default=str), run, key.digest, key.attempt,
                 key.occurrence),
            )  # fmt: skip


def _stream_rows(
    db: sqlite3.Connection, column: str, run: str, key: ImageKey, phase: int
) -> list[tuple[int, Any]]:
    """``(sample index, column)`` of each answer of one stream: one phase of one image key."""
    return db.execute(
        f"SELECT idx, {column} FROM samples WHERE run=? AND image=? AND attempt=? "
        "AND occurrence=? AND phase=?",
        (run, key.digest, key.attempt, key.occurrence, int(phase)),
    ).fetchall()


def _record_attempt(
    db: sqlite3.Connection, run: str, key: ImageKey, method: str, settings: Mapping[str, Any]
) -> int:
    """:meth:`Journal._begin` under the writer's lock, on ``db``."""
    pixels = _pixels(key)
    db.execute("INSERT OR IGNORE INTO images VALUES (?, ?, ?)", (run, key.digest, pixels))
    (stored,) = db.execute(
        "SELECT content FROM images WHERE run=? AND image=?", (run, key.digest)
    ).fetchone()
    if stored != pixels:
        raise ImageMismatchError(
            "this journal run holds answers for other pixels under the same image_id "
            f"(stored image digest {stored[:12]}..., given {pixels[:12]}...); "
            "give every image its own id, or use another journal"
        )
    inserted = db.execute(
        "INSERT OR IGNORE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        (run, key.digest, key.attempt, key.occurrence, method,
         json.dumps(dict(settings), sort_keys=True, default=str), time.time()),
    ).rowcount  # fmt: skip
    if not inserted:  # a rerun of this very attempt: it replays its own answers
        return 0
    (others,) = db.execute(  # by the pixels: in any run (seed), under any id
        "SELECT COUNT(*) FROM attempts a JOIN images i ON i.run = a.run AND i.image = a.image "
        "WHERE i.content=? AND a.method=? "
        "AND NOT (a.run=? AND a.image=? AND a.attempt=? AND a.occurrence=?)",
        (pixels, method, run, key.digest, key.attempt, key.occurrence),
    ).fetchone()
    return others


def _pixels(key: ImageKey) -> str:
    """The digest of an image's pixels (or its key's digest, for a key made without them)."""
    return key.content or key.digest


class JournalRun:
    """One run of a journal: records attempts and hands out the store of each stream."""

    def __init__(self, journal: Journal, key: str) -> None:
        self.journal, self.key = journal, key

    def stream(self, image: ImageKey, phase: Phase) -> JournalStream:
        """The answers of ``phase`` for one certification of one image."""
        return JournalStream(self.journal, self.key, image, phase)

    def begin(self, image: ImageKey, method: str, settings: Mapping[str, Any]) -> None:
        """Record an attempt before any of its answers: checks that an ``image_id`` names
        the same pixels as before (else :class:`~smoothapi.errors.ImageMismatchError`), and
        warns (:class:`RepeatedAttemptWarning`) when these pixels were tried before in the
        journal: in this run with other settings or the same ones (another occurrence), or
        in another run (another seed), or under another ``image_id``."""
        others = self.journal._begin(self.key, image, method, settings)
        if others:
            warnings.warn(
                f"image {_pixels(image)[:12]}... (known by its pixels) was tried before in this "
                f"journal ({method}: {others} other attempt(s), in this run or under another "
                "seed or image_id; Journal.attempts() lists them); this attempt draws fresh "
                "noise. Each attempt may be wrong with probability alpha: keeping the best of k "
                "attempts holds at k * alpha",
                RepeatedAttemptWarning,
                stacklevel=4,
            )

    def finish(self, image: ImageKey, result: Mapping[str, Any]) -> None:
        """Record an attempt's result (a summary: outcome, label, radius, samples)."""
        self.journal._finish(self.key, image, result)


class JournalStream:
    """The answer store of one stream: one phase of one image key in one run."""

    def __init__(self, journal: Journal, run: str, image: ImageKey, phase: Phase) -> None:
        self.journal, self.run, self.image, self.phase = journal, run, image, phase

    def answers(self) -> dict[int, Label | None]:
        """Sample index -> the answer already recorded."""
        return self.journal.answers(self.run, self.image, self.phase)

    def record(self, answers: Iterable[tuple[int, Label | None, float | None, Any]]) -> None:
        """Commit ``(sample index, label, score or None, ranked or None)`` answers in one
        transaction."""
        self.journal.record(self.run, self.image, self.phase, answers)
