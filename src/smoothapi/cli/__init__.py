"""The ``smoothapi`` command line, one module per command family.

- :mod:`~smoothapi.cli.main`: the parser, ``certify`` / ``predict`` on local models and
  ``analyze``; ``main`` is the ``smoothapi`` entry point;
- :mod:`~smoothapi.cli.api`: ``--api NAME``, the same commands against a vision API;
- :mod:`~smoothapi.cli.demo` and :mod:`~smoothapi.cli.photo_demo`: ``smoothapi demo``;
- :mod:`~smoothapi.cli.training`: ``train-classifier``, ``train-denoiser``, ``experiment``.

The library (``from smoothapi import ...``) never imports this package.
"""

from .main import ImageEntry, build_parser, find_images, main

__all__ = ["ImageEntry", "build_parser", "find_images", "main"]
