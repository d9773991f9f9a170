"""Training recipes on top of :func:`~smoothapi.training.loop.fit`: denoisers and classifiers.

Full access passes the target classifier in ``classifiers``; query access passes
surrogates only, so the target is never touched. Either way the classifiers are
frozen: eval mode, no gradients for their parameters, and their weights are
checked to be unchanged when training ends.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..adapters.local import LocalModelAdapter
from ..certification import check_sigma
from ..denoisers import save_denoiser
from ..denoisers.noise_level import denoise
from ..errors import InvalidInputError
from .loop import LOG_FILE, TrainConfig, fit, training_device
from .objectives import GUIDANCE_MODES, OBJECTIVES, guided_loss

__all__ = ["evaluate_denoiser", "psnr", "train_classifier", "train_denoiser"]

DENOISER_FILE = "denoiser.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"


def psnr(images: torch.Tensor, clean: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for pixel range 1 (values are not clipped)."""
    mse = F.mse_loss(images.float(), clean.float()).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _held_out(test_set: Dataset, size: int, sigma: float, seed: int):
    """The first ``size`` test items, with one fixed noise draw so epochs are comparable."""
    items = [test_set[i] for i in range(min(size, len(cast(Sized, test_set))))]
    clean = torch.stack([image for image, _ in items])
    labels = torch.tensor([int(label) for _, label in items])
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    return clean, labels, clean + sigma * noise


def _batched(fn, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def _accuracy(adapter: LocalModelAdapter, images: torch.Tensor, labels: torch.Tensor) -> float:
    predictions = _batched(lambda b: adapter.logits(b).argmax(1).cpu(), images)
    return (predictions == labels).float().mean().item()


def _frozen(classifiers: Sequence[LocalModelAdapter], device: torch.device):
    for adapter in classifiers:
        adapter.to(device).module.requires_grad_(False).eval()
    return [{k: v.clone() for k, v in a.module.state_dict().items()} for a in classifiers]


def _check_unchanged(classifiers: Sequence[LocalModelAdapter], snapshots) -> None:
    for adapter, snapshot in zip(classifiers, snapshots, strict=False):
        for key, value in adapter.module.state_dict().items():
            if not torch.equal(value, snapshot[key]):
                raise RuntimeError(f"a guiding classifier changed during training ({key})")


def _guides(
    objective: str, guidance: str, classifiers: Mapping[str, LocalModelAdapter] | None
) -> dict[str, LocalModelAdapter]:
    """The classifiers that guide ``objective`` (none for MSE), after checking the options."""
    if objective not in OBJECTIVES:
        raise InvalidInputError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if guidance not in GUIDANCE_MODES:
        raise InvalidInputError(
            f"unknown guidance {guidance!r}; known: {', '.join(GUIDANCE_MODES)}"
        )
    guides = dict(classifiers or {})
    if objective != "mse" and not guides:
        raise InvalidInputError(f"objective {objective!r} needs at least one classifier")
    return {} if objective == "mse" else guides


def _denoiser_evaluation(
    held_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    watchers: Mapping[str, LocalModelAdapter],
    device: torch.device,
    sigma: float,
) -> Callable[[nn.Module], dict[str, float]]:
    """PSNR before and after the denoiser, and each watcher's accuracy after it."""
    clean, labels, noisy = held_out
    noisy_psnr = psnr(noisy, clean)

    def evaluate(model):
        denoised = _batched(lambda b: denoise(model, b.to(device), sigma).float().cpu(), noisy)
        record = {"psnr_noisy": noisy_psnr, "psnr_denoised": psnr(denoised, clean)}
        for name, adapter in watchers.items():
            record[f"accuracy_{name}"] = _accuracy(adapter, denoised, labels)
        return record

    return evaluate


def evaluate_denoiser(
    denoiser: nn.Module,
    test_set: Dataset,
    *,
    sigma: float,
    classifiers: Mapping[str, LocalModelAdapter] | None = None,
    eval_size: int = 1_000,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, float]:
    """The record :func:`train_denoiser` logs after an epoch, for ``denoiser`` as it is:
    on the first ``eval_size`` items of ``test_set`` with the same noise draw (``seed``
    is the run's ``TrainConfig.seed``), the PSNR before and after the denoiser and each
    classifier's accuracy after it (``accuracy_<name>``). Gives a start to compare with."""
    sigma = check_sigma(sigma)
    where = training_device(TrainConfig(device=device))
    watchers = dict(classifiers or {})
    for adapter in watchers.values():
        adapter.to(where).module.eval()
    evaluate = _denoiser_evaluation(_held_out(test_set, eval_size, sigma, seed), watchers,
                                    where, sigma)  # fmt: skip
    with torch.inference_mode():
        return evaluate(denoiser.to(where).eval())


def train_denoiser(
    denoiser: nn.Module,
    train_set: Dataset,
    *,
    sigma: float,
    out_dir: str | os.PathLike,
    objective: str = "mse",
    classifiers: Mapping[str, LocalModelAdapter] | None = None,
    guidance: str = "round-robin",
    mse_weight: float = 0.0,
    soft_labels: bool = False,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    test_set: Dataset | None = None,
    eval_classifiers: Mapping[str, LocalModelAdapter] | None = None,
    eval_size: int = 1_000,
    config: TrainConfig | None = None,
    metadata: Mapping[str, Any] | None = None,
    best_by: str | None = None,
) -> list[dict]:
    """Train ``denoiser`` (from :func:`~smoothapi.denoisers.create_denoiser`) for noise ``sigma``.

    ``objective`` is one of ``mse``, ``stab``, ``clf``, ``stab+mse``, ``clf+mse`` (the
    ``+mse`` forms fine-tune a denoiser already trained with MSE: load it first).
    ``classifiers`` (name -> adapter) guide STAB/CLF, combined per ``guidance``;
    ``mse_weight`` > 0 adds that multiple of the MSE to a guided loss (an anchor to the
    clean image); ``soft_labels`` makes STAB match each classifier's whole distribution
    on the clean image rather than its top label. ``augment(images, generator)``, if
    given, maps each training batch to the clean images the step uses (e.g.
    :func:`~smoothapi.training.augment.random_view`), drawing from the step's generator
    so a resumed run repeats it. Each epoch logs the training loss and, on ``eval_size``
    noisy held-out images, the PSNR of the noisy and denoised images and the accuracy
    under noise of every guiding and ``eval_classifiers`` classifier after the denoiser.
    The denoiser is saved to ``out_dir/denoiser.safetensors`` after every epoch, with its
    metadata; with ``best_by`` (a key of the evaluation, higher is better) only after
    epochs that beat
    every earlier one on it (the epoch chosen on held-out data).
    """
    sigma = check_sigma(sigma)
    config = config or TrainConfig()
    guides = _guides(objective, guidance, classifiers)
    watchers = {**guides, **(eval_classifiers or {})}
    device = training_device(config)
    snapshots = _frozen(list(watchers.values()), device)

    _check_mse_weight(mse_weight, objective)
    loss_fn = _denoiser_loss(objective, guides, sigma, guidance, mse_weight, soft_labels, augment)

    evaluate = None
    if test_set is not None:
        held_out = _held_out(test_set, eval_size, sigma, config.seed)
        evaluate = _denoiser_evaluation(held_out, watchers, device, sigma)
    out_dir = Path(out_dir)
    info = _denoiser_info(metadata, train_set, sigma, objective, list(guides), guidance,
                          mse_weight, soft_labels)  # fmt: skip

    history = fit(denoiser, train_set, loss_fn, config, out_dir, evaluate=evaluate,
                  on_epoch_end=_denoiser_saver(out_dir, info, best_by))  # fmt: skip
    _check_unchanged(list(watchers.values()), snapshots)
    return history


def _check_mse_weight(mse_weight: float, objective: str) -> None:
    """Refuse a negative ``mse_weight``, or one given with the plain MSE objective (it only
    anchors a guided objective to the clean image)."""
    if not mse_weight >= 0 or (mse_weight and objective == "mse"):
        raise InvalidInputError(
            f"mse_weight must be >= 0 and anchors a guided objective only, "
            f"got {mse_weight} with {objective!r}"
        )


def _denoiser_loss(
    objective: str,
    guides: Mapping[str, LocalModelAdapter],
    sigma: float,
    guidance: str,
    mse_weight: float,
    soft_labels: bool,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
) -> Callable[..., torch.Tensor]:
    """The denoiser's training loss for ``fit``: each batch (after ``augment``, if given) is
    noised at ``sigma`` from the step's generator, denoised, and scored by ``objective``
    with the ``guides``' logits."""
    logits = [adapter.logits for adapter in guides.values()]

    def loss_fn(model, images, labels, generator, step):
        if augment is not None:
            images = augment(images, generator)
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        denoised = denoise(model, images + sigma * noise, sigma)  # noise-level aware: at sigma
        return guided_loss(objective, logits, denoised, images, labels, step, guidance,
                           mse_weight, soft_labels)  # fmt: skip

    return loss_fn


def _denoiser_info(
    metadata: Mapping[str, Any] | None,
    train_set: Dataset,
    sigma: float,
    objective: str,
    surrogates: list[str],
    guidance: str,
    mse_weight: float,
    soft_labels: bool,
) -> dict[str, Any]:
    """The metadata saved with the denoiser: ``metadata``, the training images' size unless
    given there, and the training settings (``mse_weight`` and ``soft_labels`` when used)."""
    info = dict(metadata or {})
    info.setdefault("input_size", list(train_set[0][0].shape[-2:]))
    info.update(sigma=sigma, objective=objective, surrogates=surrogates, guidance=guidance)
    if mse_weight:
        info.update(mse_weight=mse_weight)
    if soft_labels:
        info.update(soft_labels=True)
    return info


def _denoiser_saver(
    out_dir: Path, info: Mapping[str, Any], best_by: str | None
) -> Callable[[nn.Module, int, dict], None]:
    """What ``fit`` calls after each epoch: save the denoiser with ``info`` (only when the
    epoch beats every earlier one, logged ones included, on ``best_by`` if given)."""
    log = out_dir / LOG_FILE
    earlier = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    best = [max((r.get(best_by, -math.inf) for r in earlier), default=-math.inf)]

    def save(model: nn.Module, epoch: int, record: dict) -> None:
        if best_by is not None:
            if not record[best_by] > best[0]:
                return
            best[0] = record[best_by]
        save_denoiser(out_dir / DENOISER_FILE, model, epochs=epoch, **info, last_epoch=record)

    return save


class _Normalize(nn.Module):
    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _classifier_loss(flip: bool, noise_sigma: float) -> Callable[..., torch.Tensor]:
    """Cross-entropy on images randomly flipped (``flip``) and noised (``noise_sigma`` > 0)."""

    def loss_fn(net, images, labels, generator, step):
        if flip:
            flipped = torch.rand(len(images), generator=generator, device=images.device) < 0.5
            images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)
        if noise_sigma > 0:
            noise = torch.randn(images.shape, generator=generator, device=images.device)
            images = images + noise_sigma * noise
        return F.cross_entropy(net(images), labels)

    return loss_fn


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    *,
    out_dir: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str] | None = None,
    noise_sigma: float = 0.0,
    flip: bool = False,
    test_set: Dataset | None = None,
    eval_sigma: float = 0.25,
    eval_size: int = 2_000,
    config: TrainConfig | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Train a classifier (from :func:`~smoothapi.training.create_classifier`).

    ``noise_sigma = 0`` is standard training; ``noise_sigma > 0`` adds Gaussian noise in
    [0, 1] pixel space to every training image (Cohen et al.'s white-box baseline).
    ``flip`` adds random horizontal flips. Each epoch logs clean accuracy and accuracy
    under noise ``eval_sigma`` on ``eval_size`` test images, and saves
    ``out_dir/classifier.safetensors`` (a :class:`LocalModelAdapter` checkpoint).
    """
    config = config or TrainConfig()
    if noise_sigma < 0:
        raise InvalidInputError(f"noise_sigma must be >= 0, got {noise_sigma}")
    net = nn.Sequential(_Normalize(mean, std), model)
    loss_fn = _classifier_loss(flip, noise_sigma)

    def adapter() -> LocalModelAdapter:
        return LocalModelAdapter(model, mean=mean, std=std, class_names=class_names)

    evaluate = None
    if test_set is not None:
        clean, labels, noisy = _held_out(test_set, eval_size, eval_sigma, config.seed)

        def evaluate(_net):
            wrapped = adapter()
            return {
                "accuracy_clean": _accuracy(wrapped, clean, labels),
                f"accuracy_noise_{eval_sigma:g}": _accuracy(wrapped, noisy, labels),
            }

    out_dir = Path(out_dir)

    def save(_net, epoch, record):
        adapter().save(
            out_dir / CLASSIFIER_FILE,
            epochs=epoch,
            noise_sigma=noise_sigma,
            flip=flip,
            **dict(metadata or {}),
            last_epoch=record,
        )

    history = fit(net, train_set, loss_fn, config, out_dir, evaluate=evaluate, on_epoch_end=save)
    model.eval()
    return history
