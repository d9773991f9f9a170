"""The paper's study end to end: classifiers, denoisers, certification, report.

``smoothapi experiment fashion-mnist --out results/fashion-mnist`` runs, in order:

1. **classifiers**: the target (standard training), surrogates of other architectures
   (standard), and a white-box baseline per sigma (Gaussian noise augmentation);
2. **denoisers** per sigma: MSE; STAB+MSE in full access (through the target);
   STAB+MSE in query access (through the surrogates only, averaged); at sigma 0.25
   also STAB from scratch and CLF+MSE (both full access) and STAB+MSE in query access
   with the surrogates taken in turn per batch (``-rr``, as the authors' code);
3. **certification** (CERTIFY, ``n0``, ``n``, ``alpha``) of every ``skip``-th test
   image with no denoiser, each denoiser, and the white-box classifier;
4. **report**: the paper's table (best sigma per radius), per-sigma tables,
   certified-accuracy curves, denoising examples, ``summary.json`` and stage times.

The machinery is shared with the other studies (:mod:`~smoothapi.studies.study`).
Each stage writes its outputs and a marker under ``OUT/stages/`` (with its wall time,
summed over every run when it was killed and resumed); a rerun skips the finished
ones, so the study can run across several invocations or in the background.
``--scale`` picks a configuration: ``small`` (this machine: 2 CPU cores, about three
hours), ``tiny`` (scikit-learn digits, a minute, for tests) or ``paper`` (the paper's
hyperparameters for CIFAR-10 on GPUs: DnCNN, 90 MSE epochs with Adam 1e-3, 20 STAB+MSE
epochs, n = 10,000; it needs ``--data-root`` with the CIFAR-10 python batches).
"""


from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Subset

from ..classifiers import create_classifier
from ..errors import InvalidInputError
from ..training.data import load_dataset
from ..training.train import train_classifier
from .stages import Stages
from .study import Study, dataset_size

__all__ = ["SCALES", "FashionStudy", "Scale", "run_experiment"]


@dataclass(frozen=True)
class Scale:
    """Everything that sizes the study."""

    dataset: str
    sigmas: tuple[float, ...]
    target: tuple[str, dict]
    surrogates: dict[str, tuple[str, dict]]
    denoiser: tuple[str, dict]
    classifier_epochs: int
    mse_epochs: int
    stab_epochs: int
    scratch_epochs: int
    train_subset: int | None
    certify_images: int
    certify_skip: int
    n0: int = 100
    n: int = 1_000
    alpha: float = 0.001
    batch_size: int = 128
    classifier_lr: float = 2e-3
    mse_lr: float = 1e-3
    stab_lr: float = 1e-4
    extras_sigma: float = 0.25
    eval_size: int = 1_000
    notes: list[str] = field(default_factory=list)


SCALES: dict[str, Scale] = {
    "small": Scale(
        dataset="fashion-mnist",
        sigmas=(0.12, 0.25, 0.5),
        target=("small_cnn", {"width": 32}),
        surrogates={
            "lenet": ("lenet", {}),
            "mobilenet": ("mobilenet_small", {}),
            "vgg": ("vgg_small", {"width": 16}),
        },
        denoiser=("dncnn", {"depth": 6, "width": 32}),
        classifier_epochs=3,
        mse_epochs=3,
        stab_epochs=2,
        scratch_epochs=4,
        train_subset=30_000,
        certify_images=200,
        certify_skip=50,
    ),
    "tiny": Scale(
        dataset="digits",
        sigmas=(0.25,),
        target=("small_cnn", {"width": 8}),
        surrogates={"mlp": ("mlp", {"input_size": 8, "hidden": [32]})},
        denoiser=("dncnn", {"depth": 3, "width": 8}),
        classifier_epochs=1,
        mse_epochs=1,
        stab_epochs=1,
        scratch_epochs=1,
        train_subset=None,
        certify_images=4,
        certify_skip=10,
        n0=10,
        n=50,
        alpha=0.01,
        classifier_lr=3e-3,
        mse_lr=3e-3,
        stab_lr=1e-3,
        eval_size=100,
    ),
    "paper": Scale(
        dataset="cifar10",
        sigmas=(0.12, 0.25, 0.5, 1.0),
        target=("resnet_small", {"blocks_per_stage": 3, "width": 32}),
        surrogates={
            "vgg": ("vgg_small", {"width": 64}),
            "mobilenet": ("mobilenet_small", {"width": 64}),
            "lenet": ("lenet", {}),
        },
        denoiser=("dncnn", {"depth": 17, "width": 64}),
        classifier_epochs=90,
        mse_epochs=90,
        stab_epochs=20,
        scratch_epochs=600,
        train_subset=None,
        certify_images=500,
        certify_skip=20,
        n=10_000,
        batch_size=128,
        classifier_lr=1e-3,
        mse_lr=1e-3,
        stab_lr=1e-5,
        eval_size=2_000,
    ),
}


class FashionStudy(Study[Scale]):
    """The study on a small dataset (Fashion-MNIST; digits for tests; CIFAR-10 at the
    paper's scale): it trains its own target, surrogates and white-box classifiers."""

    def __init__(self, scale: Scale, out: Path, data_root: str | None, device: str | None):
        super().__init__(scale, out, device)
        self.train = load_dataset(scale.dataset, "train", data_root)
        self.test = load_dataset(scale.dataset, "test", data_root)
        if scale.train_subset and dataset_size(self.train) > scale.train_subset:
            step = dataset_size(self.train) // scale.train_subset
            self.train = Subset(self.train, range(0, step * scale.train_subset, step))
        image = self.test[0][0]
        self.channels, self.size = image.shape[0], list(image.shape[-2:])
        count = min(5_000, dataset_size(self.train))
        stats = torch.stack([self.train[i][0] for i in range(count)])
        self.mean = stats.mean(dim=(0, 2, 3)).tolist()
        self.std = stats.std(dim=(0, 2, 3)).tolist()

    def train_classifier(self, name: str, arch: tuple[str, dict], noise: float = 0.0) -> None:
        torch.manual_seed(0)
        model = create_classifier(arch[0], in_channels=self.channels, num_classes=10, **arch[1])
        train_classifier(
            model,
            self.train,
            out_dir=self.classifier_path(name).parent,
            mean=self.mean,
            std=self.std,
            class_names=getattr(self.test, "classes", None) or None,
            noise_sigma=noise,
            test_set=self.test,
            eval_sigma=noise or 0.25,
            eval_size=self.scale.eval_size,
            config=self.config(self.scale.classifier_epochs, self.scale.classifier_lr),
            metadata={"dataset": self.scale.dataset, "role": name},
        )


def run_experiment(
    scale_name: str,
    out: str | Path,
    *,
    data_root: str | None = None,
    device: str | None = None,
    only: tuple[str, ...] | None = None,
    fresh: bool = False,
) -> Path:
    """Run (or resume) the study; returns the output folder. ``only``: run just the
    stages whose names contain one of these strings (the others are left for later);
    ``fresh``: refuse an ``out`` that holds finished stages (a run from scratch)."""
    if scale_name not in SCALES:
        raise InvalidInputError(f"unknown scale {scale_name!r}; known: {', '.join(SCALES)}")
    scale, out = SCALES[scale_name], Path(out)
    if fresh:
        Stages(out).require_fresh()
    study = FashionStudy(scale, out, data_root, device)
    study.only = only
    study.command = f"smoothapi experiment {scale.dataset} --scale {scale_name}"
    train = study.train_classifier
    study.stage("classifier:target", functools.partial(train, "target", scale.target))
    for name, arch in scale.surrogates.items():
        study.stage(f"classifier:{name}", functools.partial(train, name, arch))
    for sigma in scale.sigmas:
        study.stage(f"classifier:whitebox@{sigma:g}",
                    functools.partial(train, f"whitebox@{sigma:g}", scale.target, sigma))
    # Sigma by sigma, the headline one first: its denoisers, then its certifications, so a
    # study stopped early has complete results for the sigmas it reached.
    for method, sigma in study.runs():
        if method not in ("none", "whitebox"):
            if method != "mse":
                study.stage(f"denoiser:mse@{sigma:g}",
                            functools.partial(study.train_denoiser, "mse", sigma))
            study.stage(f"denoiser:{method}@{sigma:g}",
                        functools.partial(study.train_denoiser, method, sigma))
        study.stage(f"certify:{method}@{sigma:g}", functools.partial(study.certify, method, sigma))
    started = time.perf_counter()
    study.report()  # always rewritten: it reflects whatever has finished
    print(f"[experiment] report written to {out} in {time.perf_counter() - started:.0f} s")
    print(study.closing_line())
    return out

