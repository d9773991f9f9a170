"""Levers on the query-access recipe at the headline sigma, and the diagnostic that ranks them.

The natural-photo study's targets are shares of a gap in *certified* accuracy, and one
certification costs about an hour per configuration on 2 CPU cores, so each lever (a
change to how the query-access STAB+MSE denoiser is trained) is compared first by a
cheap diagnostic on the same test crops:

- for every test crop, ``draws`` noise draws at sigma, denoised in the precision
  certification uses, classified by the target (or the white-box model);
- ``keep``: the mean share of draws on which the target keeps the crop's clean label;
- ``keep_90`` / ``keep_all``: the share of crops on which at least 90% / all of the
  draws keep it. With n = 500 and alpha = 0.001 a crop certifies r = sigma only if its
  pA is about 0.88 or more, and r = 2 sigma only if nearly every sample agrees, so these
  two shares are what certified accuracy at r = 0.25 and 0.5 follows at sigma 0.25;
- the PSNR of the denoised crops.

The baselines (no denoiser, MSE, query and full access, white box) are diagnosed the
same way, and the lever with the highest ``keep_90`` is certified through the
loopback API like the baseline if it beats the baseline's ``keep_90``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .._checkpoint import as_module_input
from ..adapters.local import LocalModelAdapter
from ..denoisers import load_denoiser
from ..denoisers.noise_level import denoise
from ..training.data import ArrayDataset
from ..training.loop import TrainConfig
from ..training.train import train_denoiser

__all__ = ["Lever", "chosen_lever", "diagnose", "lever_lines", "train_lever"]

#: The denoisers (or classifiers, for none and whitebox) every lever is compared with.
BASELINES = ("none", "mse", "stab+mse-query", "stab+mse-full", "whitebox")


@dataclass(frozen=True)
class Lever:
    """One change to the query-access recipe: a denoiser ``method`` trained with
    STAB+MSE through the surrogates from the ``start`` denoiser for ``epochs`` more
    epochs, combining the surrogates per ``guidance``, on ``count`` training crops of
    ``crop`` pixels (default: the study's own training crops) of the study's training
    photos, or of every training photo on the machine (``photos="all"``)."""

    method: str
    change: str
    start: str
    epochs: int
    guidance: str = "mean"
    crop: int | None = None
    count: int | None = None
    photos: str = "study"


class LeverScale(Protocol):
    """What the levers read of the study's scale."""

    @property
    def levers(self) -> tuple[Lever, ...]: ...
    @property
    def surrogates(self) -> dict[str, str]: ...
    @property
    def dataset(self) -> str: ...
    @property
    def eval_size(self) -> int: ...
    @property
    def stab_lr(self) -> float: ...
    @property
    def diagnose_draws(self) -> int: ...
    @property
    def denoiser_dtype(self) -> str: ...


class PhotoStudy(Protocol):
    """What the levers need of the natural-photo study (its class imports this module)."""

    @property
    def scale(self) -> LeverScale: ...
    @property
    def out(self) -> Path: ...
    @property
    def device(self) -> str | None: ...
    @property
    def times(self) -> dict[str, float]: ...
    @property
    def test(self) -> ArrayDataset: ...
    def denoiser_path(self, method: str, sigma: float) -> Path: ...
    def classifier(self, name: str) -> LocalModelAdapter: ...
    def config(self, epochs: int, lr: float, **extra: Any) -> TrainConfig: ...
    def train_set(self, crop: int | None, count: int | None = None,
                  photos: str = "study") -> ArrayDataset: ...  # fmt: skip


def train_lever(study: PhotoStudy, lever: Lever, sigma: float) -> None:
    """Train ``lever``'s denoiser at ``sigma`` into the study's denoisers folder."""
    scale = study.scale
    train_denoiser(
        load_denoiser(study.denoiser_path(lever.start, sigma)),
        study.train_set(lever.crop, lever.count, lever.photos),
        sigma=sigma,
        out_dir=study.denoiser_path(lever.method, sigma).parent,
        objective="stab+mse",
        classifiers={name: study.classifier(name) for name in scale.surrogates},
        guidance=lever.guidance,
        test_set=study.test,
        eval_classifiers={"target": study.classifier("target")},
        eval_size=scale.eval_size,
        config=study.config(lever.epochs, scale.stab_lr),
        metadata={"dataset": scale.dataset, "method": lever.method, "lever": lever.change,
                  "start": lever.start, "surrogates": list(scale.surrogates),
                  "photos": lever.photos},
    )


def diagnostic_path(study: PhotoStudy, method: str, sigma: float) -> Path:
    return study.out / "diagnostics" / f"{method}@{sigma:g}.json"


def diagnose(study: PhotoStudy, method: str, sigma: float) -> dict[str, Any]:
    """The diagnostic of ``method`` at ``sigma`` on every test crop (see the module
    docstring), written to ``OUT/diagnostics/METHOD@SIGMA.json`` and returned."""
    scale, draws = study.scale, study.scale.diagnose_draws
    denoiser = None
    if method not in ("none", "whitebox"):
        denoiser = load_denoiser(study.denoiser_path(method, sigma), study.device,
                                 scale.denoiser_dtype)  # fmt: skip
    classifier = study.classifier(f"whitebox@{sigma:g}" if method == "whitebox" else "target")
    generator = torch.Generator().manual_seed(0)
    kept, squared_error, pixels = [], 0.0, 0
    with torch.inference_mode():
        for k in range(len(study.test)):
            clean, label = study.test[k]
            noise = torch.randn((draws, *clean.shape), generator=generator)
            batch = clean.unsqueeze(0) + sigma * noise
            if denoiser is not None:
                batch = denoise(denoiser, as_module_input(denoiser, batch), sigma).float()
            squared_error += float((batch - clean).pow(2).sum())
            pixels += batch.numel()
            labels = classifier.logits(batch).argmax(dim=1)
            kept.append(float((labels == int(label)).float().mean()))
    shares = np.array(kept)
    result = {
        "method": method,
        "sigma": sigma,
        "crops": len(shares),
        "draws": draws,
        "keep": float(shares.mean()),
        "keep_90": float((shares >= 0.9).mean()),
        "keep_all": float((shares == 1.0).mean()),
        "psnr": float(-10 * np.log10(squared_error / pixels)),
    }
    path = diagnostic_path(study, method, sigma)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _diagnostics(study: PhotoStudy, sigma: float) -> dict[str, dict[str, Any]]:
    found = {}
    for method in (*BASELINES, *(lever.method for lever in study.scale.levers)):
        path = diagnostic_path(study, method, sigma)
        if path.exists():
            found[method] = json.loads(path.read_text())
    return found


def chosen_lever(study: PhotoStudy, sigma: float) -> str | None:
    """The lever to certify: the highest ``keep_90`` (then ``keep``), if above the
    query-access baseline's; ``None`` until every lever and the baseline are diagnosed."""
    found = _diagnostics(study, sigma)
    levers = [lever.method for lever in study.scale.levers]
    if "stab+mse-query" not in found or not levers or not all(m in found for m in levers):
        return None
    best = max(levers, key=lambda m: (found[m]["keep_90"], found[m]["keep"]))
    return best if found[best]["keep_90"] > found["stab+mse-query"]["keep_90"] else None


def lever_lines(study: PhotoStudy, sigma: float) -> list[str]:
    """The report's table of the baselines and levers by the diagnostic."""
    found = _diagnostics(study, sigma)
    if not found:
        return []
    changes = {lever.method: lever.change for lever in study.scale.levers}
    draws = next(iter(found.values()))["draws"]
    lines = [
        f"Diagnostic at sigma {sigma:g} ({next(iter(found.values()))['crops']} test crops, "
        f"{draws} noise draws each; how often the target keeps the clean label):",
        "",
        "| method | change | train (s) | PSNR (dB) | keeps label | crops >= 90% | crops 100% |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, d in found.items():
        seconds = study.times.get(f"lever:{method}@{sigma:g}",
                                  study.times.get(f"denoiser:{method}@{sigma:g}"))
        train = "" if seconds is None else f"{seconds:.0f}"
        lines.append(
            f"| {method} | {changes.get(method, 'baseline')} | {train} | {d['psnr']:.1f} | "
            f"{d['keep']:.0%} | {d['keep_90']:.0%} | {d['keep_all']:.0%} |"
        )
    levers = [lever.method for lever in study.scale.levers]
    if levers and all(m in found for m in (*levers, "stab+mse-query")):
        best = chosen_lever(study, sigma)
        lines += ["", f"Lever certified (the highest share of crops >= 90%): {best}. It was "
                  "chosen on these test crops (with other noise than certification's), so "
                  "each certificate stands, but its row's accuracy is optimistic by the "
                  f"choice among {len(levers)} levers." if best
                  else "No lever beats the query-access baseline's share of crops >= 90%, "
                  "so none is certified."]  # fmt: skip
    mse = study.times.get(f"denoiser:mse@{sigma:g}")
    if mse is not None:
        lines += ["", "Not tried on this machine: a wider or deeper DnCNN. It cannot start from "
                  "the trained denoisers, and from scratch its MSE epochs alone would cost the "
                  f"{mse:.0f} s of this study's MSE denoiser times its training step's "
                  "(measured by benchmarks/bench_denoiser.py on 2 cores: 1.5x for DnCNN-12 "
                  "width 32, 2.6x for DnCNN-12 width 48, 5.9x for DnCNN-17 width 64), before "
                  "its STAB+MSE epochs and a certification slowed alike; `--scale paper` "
                  "(DnCNN-17 width 64) is that configuration, for a GPU."]  # fmt: skip
    return [*lines, ""]
