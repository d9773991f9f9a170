"""The bundled demo: certify real Fashion-MNIST test images with a bundled noise-trained CNN.

The package ships ``small_cnn`` weights trained on Fashion-MNIST with Gaussian noise
augmentation at ``sigma = 0.25`` and 20 test images (two per class) in ImageFolder
layout. :func:`run_demo` (``smoothapi demo`` on the command line) certifies each of
them and prints one row per image. Both files are written by
``examples/train_demo_classifier.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import NamedTuple, TextIO

from .adapters.local import LocalModelAdapter
from .certification import ABSTAIN, Certification, Label, max_certifiable_radius
from .errors import CheckpointError, InvalidInputError
from .smoothing import SmoothedClassifier
from .training.data import FASHION_MNIST_CLASSES

__all__ = ["DemoRow", "demo_images", "demo_images_dir", "demo_model_path", "run_demo"]

_DATA = Path(__file__).resolve().parent / "data"
_MODEL = "fashion_mnist_small_cnn_sigma0.25.safetensors"
_IMAGES = "fashion-mnist-samples"
_HOW_TO_REBUILD = "rebuild it with: python examples/train_demo_classifier.py"


class DemoRow(NamedTuple):
    """One certified image: its path relative to :func:`demo_images_dir`, its class, the result."""

    image: str
    true_label: str
    certification: Certification
    seconds: float

    @property
    def correct(self) -> bool:
        return self.certification.label == self.true_label


def demo_model_path() -> Path:
    """The bundled classifier: ``small_cnn``, Fashion-MNIST, noise-trained at sigma 0.25."""
    path = _DATA / _MODEL
    if not path.is_file():
        raise CheckpointError(f"the bundled demo model is missing: {path}; {_HOW_TO_REBUILD}")
    return path


def demo_images_dir() -> Path:
    """The folder of bundled Fashion-MNIST test images, ``<class-name>/<test-index>.png``."""
    path = _DATA / _IMAGES
    if not path.is_dir():
        raise InvalidInputError(f"the bundled demo images are missing: {path}; {_HOW_TO_REBUILD}")
    return path


def _class_key(folder: Path) -> tuple[int, str]:
    name = folder.name
    order = FASHION_MNIST_CLASSES.index(name) if name in FASHION_MNIST_CLASSES else 99
    return order, name


def _index_key(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (-1, path.stem)


def demo_images() -> list[tuple[Path, str]]:
    """Every bundled image with its true class, in class order then test-index order."""
    root = demo_images_dir()
    found = [
        (path, folder.name)
        for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=_class_key)
        for path in sorted(folder.glob("*.png"), key=_index_key)
    ]
    if not found:
        raise InvalidInputError(f"no demo images in {root}; {_HOW_TO_REBUILD}")
    return found


def _label_text(label: Label) -> str:
    return "abstain" if label is ABSTAIN else str(label)


def run_demo(
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    sigma: float = 0.25,
    seed: int | None = 0,
    out: TextIO | None = None,
) -> list[DemoRow]:
    """Certify every bundled image with CERTIFY and print a table to ``out`` (default stdout).

    Returns the rows printed. Radii are l2 distances in the [0, 1] pixel space of the
    28x28 images, like ``sigma``.
    """
    from ._images import load_image

    out = sys.stdout if out is None else out
    images = demo_images()
    adapter = LocalModelAdapter.from_checkpoint(demo_model_path())
    smoothed = SmoothedClassifier(adapter, sigma, seed=seed, device="cpu")
    bound = max_certifiable_radius(n, alpha, sigma)

    def emit(line: str = "") -> None:
        print(line, file=out, flush=True)

    emit(f"smoothapi demo: randomized smoothing (Cohen et al. 2019) of a small CNN trained with "
         f"Gaussian noise on Fashion-MNIST; {len(images)} real test images.")
    emit(f"CERTIFY with sigma={sigma}, n0={n0}, n={n}, alpha={alpha}, seed={smoothed.seed}. "
         f"sigma and radii are l2 distances in [0,1] pixel space (28x28 grey images).")
    emit()
    header = f"{'image':<22} {'true label':<11} {'certified label':<16} {'radius':>7} " \
             f"{'queries':>8} {'time (s)':>9}"
    emit(header)
    emit("-" * len(header))
    rows: list[DemoRow] = []
    for path, true_label in images:
        started = time.perf_counter()
        cert = smoothed.certify(load_image(path), n0=n0, n=n, alpha=alpha)
        row = DemoRow(path.relative_to(demo_images_dir()).as_posix(), true_label, cert,
                      time.perf_counter() - started)
        rows.append(row)
        emit(f"{row.image:<22} {true_label:<11} {_label_text(cert.label):<16} "
             f"{cert.radius:>7.3f} {cert.queries:>8} {row.seconds:>9.2f}")
    emit("-" * len(header))
    correct = sum(r.correct for r in rows)
    mean_radius = sum(r.certification.radius for r in rows if r.correct) / len(rows)
    abstained = sum(r.certification.abstained for r in rows)
    emit(f"certified accuracy at radius 0: {correct}/{len(rows)} = {correct / len(rows):.2f} "
         f"(abstained on {abstained}); mean certified radius {mean_radius:.3f} "
         f"(0 where wrong or abstained)")
    emit(f"max certifiable radius with n={n}, alpha={alpha}: {bound:.3f} "
         f"(reached when all n noisy samples agree)")
    return rows
