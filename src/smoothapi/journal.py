"""A durable journal of base-classifier answers: no paid query is ever lost.

:meth:`Journal.run` opens one run of it; ``run.stream(image_key, phase)`` is the
answer store of one stream of samples, which the dispatcher reads before asking and
writes before counting.

Every answer is written (and committed) before it is counted, keyed by

* the **run**: a hash of what decides the noise and the answers — adapter identity,
  denoiser identity, sigma, seed and batch size;
* the **image**: the SHA-256 of its pixels, and which occurrence of that image in the
  run it is (the same image certified twice draws fresh noise the second time);
* the **phase** (selection, estimation, prediction, sequential, clean selection) and the
  **sample index**.

Running the same job again with the same seed regenerates the same noise, finds the
answers already paid for, and sends only what is missing, so a run killed at any
point (SIGKILL included) resumes with nothing re-sent, nothing lost, and the same
certificates. The journal holds labels and the provider's score for each (when the
adapter gives one), never credentials, and never image bytes.

SQLite in WAL mode; ``durability="full"`` (default) fsyncs every commit, so even a
power cut loses nothing committed; ``"normal"`` survives a killed process but may lose
the last commits on power loss, in exchange for speed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .certification import Certification, Label, certify_counts
from .errors import InvalidInputError
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
    """An SQLite file of answers; see the module docstring."""

    def __init__(self, path: str | os.PathLike, durability: str = "full") -> None:
        if durability not in ("full", "normal"):
            raise InvalidInputError(f"durability must be 'full' or 'normal', got {durability!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={durability.upper()}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_run(self, run: str, config: Mapping[str, Any]) -> None:
        """Register a run (idempotent): ``config`` is kept to show what the run was."""
        self._db.execute(
            "INSERT OR IGNORE INTO runs VALUES (?, ?, ?)",
            (run, json.dumps(config, sort_keys=True, default=str), time.time()),
        )

    def run(self, run: str, config: Mapping[str, Any]) -> JournalRun:
        """Register a run (idempotent) and return it: the answers of that run only."""
        self.start_run(run, config)
        return JournalRun(self, run)

    def runs(self) -> dict[str, dict[str, Any]]:
        """Run key -> its configuration."""
        return {
            run: json.loads(config)
            for run, config in self._db.execute("SELECT run, config FROM runs ORDER BY created")
        }

    def answers(self, run: str, image: str, occurrence: int, phase: int) -> dict[int, Label | None]:
        """Sample index -> recorded answer, for one phase of one image."""
        rows = self._db.execute(
            "SELECT idx, label FROM samples WHERE run=? AND image=? AND occurrence=? AND phase=?",
            (run, image, occurrence, int(phase)),
        )
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
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )

    def scores(self, run: str, image: str, occurrence: int, phase: int) -> dict[int, float | None]:
        """Sample index -> the score of the recorded label (``None`` where none was given)."""
        rows = self._db.execute(
            "SELECT idx, score FROM samples WHERE run=? AND image=? AND occurrence=? AND phase=?",
            (run, image, occurrence, int(phase)),
        )
        return dict(rows)

    def images(self, run: str) -> list[tuple[str, int]]:
        """The (image, occurrence) pairs with answers in ``run``."""
        return list(
            self._db.execute(
                "SELECT DISTINCT image, occurrence FROM samples WHERE run=? "
                "ORDER BY image, occurrence",
                (run,),
            )
        )

    def recertify(
        self, run: str, alpha: float, n0: int | None = None, n: int | None = None
    ) -> dict[tuple[str, int], Certification]:
        """CERTIFY again from the journal alone, with another ``alpha`` or fewer samples.

        Uses the first ``n0`` selection and ``n`` estimation answers of every image of
        ``run`` (all of them by default); no query is sent. As with any re-analysis,
        choosing ``alpha`` or ``n`` after looking at the results voids the guarantee.
        """
        sigma = self.runs()[run]["sigma"]
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
