"""Training: classifier architectures, datasets, and (soon) denoiser objectives and the loop."""

from .classifiers import create_classifier, list_classifiers, register_classifier
from .data import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx

__all__ = [
    "FASHION_MNIST_CLASSES",
    "create_classifier",
    "list_classifiers",
    "load_fashion_mnist",
    "read_idx",
    "register_classifier",
]
