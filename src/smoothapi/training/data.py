"""Real datasets read from local files (nothing is downloaded).

Arrays: :func:`load_fashion_mnist` (IDX files), :func:`load_cifar10` (the python-version
pickled batches, read with a restricted unpickler), :func:`load_digits_images`
(scikit-learn's 8x8 digits). Torch datasets: :class:`ArrayDataset` over such arrays,
:func:`load_image_folder` for ``root/<class>/<image>`` trees, and :func:`load_dataset`
to get any of them by name.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import InvalidInputError, MissingDependencyError

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "ArrayDataset",
    "load_cifar10",
    "load_dataset",
    "load_digits_images",
    "load_fashion_mnist",
    "load_image_folder",
    "read_idx",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
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
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
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


# --- CIFAR-10 -------------------------------------------------------------------------

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR10_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def _numpy_core(module: str) -> Any:
    """numpy's private core sub-module (``numpy._core`` in 2.x, ``numpy.core`` in 1.x)."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{module}")


# What a pickled ndarray needs, under both numpy 1.x and 2.x module names, plus
# ``_codecs.encode``, which Python 3 protocol-2 pickles use to store ``bytes``.
_RECONSTRUCT = _numpy_core("multiarray")._reconstruct
_FROMBUFFER = _numpy_core("numeric")._frombuffer
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else.

    A pickle may call any importable global while it loads, so :meth:`find_class` hands out
    only the few that rebuild an ndarray; any other raises :class:`pickle.UnpicklingError`
    without being imported.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as exc:
        raise InvalidInputError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise InvalidInputError(f"{path} is not a CIFAR-10 python batch (no b'data'/b'labels')")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InvalidInputError(f"{path}: data is {data.dtype} {data.shape}, not uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise InvalidInputError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    # Each row is channel-major: 1024 red, 1024 green, 1024 blue values, each 32 rows of 32.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def load_cifar10(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``(images uint8 (N, 32, 32, 3), labels int64 (N,))`` from the python version.

    ``root`` is the folder holding ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``,
    or the folder above it containing ``cifar-10-batches-py``. ``"train"`` concatenates the
    five training batches in order. The pickles are read with a restricted unpickler that
    refuses every global except those that rebuild numpy arrays.
    """
    if split not in _CIFAR10_BATCHES:
        raise InvalidInputError(f"split must be one of {sorted(_CIFAR10_BATCHES)}, got {split!r}")
    folder = Path(root)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    names = _CIFAR10_BATCHES[split]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise InvalidInputError(
            f"CIFAR-10 cannot be downloaded here; put the python-version batches in {folder} "
            f"(missing: {', '.join(missing)}), e.g. by extracting cifar-10-python.tar.gz there"
        )
    parts = [_read_cifar_batch(folder / name) for name in names]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return images, np.concatenate([p[1] for p in parts])


# --- scikit-learn digits ----------------------------------------------------------------


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits: ``(images uint8 (N, 8, 8), labels int64 (N,))``.

    Pixel values 0..16 are scaled to 0..255. Needs scikit-learn (the ``dev`` extra).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError("scikit-learn", "dev") from None
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


# --- torch datasets ----------------------------------------------------------------------


class ArrayDataset(Dataset):
    """A torch Dataset over uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` and labels ``(N,)``.

    Item ``i`` is ``(float tensor (C, H, W) in [0, 1], int label)``; grey images get
    ``C = 1``. Images stay uint8 in memory and are converted one item at a time.
    ``classes``, if given, names the labels (as ``torchvision``'s ImageFolder does).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str] | None = None,
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise InvalidInputError(
                f"images must be uint8 (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise InvalidInputError(
                f"labels must have shape ({images.shape[0]},), got {labels.shape}"
            )
        if images.ndim == 3:
            images = images[..., None]
        self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        self.labels = labels.astype(np.int64)
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float() / 255.0, int(self.labels[index])


def load_image_folder(root: str | os.PathLike, image_size: int | None = None) -> Dataset:
    """An ImageNet-style ``root/<class>/<image>`` tree as a ``torchvision`` ImageFolder.

    Classes are the sub-folder names, sorted, indexed from 0 (``dataset.classes``). Items
    are ``(float tensor (3, H, W) in [0, 1], int label)``; images are converted to RGB. With
    ``image_size``, each is resized (shorter side) and center-cropped to that square size.
    """
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"image folder {root} does not exist")
    steps: list[Any] = []
    if image_size is not None:
        steps += [transforms.Resize(image_size, antialias=True), transforms.CenterCrop(image_size)]
    steps.append(transforms.ToTensor())
    try:
        return ImageFolder(root, transform=transforms.Compose(steps))
    except FileNotFoundError as exc:
        raise InvalidInputError(
            f"{root} holds no images in root/<class>/<image> layout: {exc}"
        ) from exc


DATASET_NAMES = ("cifar10", "digits", "fashion-mnist", "imagefolder")
_SPLITS = ("train", "test")


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None) -> Dataset:
    """A torch Dataset of ``(float tensor (C, H, W) in [0, 1], int label)`` by name.

    - ``"fashion-mnist"``: 1x28x28; ``root`` defaults to :data:`FASHION_MNIST_ROOT`.
    - ``"cifar10"``: 3x32x32; ``root`` is required (see :func:`load_cifar10`).
    - ``"digits"``: scikit-learn's 1x8x8 digits, a fixed 80/20 train/test split (a
      ``Subset`` whose ``indices`` are the same on every call); ``root`` is ignored.
    - ``"imagefolder"``: ``root/<split>`` if that folder exists, else ``root`` itself
      (see :func:`load_image_folder`); ``root`` is required.
    """
    if name not in DATASET_NAMES:
        raise InvalidInputError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    if split not in _SPLITS:
        raise InvalidInputError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    if name in ("cifar10", "imagefolder") and root is None:
        raise InvalidInputError(f"dataset {name!r} needs root= the folder holding it")
    if name == "fashion-mnist":
        return ArrayDataset(*load_fashion_mnist(split, root=root), classes=FASHION_MNIST_CLASSES)
    if name == "cifar10":
        assert root is not None  # checked above
        return ArrayDataset(*load_cifar10(root, split), classes=CIFAR10_CLASSES)
    if name == "digits":
        full = ArrayDataset(*load_digits_images(), classes=[str(d) for d in range(10)])
        order = np.random.default_rng(0).permutation(len(full))
        n_train = round(0.8 * len(full))
        indices = order[:n_train] if split == "train" else order[n_train:]
        return Subset(full, sorted(indices.tolist()))
    assert root is not None  # "imagefolder" needs root, checked above
    folder = Path(root) / split
    return load_image_folder(folder if folder.is_dir() else root)
