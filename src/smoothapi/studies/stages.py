"""Stages that resume: a marker per finished stage, and a clock that survives kills.

A study is a sequence of named stages. :meth:`Stages.stage` runs one unless its marker
``OUT/stages/NAME.json`` exists (``@`` in a name becomes ``_at_`` in the file name), and
writes the marker when it finishes, with its wall time summed over every run
(:class:`StageClock`) and whatever the stage returned. Commit the markers (and the
``.running`` clock files) and a fresh clone resumes where the last machine stopped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InvalidInputError

__all__ = ["StageClock", "Stages"]


class StageClock:
    """A stage's wall time across kills and resumes: the seconds of earlier runs are kept
    in ``path`` (rewritten every ``every`` seconds while the stage runs, so a killed run
    loses at most that), added to this run's, and the file is removed when the stage
    finishes. Commit it with the stage markers and a fresh clone keeps counting."""

    def __init__(self, path: Path, every: float = 15.0) -> None:
        self.path, self.every = path, every
        earlier = json.loads(path.read_text()) if path.exists() else {}
        self.before, self.runs = float(earlier.get("seconds", 0.0)), earlier.get("runs", 0) + 1
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True, name="stage-clock")

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self._started

    def _write(self) -> None:
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps({"seconds": round(self.seconds(), 1), "runs": self.runs}))
        partial.replace(self.path)

    def _keep(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> StageClock:
        self._started = time.perf_counter()
        self._write()
        self._thread.start()
        return self

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._stop.set()
        self._thread.join()
        if kind is None:
            self.path.unlink(missing_ok=True)
        else:  # Ctrl-C or a failure: the next run adds on
            self._write()


class Stages:
    """The stages of one run in ``out``: run, skip when done, and time them."""

    #: Run only stages whose names contain one of these (``--only``); None: all of them.
    only: tuple[str, ...] | None = None
    #: How progress lines start.
    prefix = "[experiment]"

    def __init__(self, out: Path) -> None:
        self.out = out
        self.times: dict[str, float] = {}  # stage -> seconds, finished stages only
        self.ran: list[str] = []  # stages this run worked on (not found finished)
        self.left_out: list[str] = []  # unfinished stages that --only left for later

    def marker(self, name: str) -> Path:
        return self.out / "stages" / f"{name.replace('@', '_at_')}.json"

    def finished(self) -> list[Path]:
        """The markers of the stages finished in ``out`` (by any run)."""
        return sorted((self.out / "stages").glob("*.json"))

    def run(self) -> None:
        """Every stage in order, then the report (a study's own)."""
        raise NotImplementedError

    def require_fresh(self) -> None:
        """For a run from scratch: refuse an ``out`` that holds finished stages, which
        would be skipped (a run there resumes; a fresh one needs another folder)."""
        done = self.finished()
        if done:
            raise InvalidInputError(
                f"--fresh: {self.out} already holds {len(done)} finished stages, which a run "
                "there would skip; give a new --out folder to run the study from scratch"
            )

    def closing_line(self) -> str:
        """What this run did: the stages it worked on, or that every stage had finished
        before (only the report was rewritten) and how to rerun from scratch."""
        if self.ran:
            return f"{self.prefix} this run worked on {len(self.ran)} stages: {', '.join(self.ran)}"
        if self.left_out:
            return (f"{self.prefix} this run worked on no stage; --only left "
                    f"{', '.join(self.left_out)} for later (the report was rewritten)")
        return (f"{self.prefix} every stage in {self.out} had finished before this run (markers "
                f"in {self.out / 'stages'}): only the report was rewritten. To run the study "
                "from scratch, give a new --out folder (--fresh checks that it is one).")

    def stage(self, name: str, work: Callable[[], object],
              keep: bool = False) -> dict[str, Any] | None:  # fmt: skip
        """Run stage ``name`` unless its marker exists; returns the marker's record (the
        stage's seconds and, with ``keep``, the items of the dict ``work`` returned), or
        ``None`` for a stage left out by :attr:`only`."""
        marker = self.marker(name)
        if marker.exists():
            record: dict[str, Any] = json.loads(marker.read_text())
            # stages this one needed whose markers are not kept (see natural_photos)
            for needed, seconds in record.get("needed_seconds", {}).items():
                self.times.setdefault(needed, seconds)
            self.times[name] = record["seconds"]
            return record
        if self.only is not None and not any(part in name for part in self.only):
            self.left_out.append(name)
            return None
        print(f"{self.prefix} {name} ...", flush=True)
        self.ran.append(name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        with StageClock(marker.with_suffix(".running")) as clock:
            result = work()
        seconds = round(clock.seconds(), 1)
        record = {"stage": name, "seconds": seconds}
        if clock.runs > 1:  # killed and resumed: the seconds are every run's together
            record["runs"] = clock.runs
        if keep and isinstance(result, dict):
            record.update(result)
        marker.write_text(json.dumps(record))
        self.times[name] = seconds
        print(f"{self.prefix} {name} done in {seconds:.0f} s", flush=True)
        return record


S = TypeVar("S")


def pick_scale(scales: Mapping[str, S], name: str) -> S:
    """``scales[name]``, or :class:`InvalidInputError` naming the known scales."""
    if name not in scales:
        raise InvalidInputError(f"unknown scale {name!r}; known: {', '.join(scales)}")
    return scales[name]


def launch(make: Callable[[], Stages], out: Path, only: tuple[str, ...] | None,
           fresh: bool) -> Path:  # fmt: skip
    """Run (or resume) the stages ``make()`` builds in ``out``: ``fresh`` refuses a folder
    with finished stages first (before any data is loaded), ``only`` limits the stages run;
    prints the closing line and returns ``out``."""
    if fresh:
        Stages(out).require_fresh()
    run = make()
    run.only = only
    run.run()
    print(run.closing_line())
    return out
