"""The ``smoothapi`` command line, one module per command family.

- :mod:`~smoothapi.cli.commands`: the parser, ``certify`` / ``predict`` on local models and
  ``analyze``;
- :mod:`~smoothapi.cli.api`: ``--api NAME``, the same commands against a vision API;
- :mod:`~smoothapi.cli.questions`: ``--decision SPEC`` (the question certified) and
  ``certify --from-journal``, a question asked offline of a journal's answers;
- :mod:`~smoothapi.cli.loopback`: ``smoothapi loopback``, every provider on 127.0.0.1;
- :mod:`~smoothapi.cli.demo` and :mod:`~smoothapi.cli.photo_demo`: ``smoothapi demo``;
- :mod:`~smoothapi.cli.training`: ``train-classifier``, ``train-denoiser``, ``experiment``.

The library (``from smoothapi import ...``) never imports this package. :func:`main`, the
``smoothapi`` entry point, imports the commands (torch, scipy ...) itself, so Ctrl-C in
the first seconds is one line and exit status 130, not a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

__all__ = ["ImageEntry", "build_parser", "find_images", "main"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``smoothapi`` with ``argv`` (default: the process's); returns the exit status."""
    try:
        from .commands import main as run
    except KeyboardInterrupt:  # Ctrl-C while the command starts (importing torch ...)
        print("smoothapi: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run(argv)


def __getattr__(name: str) -> Any:
    """``ImageEntry``, ``build_parser`` and ``find_images`` load the commands when used."""
    if name in ("ImageEntry", "build_parser", "find_images"):
        from . import commands

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .commands import ImageEntry, build_parser, find_images
