"""A folder of image files, read once: the readable ones, and every unreadable one with why.

:func:`scan_images` walks a file or a folder the way the CLI lays out a dataset (images
directly in the folder have no label; images anywhere under a subfolder take its name as
their label, ImageFolder-style; hidden files and folders are skipped), decodes every
image file, and reports each one that cannot be read, broken symbolic links included,
instead of stopping at the first.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ._images import IMAGE_EXTENSIONS, load_image
from .errors import InvalidInputError

__all__ = ["ImageFile", "ImageScan", "Unreadable", "natural_key", "scan_images"]


@dataclass(frozen=True)
class ImageFile:
    """A readable image: its path, its name relative to the root, its label, its tensor shape."""

    path: Path
    name: str
    label: str | None
    shape: tuple[int, int, int]
    warnings: tuple[str, ...] = ()  # what reading it changed (alpha composited, one frame)


@dataclass(frozen=True)
class Unreadable:
    """An image file that cannot be certified, and the one-line reason."""

    path: Path
    name: str
    reason: str


@dataclass(frozen=True)
class ImageScan:
    """The outcome of :func:`scan_images`, both lists in natural order of ``name``."""

    readable: list[ImageFile] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)


def natural_key(text: str) -> tuple:
    """Sort ``2.png`` before ``10.png``; deterministic for any names."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)
    )


def _candidates(root: Path, extensions: frozenset[str]) -> list[tuple[Path, str, str | None]]:
    """``(path, name, label)`` of every non-hidden file or dangling link named like an image."""

    def named_like_image(path: Path) -> bool:
        is_file = path.is_file() or (path.is_symlink() and not path.exists())
        return is_file and path.suffix.lower() in extensions and not path.name.startswith(".")

    found: list[tuple[Path, str, str | None]] = [
        (p, p.name, None) for p in root.iterdir() if named_like_image(p)
    ]
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in folder.rglob("*"):
            relative = path.relative_to(root)
            if named_like_image(path) and not any(part.startswith(".") for part in relative.parts):
                found.append((path, relative.as_posix(), folder.name))
    return found


def _read(path: Path, name: str, label: str | None) -> ImageFile | Unreadable:
    if path.is_symlink() and not path.exists():
        return Unreadable(path, name, f"broken symbolic link to {os.readlink(path)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = load_image(path)
        except InvalidInputError as exc:
            return Unreadable(path, name, str(exc).splitlines()[0])
    notes = tuple(str(w.message) for w in caught)
    shape = cast(tuple[int, int, int], tuple(image.shape))  # load_image gives (C, H, W)
    return ImageFile(path, name, label, shape, notes)


def scan_images(
    root: str | os.PathLike, extensions: frozenset[str] = IMAGE_EXTENSIONS
) -> ImageScan:
    """Every image under ``root`` (a file or a folder), decoded once, split into readable
    and unreadable; raises :class:`InvalidInputError` only when ``root`` is missing or
    holds no file named like an image.

    Warnings raised while reading (see :class:`~smoothapi._images.ImageWarning`) are kept
    in :attr:`ImageFile.warnings` instead of being emitted, so that a caller reports them
    once, beside the image.
    """
    root = Path(root)
    if root.is_symlink() and not root.exists():
        raise InvalidInputError(f"images path is a broken symbolic link: {root}")
    if not root.exists():
        raise InvalidInputError(f"images path not found: {root}")
    candidates: list[tuple[Path, str, str | None]]
    if root.is_file():
        candidates = [(root, root.name, None)]
    elif root.is_dir():
        candidates = _candidates(root, extensions)
    else:
        raise InvalidInputError(f"images path is neither a file nor a folder: {root}")
    if not candidates:
        raise InvalidInputError(
            f"no images found in {root} (looked for {', '.join(sorted(extensions))})"
        )
    scan = ImageScan()
    for path, name, label in sorted(candidates, key=lambda c: natural_key(c[1])):
        outcome = _read(path, name, label)
        if isinstance(outcome, ImageFile):
            scan.readable.append(outcome)
        else:
            scan.unreadable.append(outcome)
    return scan
