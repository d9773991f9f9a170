"""Real datasets read from local files (nothing is downloaded)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_ROOT", "load_fashion_mnist", "read_idx"]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InvalidInputError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise InvalidInputError(f"{path}: header says {shape}, body has {body.size} bytes")
    return body.reshape(shape)


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``(images uint8 (N, 28, 28), labels int64 (N,))`` from its IDX files.

    ``root`` defaults to where Debian's ``dataset-fashion-mnist`` package puts them.
    """
    if split not in _FILES:
        raise InvalidInputError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_ROOT
    image_file, label_file = (root / name for name in _FILES[split])
    if not image_file.exists() or not label_file.exists():
        raise InvalidInputError(
            f"Fashion-MNIST not found in {root}. Install it with "
            "`sudo apt-get install -y dataset-fashion-mnist`, or pass root= a folder "
            f"holding {_FILES[split][0]} and {_FILES[split][1]}"
        )
    images, labels = read_idx(image_file), read_idx(label_file).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise InvalidInputError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels
