"""Carry a study's unfinished certifications across machines: gzipped journal snapshots.

A certification stage journals every answer, so a killed stage resumes where it stopped
on the same machine. Journals are large and change while a stage runs, so they are not
committed; a stage that must continue elsewhere (a new session, a fresh clone) is
carried by a **snapshot**: a consistent copy of its journal, taken with SQLite's backup
API while the writer may still be running, gzipped into ``OUT/snapshots`` (which is
committed). When a stage starts and its journal is missing, :func:`restore` unpacks the
snapshot first, so the stage resumes instead of starting over. Snapshots of finished
stages are removed: their logs are the result.
"""

from __future__ import annotations

import gzip
import shutil
import sqlite3
from pathlib import Path

__all__ = ["restore", "snapshot_journals"]


def _snapshot_path(journal: Path) -> Path:
    return journal.parent.parent / "snapshots" / f"{journal.name}.gz"


def snapshot_journals(out: Path) -> list[Path]:
    """Snapshot every unfinished certification's journal (``OUT/journals/METHOD@SIGMA``) and
    delete the snapshots of finished ones; returns those written. A certification has
    finished when its log ``OUT/logs/METHOD@SIGMA.tsv`` exists (the stage writes the log as
    ``.part`` and renames it only once every image is certified)."""
    finished = {log.stem for log in (out / "logs").glob("*.tsv")}
    written = []
    folder = out / "snapshots"
    for old in folder.glob("*.sqlite.gz") if folder.exists() else []:
        if old.name.removesuffix(".sqlite.gz") in finished:
            old.unlink()
    for journal in sorted((out / "journals").glob("*.sqlite")):
        if journal.stem in finished:
            continue
        target = _snapshot_path(journal)
        target.parent.mkdir(parents=True, exist_ok=True)
        copy = target.with_suffix(".tmp")  # X.sqlite.tmp: the plain copy before gzip
        source = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            with sqlite3.connect(copy) as dest:
                source.backup(dest)
            dest.close()
        finally:
            source.close()
        with open(copy, "rb") as plain, gzip.open(target, "wb", compresslevel=9) as packed:
            shutil.copyfileobj(plain, packed)
        copy.unlink()
        written.append(target)
    return written


def restore(journal: Path) -> bool:
    """Unpack ``journal``'s snapshot if the journal itself is missing; True if it did."""
    packed = _snapshot_path(journal)
    if journal.exists() or not packed.exists():
        return False
    journal.parent.mkdir(parents=True, exist_ok=True)
    partial = journal.with_suffix(".restoring")
    with gzip.open(packed, "rb") as source, open(partial, "wb") as plain:
        shutil.copyfileobj(source, plain)
    partial.rename(journal)
    return True
