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
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TextIO

from .._images import load_image
from ..adapters.http import HTTPAdapter
from ..adapters.local import LocalModelAdapter
from ..certification import ABSTAIN, Certification, Label, max_certifiable_radius
from ..denoisers import load_denoiser
from ..dispatch import RateLimits
from ..errors import CheckpointError, InvalidInputError
from ..smoothing import SmoothedClassifier
from ..testing import LoopbackProvider
from ..training.data import FASHION_MNIST_CLASSES

__all__ = [
    "DemoRow",
    "demo_images",
    "demo_images_dir",
    "demo_model_path",
    "run_demo",
    "run_denoised_demo",
    "shipped_path",
]

_DATA = Path(__file__).resolve().parents[1] / "data"
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


# --- denoised smoothing: the study's target classifier and denoisers --------------------

_TARGET = "fashion_mnist_target_small_cnn.safetensors"
_DENOISERS = {
    "full": "fashion_mnist_dncnn_sigma0.25_stab+mse_full.safetensors",
    "query": "fashion_mnist_dncnn_sigma0.25_stab+mse_query.safetensors",
}
_HOW_TO_SHIP = "rebuild it with: smoothapi experiment fashion-mnist, then copy it here"


def shipped_path(name: str) -> Path:
    """A shipped weights file: ``"target"``, or the ``"full"`` / ``"query"`` access denoiser."""
    path = _DATA / (_TARGET if name == "target" else _DENOISERS[name])
    if not path.is_file():
        raise CheckpointError(f"the shipped weights are missing: {path}; {_HOW_TO_SHIP}")
    return path


def run_denoised_demo(
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int | None = 0,
    out: TextIO | None = None,
) -> dict[str, list[Certification]]:
    """Denoised smoothing of a standard (not noise-trained) classifier, three ways.

    Every bundled image is certified at sigma = 0.25 (the shipped denoisers' sigma)
    with the target classifier alone, with the full-access denoiser (trained through
    the target) on the local model, and with the query-access denoiser (trained through
    surrogates only) in front of the same target served as a vision API over HTTP on
    127.0.0.1. Prints them side by side and returns the certificates per column.
    """
    out = sys.stdout if out is None else out
    sigma = 0.25
    images = demo_images()
    target = LocalModelAdapter.from_checkpoint(shipped_path("target"), device="cpu")
    full, query = load_denoiser(shipped_path("full")), load_denoiser(shipped_path("query"))

    def emit(line: str = "") -> None:
        print(line, file=out, flush=True)

    emit("smoothapi demo: denoised smoothing (Salman et al. 2020) of a small CNN trained the "
         f"standard way (no noise) on Fashion-MNIST; {len(images)} real test images.")
    emit(f"CERTIFY at sigma={sigma}, n0={n0}, n={n}, alpha={alpha}, seed={seed}; radii are l2 "
         "distances in [0,1] pixel space (largest possible "
         f"{max_certifiable_radius(n, alpha, sigma):.3f}). The query-access column sends every "
         "noisy, denoised image as PNG to the same classifier behind a loopback HTTP API.")
    emit()
    with LoopbackProvider(target) as api:
        http = HTTPAdapter(api.url("generic-batch"), send="json", field="images", max_batch=16,
                           batch_path="results")
        classifiers = {
            "no denoiser": SmoothedClassifier(target, sigma, seed=seed, device="cpu"),
            "full access": SmoothedClassifier(target, sigma, full, seed=seed, device="cpu"),
            "query access (API)": SmoothedClassifier(http, sigma, query, seed=seed,
                                                     device="cpu",
                                                     limits=RateLimits(max_in_flight=8)),
        }
        columns = _side_by_side(classifiers, images, n0, n, alpha, emit)
        for smoothed in classifiers.values():
            smoothed.close()
    return columns


def _side_by_side(
    classifiers: dict[str, SmoothedClassifier],
    images: list[tuple[Path, str]],
    n0: int,
    n: int,
    alpha: float,
    emit: Callable[..., None],
) -> dict[str, list[Certification]]:
    """Certify every image with every classifier; one row per image, then the totals."""
    columns: dict[str, list[Certification]] = {name: [] for name in classifiers}
    seconds = dict.fromkeys(columns, 0.0)
    queries = dict.fromkeys(columns, 0)
    header = f"{'image':<18} {'true':<11}" + "".join(f"{name:>24}" for name in columns)
    emit(header)
    emit("-" * len(header))
    for path, true_label in images:
        image = load_image(path)
        cells = []
        for name, smoothed in classifiers.items():
            started = time.perf_counter()
            cert = smoothed.certify(image, n0=n0, n=n, alpha=alpha)
            seconds[name] += time.perf_counter() - started
            queries[name] += cert.queries
            columns[name].append(cert)
            mark = "" if cert.abstained or cert.label == true_label else "*"
            cells.append(f"{_label_text(cert.label) + mark:>16} {cert.radius:>7.3f}")
        relative = path.relative_to(demo_images_dir()).as_posix()
        emit(f"{relative:<18} {true_label:<11}" + "".join(cells))
    emit("-" * len(header))
    truth = [label for _, label in images]

    def accuracy(certs: list[Certification], radius: float) -> float:
        hits = sum(c.label == t and c.radius >= radius for c, t in zip(certs, truth, strict=True))
        return hits / len(truth)

    for radius in (0.0, 0.25, 0.5):
        emit(f"{f'certified accuracy at r={radius}':<30}"
             + "".join(f"{accuracy(certs, radius):>24.2f}" for certs in columns.values()))
    emit(f"{'queries':<30}" + "".join(f"{queries[name]:>24,}" for name in columns))
    emit(f"{'time (s)':<30}" + "".join(f"{seconds[name]:>24.1f}" for name in columns))
    emit("(* certified a wrong label: the certificate is about the smoothed classifier, "
         "not the truth)")
    return columns
