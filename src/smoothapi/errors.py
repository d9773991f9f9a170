"""The exceptions smoothapi raises.

Every error the package raises on purpose derives from :class:`SmoothAPIError`,
so ``except smoothapi.SmoothAPIError`` catches all of them::

    SmoothAPIError
    ├── InvalidInputError        (also a ValueError): bad image, sigma, alpha, n0, n ...
    ├── CheckpointError          a weights file that is missing, malformed or of the wrong kind
    └── MissingDependencyError   (also an ImportError): an optional extra is not installed

Errors never carry credentials: messages name the setting, not its value.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "InvalidInputError",
    "MissingDependencyError",
    "SmoothAPIError",
]

DISTRIBUTION = "smoothapi-certified"


class SmoothAPIError(Exception):
    """Base class of every error smoothapi raises on purpose."""


class InvalidInputError(SmoothAPIError, ValueError):
    """An argument or image that cannot be used (wrong type, shape, range or value)."""


class CheckpointError(SmoothAPIError):
    """A checkpoint that is missing, unreadable, or lacks the metadata to rebuild its model."""


class MissingDependencyError(SmoothAPIError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed; install it with: pip install '{DISTRIBUTION}[{extra}]'"
        )
