"""The dataset readers, on generated files in each official format."""

from __future__ import annotations

import gzip
import os
import pickle
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from smoothapi import InvalidInputError
from smoothapi.training import (
    CIFAR10_CLASSES,
    ArrayDataset,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
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


# --- CIFAR-10 --------------------------------------------------------------------------


def _cifar_batch(rng, n: int, first_label: int) -> tuple[np.ndarray, list[int]]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return data, [(first_label + i) % 10 for i in range(n)]


def _write_cifar(folder, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    """Write batches exactly as the official python version does (bytes keys, uint8 data)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * len(labels),
                },
                f,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {
                b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                b"num_cases_per_batch": 10000,
                b"num_vis": 3072,
            },
            f,
        )


@pytest.fixture
def cifar_root(tmp_path):
    rng = np.random.default_rng(1)
    batches = {f"data_batch_{i}": _cifar_batch(rng, 3, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(rng, 4, 7)
    _write_cifar(tmp_path / "cifar-10-batches-py", batches)
    return tmp_path, batches


def test_cifar10_pixels_come_out_hwc_from_channel_major_rows(cifar_root):
    root, batches = cifar_root
    images, labels = load_cifar10(root, "test")
    data, expected_labels = batches["test_batch"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == expected_labels
    # Pixel (row 5, column 7) of image 2: red at 5*32+7, green 1024 later, blue 2048 later.
    offset = 5 * 32 + 7
    assert images[2, 5, 7].tolist() == [
        data[2, offset],
        data[2, 1024 + offset],
        data[2, 2048 + offset],
    ]
    assert np.array_equal(images[:, :, :, 1].reshape(4, 1024), data[:, 1024:2048])


def test_cifar10_train_concatenates_the_five_batches_in_order(cifar_root):
    root, batches = cifar_root
    # The batch folder itself works as root too.
    images, labels = load_cifar10(root / "cifar-10-batches-py", split="train")
    assert images.shape == (15, 32, 32, 3)
    expected = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    assert labels.tolist() == [label for _, batch_labels in expected for label in batch_labels]
    for i, (data, _) in enumerate(expected):
        rows = images[3 * i : 3 * i + 3].transpose(0, 3, 1, 2).reshape(3, 3072)
        assert np.array_equal(rows, data)


def test_cifar10_missing_batches_say_where_to_put_them(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot be downloaded.*data_batch_1"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(InvalidInputError, match="split"):
        load_cifar10(tmp_path, "validation")


class _Payload:
    """Stands for any class a hostile pickle might reference."""

    def __init__(self, path) -> None:
        self.path = path

    def __setstate__(self, state) -> None:  # would run if the class were ever rebuilt
        open(state["path"], "w").close()


class _RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("kind", ["os.system", "custom class"])
def test_cifar10_refuses_pickles_that_reference_other_globals(tmp_path, kind):
    marker = tmp_path / "executed"
    payload = (
        _RunsACommand(f"touch {shlex.quote(str(marker))}")
        if kind == "os.system"
        else _Payload(str(marker))
    )
    folder = tmp_path / "cifar"
    _write_cifar(folder, {"test_batch": _cifar_batch(np.random.default_rng(0), 2, 0)})
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": payload, b"labels": [0]}, f)
    with pytest.raises(InvalidInputError, match="refusing to load global") as info:
        load_cifar10(folder, "test")
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_cifar10_rejects_data_of_the_wrong_shape(tmp_path):
    _write_cifar(tmp_path, {"test_batch": (np.zeros((2, 100), np.uint8), [0, 1])})
    with pytest.raises(InvalidInputError, match="3072"):
        load_cifar10(tmp_path, "test")


# --- image folders, arrays, datasets by name -------------------------------------------


def test_image_folder_loads_generated_pngs(tmp_path):
    colours = {"cat": (255, 0, 0), "ant": (0, 0, 255), "dog": (0, 255, 0)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 12), colour).save(tmp_path / name / f"{i}.png")
    Image.new("L", (20, 12), 51).save(tmp_path / "dog" / "grey.png")
    dataset = load_image_folder(tmp_path)
    assert dataset.classes == ["ant", "cat", "dog"] and len(dataset) == 7
    for path, label in dataset.samples:
        assert dataset.classes[label] == os.path.basename(os.path.dirname(path))
    image, label = dataset[0]  # ant/0.png
    assert label == 0 and image.dtype == torch.float32 and image.shape == (3, 12, 20)
    assert torch.allclose(image[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    grey, label = dataset[[os.path.basename(p) for p, _ in dataset.samples].index("grey.png")]
    assert label == 2 and grey.shape == (3, 12, 20)
    assert torch.allclose(grey, torch.full_like(grey, 0.2))
    resized, _ = load_image_folder(tmp_path, image_size=8)[3]
    assert resized.shape == (3, 8, 8) and resized.min() >= 0.0 and resized.max() <= 1.0


def test_image_folder_errors_are_clear(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="no images"):
        load_image_folder(tmp_path)


def test_array_dataset_gives_chw_floats_for_grey_and_rgb():
    grey = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    x, y = ArrayDataset(grey, [3, 9])[1]
    assert x.shape == (1, 4, 5) and x.dtype == torch.float32 and y == 9
    assert x[0, 0, 0].item() == pytest.approx(20 / 255)
    rgb = np.zeros((3, 4, 5, 3), dtype=np.uint8)
    rgb[2, 1, 2] = (255, 51, 0)
    x, y = ArrayDataset(rgb, np.array([0, 1, 2]))[2]
    assert x.shape == (3, 4, 5) and isinstance(y, int)
    assert x[:, 1, 2].tolist() == pytest.approx([1.0, 0.2, 0.0])
    with pytest.raises(InvalidInputError, match="uint8"):
        ArrayDataset(rgb.astype(np.float32), [0, 1, 2])
    with pytest.raises(InvalidInputError, match="labels"):
        ArrayDataset(rgb, [0, 1])


def test_digits_split_is_disjoint_deterministic_and_complete():
    pytest.importorskip("sklearn")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert set(train.indices).isdisjoint(test.indices)
    assert set(train.indices) | set(test.indices) == set(range(1797))
    assert load_dataset("digits", "test").indices == test.indices
    image, label = test[0]
    assert image.shape == (1, 8, 8) and 0 <= label < 10 and image.max() <= 1.0
    assert image.max() > 0.5  # scaled from 0..16, not left dim


def test_load_dataset_by_name(cifar_root):
    root, batches = cifar_root
    cifar = load_dataset("cifar10", "test", root=root)
    image, label = cifar[1]
    assert len(cifar) == 4 and image.shape == (3, 32, 32) and label == batches["test_batch"][1][1]
    assert cifar.classes[0] == "airplane"
    for split in ("train", "test"):
        (root / "images" / split / "only").mkdir(parents=True)
        Image.new("RGB", (6, 6)).save(root / "images" / split / "only" / "a.png")
    Image.new("RGB", (6, 6)).save(root / "images" / "train" / "only" / "b.png")
    assert len(load_dataset("imagefolder", "train", root=root / "images")) == 2
    assert len(load_dataset("imagefolder", "test", root=root / "images")) == 1


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match="known: .*cifar10.*digits.*fashion-mnist"):
        load_dataset("imagenet-21k", "train")
    with pytest.raises(InvalidInputError, match="root"):
        load_dataset("cifar10", "train")
