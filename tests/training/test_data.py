"""Fashion-MNIST's IDX reader, on generated files in that format."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from smoothapi import InvalidInputError
from smoothapi.training import load_fashion_mnist, read_idx


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_reads_generated_fashion_mnist_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    got_images, got_labels = load_fashion_mnist("test", root=tmp_path)
    assert np.array_equal(got_images, images)
    assert got_labels.tolist() == [3, 1, 4, 1, 5] and got_labels.dtype == np.int64


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(InvalidInputError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(InvalidInputError, match="split"):
        load_fashion_mnist("validation", root=tmp_path)


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(InvalidInputError, match="header says"):
        read_idx(path)
