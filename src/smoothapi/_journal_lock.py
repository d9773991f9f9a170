"""A journal's one writer: the OS lock on the journal file, and the check that it is still there.

:func:`take_writer` takes the lock (:class:`WriterLock`) for a :class:`~smoothapi.journal.Journal`
before its first write and names this process in the journal as the holder, or raises
:class:`~smoothapi.errors.JournalLockedError` naming the other one; :func:`check_file` stops a
writer whose journal file was deleted or replaced under it (:func:`identity`).
"""

from __future__ import annotations

import datetime
import os
import socket
import sqlite3
import threading
from pathlib import Path

from .errors import JournalError, JournalLockedError


def take_writer(db: sqlite3.Connection, path: Path, file: tuple[int, int]) -> WriterLock:
    """The writer's lock of the journal at ``path`` (the file ``file``: its :func:`identity`);
    the journal ``db`` then names this process as the holder."""
    try:
        lock, taken = WriterLock.acquire(path, file)
    except BlockingIOError:  # held by another process
        row = db.execute("SELECT pid, host, since FROM writer").fetchone()
        holder = dict(zip(("pid", "host", "since"), row or (), strict=False))
        who = ", ".join(f"{k} {v}" for k, v in holder.items()) or "holder unknown"
        raise JournalLockedError(
            f"the journal {path} is being written by another process ({who}); a "
            "journal has one writer at a time: wait for it, or give this run another one",
            holder,
        ) from None
    if taken:
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        db.execute("INSERT OR REPLACE INTO writer VALUES (1, ?, ?, ?)",
                   (os.getpid(), socket.gethostname(), since))  # fmt: skip
    return lock


def check_file(path: Path, file: tuple[int, int]) -> None:
    """Refuse to write once the journal's file (``file``: the :func:`identity` it had when it
    was opened) was deleted or replaced under ``path``: SQLite would go on writing to a file
    that no rerun finds."""
    try:
        same: bool | None = identity(path) == file
    except FileNotFoundError:
        same = None
    if not same:
        what = "deleted" if same is None else "replaced by another file"
        raise JournalError(
            f"the journal {path} was {what} while this process was writing to it: "
            "its answers are gone with it and no more can be kept, so the run stopped "
            "(restore the file to resume, or start again with a new journal)"
        )


class WriterLock:
    """An exclusive ``flock`` on the journal file itself, one per process and file, shared by
    the ``Journal`` objects of that process that write to it. The OS drops it when the process
    ends, however it ends, and no file can be deleted to get around it but the journal itself
    (which stops its writer: :func:`check_file`). On Windows, ``msvcrt`` locks
    ``<journal>.lock``, which cannot be deleted while it is open.

    The descriptor stays open while the process lives, unlocked when no ``Journal`` writes:
    closing a descriptor of an SQLite file would drop the POSIX locks that SQLite's own
    connections hold on it in this process."""

    _held: dict[tuple[int, ...], WriterLock] = {}
    _files: dict[tuple[int, ...], int] = {}
    _guard = threading.Lock()

    def __init__(self, key: tuple[int, ...], fd: int) -> None:
        self.key, self.fd, self.users = key, fd, 0

    @classmethod
    def acquire(cls, journal: Path, identity: tuple[int, int]) -> tuple[WriterLock, bool]:
        """The lock of the journal file ``identity`` (device, inode), and whether this call
        took it from the OS; BlockingIOError if another process holds it."""
        key = (os.getpid(), *identity)  # a forked child does not hold its parent's lock
        with cls._guard:
            lock = cls._held.get(key)
            if lock is None:
                if key not in cls._files:
                    cls._files[key] = _lock_file(journal)
                _lock(cls._files[key], True)
                lock = cls._held[key] = cls(key, cls._files[key])
            lock.users += 1
            return lock, lock.users == 1

    def release(self) -> None:
        with self._guard:
            self.users -= 1
            if self.users == 0:
                del self._held[self.key]
                _lock(self.fd, False)  # the descriptor stays open: see the class docstring


def identity(path: Path) -> tuple[int, int]:
    """Which file ``path`` is: its device and inode."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _lock_file(journal: Path) -> int:
    """A descriptor to lock: of the journal itself, or on Windows (where a lock on it would
    block SQLite's own reads) of ``<journal>.lock``, which cannot be deleted while open."""
    if os.name == "nt":
        return os.open(journal.with_name(journal.name + ".lock"), os.O_RDWR | os.O_CREAT)
    return os.open(journal, os.O_RDWR)


def _lock(fd: int, take: bool) -> None:
    """Take an exclusive lock on ``fd`` without waiting (BlockingIOError if another process
    holds it), or drop it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK if take else msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]  # Windows-only stubs
        except OSError as exc:
            raise BlockingIOError(exc.errno, exc.strerror) from exc
        return
    fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if take else fcntl.LOCK_UN)
