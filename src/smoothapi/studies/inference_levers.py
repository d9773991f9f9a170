"""Test-time levers of a noise-level-aware denoiser, measured on validation crops.

A lever changes only how a trained denoiser is run, not its weights: the noise level it
is told (``sigma * factor``: below 1 it smooths less, above 1 more) and a self-ensemble
(the noisy image flipped and rotated into ``views`` positions, each denoised, turned back
and averaged). Each is a deterministic function of the noisy image, so a certificate made
through it stays sound; only local compute changes (``views`` times), never the queries
a user pays.

:func:`lever_figures` gives, per lever, the mean PSNR and how often each classifier keeps
its clean top-1 on one denoised sample; the draws are fixed by ``seed``, the same for every
lever. The lever is chosen by the query-access guides (the classifiers a user without the
API's model holds), never by the API's model or on the test photos; :func:`lever_lines`
reports every classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapters.local import LocalModelAdapter
from ..denoisers.noise_level import denoise
from .photo_figures import psnr

__all__ = ["INFERENCE_LEVERS", "InferenceLever", "chosen_lever", "lever_figures", "lever_lines",
           "run_lever"]  # fmt: skip


@dataclass(frozen=True)
class InferenceLever:
    """How a noise-level-aware denoiser is run: the noise level it is told is
    ``factor * sigma``; ``views`` is 1 (as is), 2 (and mirrored) or 8 (every flip and
    quarter turn), averaged after each is turned back."""

    name: str
    factor: float = 1.0
    views: int = 1


#: The levers tried, the first being the denoiser as trained.
INFERENCE_LEVERS: tuple[InferenceLever, ...] = (
    InferenceLever("as trained"),
    InferenceLever("noise level x0.8", factor=0.8),
    InferenceLever("noise level x1.1", factor=1.1),
    InferenceLever("noise level x1.25", factor=1.25),
    InferenceLever("self-ensemble, 2 views", views=2),
    InferenceLever("self-ensemble, 8 views", views=8),
)

_VIEWS = {1: ((0, False),), 2: ((0, False), (0, True)),
          8: tuple((turns, flip) for turns in range(4) for flip in (False, True))}  # fmt: skip


def run_lever(model: nn.Module, noisy: torch.Tensor, sigma: float,
              lever: InferenceLever) -> torch.Tensor:  # fmt: skip
    """``(N, C, H, W)`` noisy images -> denoised by ``model`` under ``lever``."""
    if lever.views not in _VIEWS:
        raise ValueError(f"views must be one of {sorted(_VIEWS)}; got {lever.views}")
    total = torch.zeros_like(noisy)
    for turns, flip in _VIEWS[lever.views]:
        view = torch.rot90(noisy, turns, (2, 3))
        view = view.flip(3) if flip else view
        out = denoise(model, view, sigma * lever.factor).float()
        out = out.flip(3) if flip else out
        total += torch.rot90(out, -turns, (2, 3))
    return total / lever.views


def lever_figures(
    model: nn.Module, crops: torch.Tensor, sigma: float,
    classifiers: Mapping[str, LocalModelAdapter],
    levers: Sequence[InferenceLever] = INFERENCE_LEVERS, draws: int = 4, seed: int = 1,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Lever name -> ``{"psnr": mean dB, <classifier>: share kept}`` on ``(N, 3, H, W)``
    clean ``crops`` in [0, 1], ``draws`` fixed noise draws each at ``sigma``."""
    generator = torch.Generator().manual_seed(seed)
    noisy = [crops + sigma * torch.randn(crops.shape, generator=generator) for _ in range(draws)]
    with torch.inference_mode():
        labels = {name: torch.cat([c.logits(part).argmax(1) for part in crops.split(batch_size)])
                  for name, c in classifiers.items()}  # fmt: skip
        figures = {}
        for lever in levers:
            quality: list[torch.Tensor] = []
            kept: dict[str, list[torch.Tensor]] = {name: [] for name in classifiers}
            for sample in noisy:
                out = torch.cat([run_lever(model, part, sigma, lever)
                                 for part in sample.split(batch_size)])  # fmt: skip
                quality.append(psnr(out, crops))
                for name, c in classifiers.items():
                    predicted = torch.cat([c.logits(p).argmax(1) for p in out.split(batch_size)])
                    kept[name].append((predicted == labels[name]).float())
            figures[lever.name] = {"psnr": torch.cat(quality).mean().item(),
                                   **{name: torch.cat(v).mean().item()
                                      for name, v in kept.items()}}  # fmt: skip
    return figures


def chosen_lever(figures: Mapping[str, Mapping[str, float]], guides: Sequence[str]) -> str:
    """The lever whose mean share kept over ``guides`` is highest (the first on ties, so
    "as trained" wins unless a lever does better); PSNR when there are no guides."""
    def score(name: str) -> float:
        row = figures[name]
        return sum(row[g] for g in guides) / len(guides) if guides else row["psnr"]

    return max(figures, key=score)


def lever_lines(record: Mapping[str, Any], guides: Sequence[str], target: str) -> list[str]:
    """The report's section for a ``levers`` stage record (``sigma``, ``epoch``, ``crops``,
    ``draws``, ``figures``, ``chosen``)."""
    figures = record["figures"]
    names = [n for n in next(iter(figures.values())) if n != "psnr"]
    lines = ["## Test-time levers (validation crops)", "",
             f"The checkpoint of epoch {record['epoch']} run differently at σ = "
             f"{record['sigma']:g} on the {record['crops']} validation crops, {record['draws']} "
             "draws each (the same for every lever). Label kept: the classifier's top-1 on one "
             "denoised sample equals its top-1 on the clean crop. Chosen by the query-access "
             f"guides ({', '.join(guides) or 'PSNR'}), not by {target}: "
             f"**{record['chosen']}**" + ("." if record["chosen"] == next(iter(figures)) else
                                          " (the shipped denoiser runs as trained; "
                                          "`inference_levers.run_lever` applies a lever)."),
             "",
             "| lever | PSNR | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]  # fmt: skip
    for lever, row in figures.items():
        lines.append(f"| {lever} | {row['psnr']:.2f} | "
                     + " | ".join(f"{row[n]:.1%}" for n in names) + " |")
    return [*lines, ""]
