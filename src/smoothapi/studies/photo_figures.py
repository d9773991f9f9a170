"""Figures of photo denoisers on held-out photos: PSNR, and whether the API's model keeps
its clean answer on a denoised noisy sample.

* :func:`validation_psnr`: mean PSNR of fixed crops at several sigmas (what epochs and
  architectures are chosen by, on the validation photos);
* :func:`test_figures` / :func:`test_lines`: the test photos' 126 fixed crops, PSNR and
  "label kept" (EfficientNet-Lite2's top-1 on one denoised sample equals its top-1 on
  the clean crop), for the final tables only;
* :func:`photo_figures` / :func:`photo_lines`: the test photos whole, at the sizes a user
  sends (shorter side 224 to 512 px), the denoiser run at the image's size: per photo,
  the clean answer with its probability and how often each denoiser keeps it, with the
  share over all photos and over those the model is confident about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import photos as photo_data
from ..adapters.local import LocalModelAdapter
from ..denoisers.noise_level import denoise

__all__ = ["CHOOSE_SIGMA", "EVAL_SIGMAS", "TARGET", "USER_SIDES", "comparison_lines",
           "crop_figures", "photo_figures", "photo_lines", "psnr",
           "test_figures", "test_lines", "validation_psnr", "whole_photos"]  # fmt: skip

#: Noise levels the validation PSNR is reported at.
EVAL_SIGMAS = (0.12, 0.25, 0.5)
#: The noise level the epoch and the architecture are chosen at.
CHOOSE_SIGMA = 0.25
#: The model the vision API serves in the studies (fed each image at its own size).
TARGET = "efficientnet_lite2"
#: The shorter sides a user's photo is sent at, in these figures.
USER_SIDES = (224, 384, 512)
#: "Confident": the clean top-1 probability is at least this.
CONFIDENT = 0.5


def psnr(denoised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(N, C, H, W)`` images in [0, 1] (the output clamped)."""
    mse = (denoised.float().clamp(0, 1) - clean.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))



def validation_psnr(
    model: nn.Module, crops: torch.Tensor, sigmas: tuple[float, ...] = EVAL_SIGMAS,
    seed: int = 0, batch_size: int = 16,
) -> dict[str, float]:  # fmt: skip
    """Mean PSNR of ``model`` on ``(N, C, H, W)`` clean crops in [0, 1] under fixed noise, per
    sigma: ``{"psnr@0.25": ...}``."""
    result = {}
    device = next(model.parameters()).device
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(seed)
        values = []
        for start in range(0, len(crops), batch_size):
            clean = crops[start : start + batch_size]
            noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
            level = torch.full((len(clean),), sigma)
            with torch.no_grad():
                out = denoise(model, noisy.to(device), level.to(device)).cpu()
            values.append(psnr(out, clean))
        result[f"psnr@{sigma:g}"] = round(torch.cat(values).mean().item(), 3)
    return result



def test_figures(model: nn.Module | None, size: int, draws: int = 4,
                 sigma: float = CHOOSE_SIGMA) -> dict[str, float]:  # fmt: skip
    """On the held-out test photos' fixed crops (18 per photo) at ``size`` px: the mean PSNR
    of ``model`` (``None``: no denoiser, the noisy crop itself) per sigma, and how often
    EfficientNet-Lite2 (fed each crop at its own size) keeps its clean label on one
    denoised noisy sample at ``sigma`` (``draws`` fixed draws per crop)."""
    held_out = [photo_data.load_photo(p) for p in photo_data.available_photos("test")]
    tiles, _ = photo_data.test_crops(held_out, size)
    clean = torch.from_numpy(tiles).float() / 255
    identity = _Identity()
    figures = validation_psnr(model or identity, clean)
    target = _target()
    generator = torch.Generator().manual_seed(1)
    kept = []
    with torch.inference_mode():
        labels = target.logits(clean).argmax(1)
        for _ in range(draws):
            noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
            level = torch.full((len(clean),), sigma)
            out = torch.cat([denoise(model or identity, part, part_sigma).float()
                             for part, part_sigma in zip(noisy.split(16), level.split(16),
                                                         strict=True)])  # fmt: skip
            kept.append((target.logits(out).argmax(1) == labels).float())
    figures[f"label_kept@{sigma:g}"] = round(torch.cat(kept).mean().item(), 4)
    return figures


class _Identity(nn.Module):
    """No denoiser, as a module (for the figures' ``none`` row)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_lines(model: nn.Module, size: int) -> list[str]:
    """The report's test table: no denoiser and the shipped checkpoint (final figures only:
    nothing is chosen on them)."""
    rows = {"none": test_figures(None, size), "photo-mse": test_figures(model, size)}
    meta = getattr(model, "checkpoint_metadata", {})
    key = f"label_kept@{CHOOSE_SIGMA:g}"
    lines = ["## Test photos (final figures; nothing is chosen on them)", "",
             f"The 126 fixed crops of the 7 held-out test photos at {size} px; the checkpoint "
             f"of epoch {meta.get('epochs')} (best on validation). Label kept: "
             "EfficientNet-Lite2's top-1 on one denoised noisy sample equals its top-1 on the "
             f"clean crop, at σ = {CHOOSE_SIGMA:g}, 4 draws per crop.", "",
             "| denoiser | " + " | ".join(f"PSNR σ={s:g}" for s in EVAL_SIGMAS)
             + f" | label kept σ={CHOOSE_SIGMA:g} |",
             "|---|" + "---|" * (len(EVAL_SIGMAS) + 1)]  # fmt: skip
    for name, f in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{f[f'psnr@{s:g}']:.2f}" for s in EVAL_SIGMAS)
                     + f" | {f[key]:.0%} |")
    return [*lines, ""]


def _target():
    from ..zoo import load_classifier

    return load_classifier(TARGET, input_size=None, resize=False)


def crop_figures(model: nn.Module | None, crops: torch.Tensor, sigma: float,
                 draws: int = 4, seed: int = 1) -> tuple[float, float]:  # fmt: skip
    """(mean PSNR of the denoised crops clamped to [0, 1], share of the ``draws`` noise
    draws per crop on which Lite2's top-1 after ``model`` is its top-1 on the clean crop)
    for ``(N, 3, H, W)`` ``crops`` in [0, 1]; the draws depend on ``seed`` only, so every
    model meets the same noise."""
    from .inference_levers import INFERENCE_LEVERS, lever_figures  # it imports this module

    as_trained = INFERENCE_LEVERS[:1]
    row = lever_figures(model or _Identity(), crops, sigma, {TARGET: _target()}, as_trained,
                        draws, seed)[as_trained[0].name]  # fmt: skip
    return row["psnr"], row[TARGET]


def comparison_lines(crops: torch.Tensor, models: Mapping[float, Mapping[str, nn.Module | None]],
                     draws: int = 4) -> list[str]:  # fmt: skip
    """A table of :func:`crop_figures`, one row per sigma and denoiser of ``models``
    (sigma -> name -> model, ``None``: no denoiser)."""
    lines = ["| σ | denoiser | PSNR | label kept |", "|---|---|---|---|"]
    for sigma, named in models.items():
        for name, model in named.items():
            quality, kept = crop_figures(model, crops, sigma, draws)
            lines.append(f"| {sigma:g} | {name} | {quality:.2f} | {kept:.1%} |")
    return [*lines, ""]


def whole_photos(
    photos: Sequence[photo_data.Photo], side: int, target: LocalModelAdapter
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Each photo upright, its shorter side scaled down to ``side``, as a ``(3, H, W)``
    float tensor in [0, 1]; and per photo its name, size, ``target``'s clean top-1
    (``label``, and ``answer``: its class name) and that answer's probability."""
    names = target.class_names
    images, meta = [], []
    for photo in photos:
        pixels = torch.from_numpy(photo_data.load_photo(photo, side)).permute(2, 0, 1)
        image = pixels.float() / 255
        with torch.inference_mode():
            probs = target.logits(image[None]).softmax(1)[0]
        label = int(probs.argmax())
        images.append(image)
        meta.append({"photo": photo.name, "size": tuple(image.shape[-2:]), "label": label,
                     "answer": names[label] if names else label,
                     "probability": float(probs[label])})  # fmt: skip
    return images, meta


def photo_figures(
    models: Mapping[str, nn.Module | None],
    sides: Sequence[int] = USER_SIDES,
    sigma: float = CHOOSE_SIGMA,
    draws: int = 4,
    photos: Sequence[photo_data.Photo] | None = None,
) -> list[dict[str, Any]]:
    """Per test photo (whole, upright) and shorter side in ``sides``: Lite2's clean answer
    and its probability, and for each of ``models`` (``None``: no denoiser) the share of
    ``draws`` fixed noise draws at ``sigma`` on which Lite2's top-1 after the denoiser is
    that answer. The draws are the same for every model (seeded per photo and side)."""
    target = _target()
    rows = []
    for photo in photos if photos is not None else photo_data.available_photos("test"):
        for side in sides:
            [image], [meta] = whole_photos([photo], side, target)
            clean, label = image[None], meta["label"]
            row: dict[str, Any] = {"photo": photo.name, "side": side,
                                   "size": list(meta["size"]), "answer": meta["answer"],
                                   "probability": round(meta["probability"], 4)}  # fmt: skip
            generator = torch.Generator().manual_seed(side)
            noise = [torch.randn(clean.shape, generator=generator) for _ in range(draws)]
            for name, model in models.items():
                kept = 0
                for draw in noise:
                    with torch.inference_mode():
                        out = denoise(model or _Identity(), clean + sigma * draw, sigma)
                        kept += int(target.logits(out.float()).argmax(1)) == label
                row[name] = kept / draws
            rows.append(row)
    return rows


def photo_lines(rows: Sequence[Mapping[str, Any]], models: Sequence[str], sigma: float,
                draws: int) -> list[str]:  # fmt: skip
    """The report's table of :func:`photo_figures`, then per side the mean share over all
    photos and over the confident ones."""
    lines = ["## Test photos whole, at the sizes a user sends", "",
             f"Each held-out test photo, upright, its shorter side at "
             f"{', '.join(str(s) for s in sorted({r['side'] for r in rows}))} px; the denoiser "
             f"runs at the image's size. Label kept: how often {TARGET}'s top-1 on one "
             f"denoised noisy sample (σ = {sigma:g}, {draws} draws) is its answer on the clean "
             f"photo. Confident: the clean answer's probability is at least {CONFIDENT:g}.", "",
             "| photo | side | clean answer (probability) | " + " | ".join(models) + " |",
             "|---|---|---|" + "---|" * len(models)]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['photo']} | {r['side']} | {r['answer']} ({r['probability']:.2f}) | "
                     + " | ".join(f"{r[m]:.0%}" for m in models) + " |")
    lines += ["", "| side | photos | " + " | ".join(models) + " |",
              "|---|---|" + "---|" * len(models)]  # fmt: skip
    for side in sorted({r["side"] for r in rows}):
        for subset, chosen in (("all", [r for r in rows if r["side"] == side]),
                               ("confident", [r for r in rows if r["side"] == side
                                              and r["probability"] >= CONFIDENT])):  # fmt: skip
            if chosen:
                lines.append(f"| {side} | {subset} ({len(chosen)}) | " + " | ".join(
                    f"{sum(r[m] for r in chosen) / len(chosen):.0%}" for m in models) + " |")
    return [*lines, ""]
