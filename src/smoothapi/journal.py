"""A durable journal of base-classifier answers: no paid query is ever lost.

:meth:`Journal.run` opens one run of it; ``run.stream(image_key, phase)`` is the
answer store of one stream of samples, which the dispatcher reads before asking and
writes before counting.

Every answer is written (and committed) before it is counted, keyed by

* the **run**: a hash of what decides the noise and the answers — adapter identity
  (provider, model, options; not the host or port it is reached at, so a run resumes
  against another replica of the same model), denoiser identity, sigma, seed and batch size;
* the **image**: the SHA-256 of its pixels, and which occurrence of that image in the
  run it is (the same image certified twice draws fresh noise the second time);
* the **phase** (selection, estimation, prediction, sequential, clean selection) and the
  **sample index**.

Running the same job again with the same seed regenerates the same noise, finds the
answers already paid for, and sends only what is missing, so a run killed at any
point (SIGKILL included) resumes with nothing re-sent, nothing lost, and the same
certificates. The journal holds labels and the provider's score for each (when the
adapter gives one), never credentials, and never image bytes.

One process writes to a journal at a time (a lock file beside it names the holder), so
two runs never buy the same answer twice.

SQLite in WAL mode; ``durability="full"`` (default) fsyncs every commit, so even a
power cut loses nothing committed; ``"normal"`` survives a killed process but may lose
the last commits on power loss, in exchange for speed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .certification import Certification, Label, certify_counts
from .errors import InvalidInputError, JournalError, JournalLockedError, UsageError
from .sampling import ImageKey, Phase

__all__ = ["Journal", "JournalRun", "JournalStream"]

# The sampling phases by their old names (the journal stores them as integers).
SELECTION, ESTIMATION, PREDICTION = Phase.SELECTION, Phase.ESTIMATION, Phase.PREDICTION
SEQUENTIAL, CLEAN_SELECTION = Phase.SEQUENTIAL, Phase.CLEAN_SELECTION

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    run TEXT NOT NULL, image TEXT NOT NULL, occurrence INTEGER NOT NULL,
    phase INTEGER NOT NULL, idx INTEGER NOT NULL, label TEXT NOT NULL, score REAL,
    PRIMARY KEY (run, image, occurrence, phase, idx)
) WITHOUT ROWID;
"""


def _encode_label(label: Label | None) -> str:
    try:
        return json.dumps(label)
    except TypeError:
        raise InvalidInputError(
            f"the journal stores JSON labels (str, int, float, None); got {label!r}"
        ) from None


def _decode_label(text: str) -> Label | None:
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value


class Journal:
    """An SQLite file of answers; see the module docstring.

    A journal has one writing process at a time: the first write (registering a run)
    takes an exclusive lock on ``<path>.lock``, held until :meth:`close` or the process
    ends (a killed process releases it too). Another process that writes to it gets
    :class:`~smoothapi.errors.JournalLockedError` naming the holder (pid, host, since);
    reading (:meth:`runs`, :meth:`recertify`) needs no lock. A path that is a folder, cannot be
    written, or holds no SQLite database, and a damaged file, are
    :class:`~smoothapi.errors.JournalError`. One object may serve several threads.
    """

    def __init__(self, path: str | os.PathLike, durability: str = "full") -> None:
        if durability not in ("full", "normal"):
            raise InvalidInputError(f"durability must be 'full' or 'normal', got {durability!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise JournalError(f"the journal {self.path} is a folder; give a file in it, "
                               f"e.g. {self.path / 'journal.sqlite'}")  # fmt: skip
        self._lock = threading.RLock()
        self._writer: _WriterLock | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={durability.upper()}")
            self._db.executescript(_SCHEMA)
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
        """The connection, one thread at a time; SQLite's errors as JournalError."""
        with self._lock:
            if self._db is None:
                raise UsageError(f"the journal {self.path} is closed")
            try:
                if write and self._writer is None:
                    self._writer = _WriterLock.acquire(self.path)
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

    def answers(self, run: str, image: str, occurrence: int, phase: int) -> dict[int, Label | None]:
        """Sample index -> recorded answer, for one phase of one image."""
        with self._sql() as db:
            rows = db.execute(
                "SELECT idx, label FROM samples WHERE run=? AND image=? AND occurrence=? "
                "AND phase=?",
                (run, image, occurrence, int(phase)),
            ).fetchall()
        return {idx: _decode_label(label) for idx, label in rows}

    def record(
        self,
        run: str,
        image: str,
        occurrence: int,
        phase: int,
        answers: Iterable[tuple[int, Label | None, float | None]],
    ) -> None:
        """Commit answers ``(sample index, label, score or None)`` in one transaction."""
        rows = [
            (run, image, occurrence, int(phase), idx, _encode_label(label), score)
            for idx, label, score in answers
        ]
        with self._sql(write=True) as db, db:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def scores(self, run: str, image: str, occurrence: int, phase: int) -> dict[int, float | None]:
        """Sample index -> the score of the recorded label (``None`` where none was given)."""
        with self._sql() as db:
            return dict(
                db.execute(
                    "SELECT idx, score FROM samples WHERE run=? AND image=? AND occurrence=? "
                    "AND phase=?",
                    (run, image, occurrence, int(phase)),
                )
            )

    def images(self, run: str) -> list[tuple[str, int]]:
        """The (image, occurrence) pairs with answers in ``run``."""
        with self._sql() as db:
            return db.execute(
                "SELECT DISTINCT image, occurrence FROM samples WHERE run=? "
                "ORDER BY image, occurrence",
                (run,),
            ).fetchall()

    def recertify(
        self, run: str, alpha: float, n0: int | None = None, n: int | None = None
    ) -> dict[tuple[str, int], Certification]:
        """CERTIFY again from the journal alone, with another ``alpha`` or fewer samples.

        Uses the first ``n0`` selection and ``n`` estimation answers of every image of
        ``run`` (all of them by default); no query is sent. As with any re-analysis,
        choosing ``alpha`` or ``n`` after looking at the results voids the guarantee.
        """
        runs = self.runs()
        if run not in runs:
            known = ", ".join(key[:12] for key in runs) or "none"
            raise JournalError(f"no run {run!r} in the journal {self.path} (runs: {known})")
        sigma = runs[run]["sigma"]
        results = {}
        for image, occurrence in self.images(run):
            selection = self.answers(run, image, occurrence, SELECTION)
            estimation = self.answers(run, image, occurrence, ESTIMATION)
            if not selection or not estimation:
                continue
            results[image, occurrence] = certify_counts(
                Counter(label for i, label in selection.items() if n0 is None or i < n0),
                Counter(label for i, label in estimation.items() if n is None or i < n),
                sigma,
                alpha,
            )
        return results


class _WriterLock:
    """An exclusive lock on ``<journal>.lock`` (``flock``, or ``msvcrt`` on Windows), one per
    process and file, shared by the ``Journal`` objects of that process that write to it. The
    OS drops it when the process ends, however it ends. The file says who holds it."""

    _held: dict[Path, _WriterLock] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path, file: Any) -> None:
        self.path, self.file, self.users = path, file, 0

    @classmethod
    def acquire(cls, journal: Path) -> _WriterLock:
        path = journal.resolve().with_name(journal.name + ".lock")
        with cls._guard:
            lock = cls._held.get(path) or cls(path, cls._take(path, journal))
            cls._held[path] = lock
            lock.users += 1
            return lock

    @staticmethod
    def _take(path: Path, journal: Path) -> Any:
        file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (kept open while held)
        try:
            _lock(file)
        except OSError:
            file.seek(0)
            holder = _holder(file.read())
            file.close()
            who = ", ".join(f"{k} {v}" for k, v in holder.items()) or "holder unknown"
            raise JournalLockedError(
                f"the journal {journal} is being written by another process ({who}); a "
                "journal has one writer at a time: wait for it, or give this run another one",
                holder,
            ) from None
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}))
        file.flush()
        return file

    def release(self) -> None:
        with self._guard:
            self.users -= 1
            if self.users == 0:
                del self._held[self.path]
                self.file.close()  # closing the descriptor drops the lock


def _holder(text: str) -> dict[str, Any]:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _lock(file: Any) -> None:
    """Take an exclusive lock on ``file`` without waiting; OSError if another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class JournalRun:
    """One run of a journal: hands out the answer store of each stream of samples."""

    def __init__(self, journal: Journal, key: str) -> None:
        self.journal, self.key = journal, key

    def stream(self, image: ImageKey, phase: Phase) -> JournalStream:
        """The answers of ``phase`` for one certification of one image."""
        return JournalStream(self.journal, self.key, image, phase)


class JournalStream:
    """The answer store of one stream: one phase of one image key in one run."""

    def __init__(self, journal: Journal, run: str, image: ImageKey, phase: Phase) -> None:
        self.journal, self.run, self.image, self.phase = journal, run, image, phase

    def answers(self) -> dict[int, Label | None]:
        """Sample index -> the answer already recorded."""
        return self.journal.answers(self.run, self.image.digest, self.image.occurrence, self.phase)

    def record(self, answers: Iterable[tuple[int, Label | None, float | None]]) -> None:
        """Commit ``(sample index, label, score or None)`` answers in one transaction."""
        self.journal.record(self.run, self.image.digest, self.image.occurrence, self.phase, answers)
