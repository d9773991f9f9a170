"""Training: datasets, objectives and the loop; re-exports the architectures. The studies
built on it live in :mod:`smoothapi.studies`, their commands in :mod:`smoothapi.cli`."""

from ..classifiers import create_classifier, list_classifiers, register_classifier
from .data import (
    CIFAR10_CLASSES,
    DATASET_NAMES,
    FASHION_MNIST_CLASSES,
    ArrayDataset,
    load_cifar10,
    load_dataset,
    load_digits_images,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "ArrayDataset",
    "create_classifier",
    "list_classifiers",
    "load_cifar10",
    "load_dataset",
    "load_digits_images",
    "load_fashion_mnist",
    "load_image_folder",
    "read_idx",
    "register_classifier",
]
