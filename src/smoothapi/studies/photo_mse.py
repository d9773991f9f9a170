"""A noise-level-aware MSE denoiser for natural photos, trained for hours and resumable.

``smoothapi experiment photo-mse --out results/photo-mse`` (``make photo-mse``) runs:

1. **bake-off**: each candidate architecture (:data:`CANDIDATES`) trains on the same
   number of crops; its validation PSNR and seconds are kept;
2. **choice**: the candidate with the best validation PSNR at sigma = 0.25;
3. **mse**: the chosen one trains for many epochs (hours of CPU); after every epoch its
   validation PSNR at sigma = 0.12 / 0.25 / 0.5 is logged and, when it is the best so
   far at 0.25, the weights are written to ``OUT/photo-mse.safetensors`` (the epoch is
   chosen on validation, never on the test photos);
4. **levers**: the kept checkpoint run differently at inference (told another noise
   level, or self-ensembled; :mod:`.inference_levers`) on the validation crops, chosen
   by the query-access guides' label kept;
5. **report**: ``OUT/README.md`` with the loss and validation curves.

Data: the "train" photos of :mod:`smoothapi.photos` less :data:`VALIDATION_PHOTOS`
(whole photos held out), read with the shorter side at 512 px; a fixed pool of square
tiles drawn at several scales (a side between the tile size and the photo's shorter
side, resized to the tile size, flipped at random). Each step takes one random crop
size in ``crop_sizes`` and a random place in the tiles, rotates and flips the batch
at random, and adds Gaussian noise with a sigma drawn per image from U[0, sigma_max].
Every random draw comes from the loop's per-step generator, so a killed run resumes
exactly (:func:`smoothapi.training.loop.fit` saves model and optimizer state after
every epoch). Stages keep markers under ``OUT/stages`` as the studies do.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import photos as photo_data
from ..denoisers import create_denoiser, load_denoiser, save_denoiser
from ..denoisers.noise_level import denoise
from ..training.augment import random_view
from ..training.data import ArrayDataset
from ..training.loop import LOG_FILE, TrainConfig, fit
from .inference_levers import chosen_lever, lever_figures, lever_lines
from .photo_figures import (
    CHOOSE_SIGMA,
    EVAL_SIGMAS,
    TARGET,
    USER_SIDES,
    comparison_lines,
    photo_figures,
    photo_lines,
    psnr,
    test_lines,
    validation_psnr,
)
from .stages import Stages, launch, pick_scale

__all__ = ["CANDIDATES", "MSE_SCALES", "MSEScale", "mse_loss", "psnr", "run_photo_mse"]

#: Architectures tried in the bake-off: name -> (registry name, kwargs).
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "ffdnet-w64": ("ffdnet", {"depth": 12, "width": 64}),
    "ffdnet-w96": ("ffdnet", {"depth": 12, "width": 96}),
    "drunet-16": ("drunet", {"widths": [16, 32, 64, 128], "blocks": 1}),
    "drunet-32": ("drunet", {"widths": [32, 64, 128, 256], "blocks": 1}),
}

OnEpoch = Callable[[nn.Module, int, dict], None]


@dataclass(frozen=True)
class MSEScale:
    """Everything that sizes the run."""

    tile: int = 192
    tiles: int = 8_000
    crop_sizes: tuple[int, ...] = (128, 144, 160, 176, 192)
    sigma_max: float = 0.5
    batch_size: int = 16
    lr: float = 1e-3
    lr_step: int = 0  # epochs between halvings of the learning rate (0: on plateaus only)
    plateau_patience: int = 2  # halve when validation stalls this many epochs...
    plateau_drops: int = 3  # ... and stop at the stall after this many halvings
    epochs: int = 80  # at most
    bakeoff_tiles: int = 2_000
    bakeoff_epochs: int = 3
    val_size: int = 160
    candidates: tuple[str, ...] = tuple(CANDIDATES)
    train_photos: tuple[str, ...] | None = None  # None: every available "train" photo
    val_photos: tuple[str, ...] = photo_data.VALIDATION_PHOTOS
    cpu_bfloat16: bool = True
    test_report: bool = True  # the report's final test table (Lite2 on the test photos)
    user_sides: tuple[int, ...] = USER_SIDES  # the test photos whole, shorter side in px
    # The inference levers are chosen by these (query access: never the API's model) and
    # reported for them and for TARGET when test_report is set.
    lever_guides: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_lite1")
    extra: dict[str, Any] = field(default_factory=dict)


MSE_SCALES: dict[str, MSEScale] = {
    # 2 CPU cores: about 7 minutes an epoch for drunet-32; at most 80 epochs (~9 hours),
    # fewer when validation stalls (the rate halves at each stall, the 4th stall stops).
    "small": MSEScale(),
    # One GPU: more and larger crops, larger batches (see benchmarks/gpu_photo_mse.sh).
    "gpu": MSEScale(tile=256, tiles=40_000, crop_sizes=(192, 224, 256), batch_size=64,
                    lr=1e-3, lr_step=40, epochs=160, bakeoff_tiles=10_000),  # fmt: skip
    # Seconds, on the pip-shipped test photos only: for tests.
    "tiny": MSEScale(tile=48, tiles=32, crop_sizes=(32, 40), batch_size=8, lr_step=1,
                     epochs=2, bakeoff_tiles=16, bakeoff_epochs=1, val_size=32,
                     candidates=("ffdnet-w64", "drunet-16"), train_photos=("astronaut", "coffee"),
                     val_photos=("chelsea",), cpu_bfloat16=False, test_report=False,
                     lever_guides=()),  # fmt: skip
}


def mse_loss(crop_sizes: tuple[int, ...], sigma_max: float) -> Callable[..., torch.Tensor]:
    """The training loss of :func:`~smoothapi.training.loop.fit` for tiles in [0, 1]: a random
    crop, rotation and flip of the batch, a sigma per image from U[0, sigma_max], MSE."""

    def loss_fn(model: nn.Module, tiles: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator, step: int) -> torch.Tensor:  # fmt: skip
        clean = random_view(tiles, generator, crop_sizes)  # [0, 1]
        device = clean.device
        sigma = torch.rand(len(clean), generator=generator, device=device) * sigma_max
        noise = torch.randn(clean.shape, generator=generator, device=device)
        denoised = denoise(model, clean + sigma.view(-1, 1, 1, 1) * noise, sigma)
        return F.mse_loss(denoised.float(), clean)

    return loss_fn


class PhotoMSERun(Stages):
    """One run in ``out``: data, stages (skipped when their marker exists) and report."""

    prefix = "[photo-mse]"

    def __init__(self, scale: MSEScale, out: Path, device: str | None = None) -> None:
        super().__init__(out)
        self.scale, self.device = scale, device
        chosen, val = photo_data.split_photos(scale.train_photos, scale.val_photos)
        self.train_photos, self.val_photos = chosen, val
        images = [photo_data.load_photo(p) for p in chosen]
        tiles = photo_data.train_crops(images, scale.tiles, scale.tile, seed=0)
        self.tiles = tiles
        val_crops, _ = photo_data.test_crops([photo_data.load_photo(p) for p in val],
                                             scale.val_size)  # fmt: skip
        self.val_crops = torch.from_numpy(val_crops).float() / 255

    def dataset(self, count: int | None = None) -> ArrayDataset:
        tiles = self.tiles if count is None else self.tiles[:count]
        return ArrayDataset(tiles.transpose(0, 2, 3, 1), np.zeros(len(tiles), np.int64))

    # --- stages ------------------------------------------------------------------------

    def config(self, epochs: int, lr_step: int, plateaus: bool = False) -> TrainConfig:
        s = self.scale
        return TrainConfig(epochs=epochs, batch_size=s.batch_size, lr=s.lr, lr_step=lr_step,
                           lr_gamma=0.5, device=self.device, progress=False,
                           cpu_bfloat16=s.cpu_bfloat16,
                           plateau_metric=f"psnr@{CHOOSE_SIGMA:g}" if plateaus else None,
                           plateau_patience=s.plateau_patience,
                           plateau_drops=s.plateau_drops)  # fmt: skip

    def train(self, name: str, folder: Path, epochs: int, lr_step: int, tiles: int | None,
              on_best: OnEpoch | None = None, plateaus: bool = False) -> list[dict]:  # fmt: skip
        arch, kwargs = CANDIDATES[name]
        model = create_denoiser(arch, in_channels=3, **kwargs)
        best = [max((r.get(f"psnr@{CHOOSE_SIGMA:g}", -math.inf) for r in _log(folder)),
                    default=-math.inf)]  # fmt: skip

        def keep_best(model: nn.Module, epoch: int, record: dict) -> None:
            value = record[f"psnr@{CHOOSE_SIGMA:g}"]
            if on_best is not None and value > best[0]:
                best[0] = value
                on_best(model, epoch, record)

        started = time.perf_counter()
        history = fit(model, self.dataset(tiles), mse_loss(self.scale.crop_sizes,
                      self.scale.sigma_max), self.config(epochs, lr_step, plateaus), folder,
                      evaluate=lambda m: validation_psnr(m, self.val_crops),
                      on_epoch_end=keep_best)  # fmt: skip
        print(f"[photo-mse] {name}: {time.perf_counter() - started:.0f} s", flush=True)
        return history

    def bakeoff(self, name: str) -> dict[str, Any]:
        s = self.scale
        history = self.train(name, self.out / "bakeoff" / name, s.bakeoff_epochs, 0,
                             s.bakeoff_tiles)  # fmt: skip
        last = history[-1]
        return {"candidate": name, "crops": s.bakeoff_tiles * s.bakeoff_epochs,
                "train_seconds": round(sum(r["seconds"] for r in history), 1),
                **{k: v for k, v in last.items() if k.startswith("psnr@")}}  # fmt: skip

    def save(self, name: str) -> OnEpoch:
        def on_best(model: nn.Module, epoch: int, record: dict) -> None:
            save_denoiser(self.out / "photo-mse.safetensors", model, sigma=CHOOSE_SIGMA,
                          objective="mse", dataset="natural photos", epochs=epoch,
                          sigma_range=[0.0, self.scale.sigma_max], candidate=name,
                          validation={k: v for k, v in record.items() if k.startswith("psnr@")},
                          train_photos=[p.name for p in self.train_photos],
                          val_photos=[p.name for p in self.val_photos])  # fmt: skip

        return on_best

    def run(self) -> None:
        s = self.scale
        (self.out / "scale.json").parent.mkdir(parents=True, exist_ok=True)
        (self.out / "scale.json").write_text(json.dumps(asdict(s), indent=1))
        found = [self.stage(f"bakeoff:{name}", partial(self.bakeoff, name), keep=True)
                 for name in s.candidates]  # fmt: skip
        results = [r for r in found if r is not None]
        if len(results) < len(found):  # some left out by --only
            return
        best = max(results, key=lambda r: r[f"psnr@{CHOOSE_SIGMA:g}"])
        choice = self.stage("choice", lambda: {"chosen": best["candidate"]}, keep=True)
        name = choice["chosen"] if choice else best["candidate"]
        self.stage("mse", partial(self.long, name), keep=True)
        levers = (self.stage("levers", self.levers, keep=True)
                  if (self.out / "photo-mse.safetensors").exists() else None)
        self.report(results, name, levers)

    def long(self, name: str) -> dict[str, Any]:
        s = self.scale
        history = self.train(name, self.out / "mse", s.epochs, s.lr_step, None, self.save(name),
                             plateaus=True)
        return {"candidate": name, "epochs": len(history)}

    def levers(self) -> dict[str, Any]:
        """The kept checkpoint under each inference lever on the validation crops."""
        from ..zoo import load_classifier

        model = load_denoiser(self.out / "photo-mse.safetensors")
        names = [*self.scale.lever_guides, *([TARGET] if self.scale.test_report else [])]
        classifiers = {n: load_classifier(n, input_size=None, resize=False) for n in names}
        figures = {lever: {k: round(v, 3 if k == "psnr" else 4) for k, v in row.items()}
                   for lever, row in lever_figures(model, self.val_crops, CHOOSE_SIGMA,
                                                   classifiers).items()}  # fmt: skip
        meta: dict[str, Any] = getattr(model, "checkpoint_metadata", {})
        return {"sigma": CHOOSE_SIGMA, "epoch": meta.get("epochs"),
                "crops": len(self.val_crops), "draws": 4, "figures": figures,
                "chosen": chosen_lever(figures, self.scale.lever_guides)}  # fmt: skip

    # --- report ------------------------------------------------------------------------

    def report(self, results: list[dict], name: str,
               levers: dict[str, Any] | None = None) -> None:  # fmt: skip
        history = _log(self.out / "mse")
        lines = ["# Photo MSE denoiser (noise-level aware)", "",
                 f"Training photos: {len(self.train_photos)}; validation photos (whole, "
                 f"held out): {', '.join(p.name for p in self.val_photos)}. Everything is "
                 f"chosen on the validation crops ({len(self.val_crops)} crops of "
                 f"{self.scale.val_size} px); the test photos give only the last table.",
                 "", "## Bake-off (same crops for each)", "",
                 "| candidate | crops | train s | " + " | ".join(
                     f"PSNR σ={s:g}" for s in EVAL_SIGMAS) + " |",
                 "|---|---|---|" + "---|" * len(EVAL_SIGMAS)]  # fmt: skip
        for r in results:
            lines.append(f"| {r['candidate']} | {r['crops']} | {r['train_seconds']:.0f} | "
                         + " | ".join(f"{r[f'psnr@{s:g}']:.2f}" for s in EVAL_SIGMAS) + " |")
        lines += ["", f"Chosen: **{name}** (best validation PSNR at σ = {CHOOSE_SIGMA:g}).", ""]
        if history:
            best = max(history, key=lambda r: r[f"psnr@{CHOOSE_SIGMA:g}"])
            hours = sum(r["seconds"] for r in history) / 3600
            lines += [f"## Long training: {len(history)} epochs of {self.scale.tiles} crops, "
                      f"{hours:.1f} h", "",
                      f"Adam at {self.scale.lr:g}, the rate halved whenever validation PSNR "
                      f"at σ = {CHOOSE_SIGMA:g} stalled {self.scale.plateau_patience} epochs; "
                      f"training stops at the stall after {self.scale.plateau_drops} halvings "
                      f"(at most {self.scale.epochs} epochs). Rates used: "
                      + ", ".join(f"{r['lr']:g}" for r in history) + ".", "",
                      f"Best epoch on validation: {best['epoch']} (" + ", ".join(
                          f"σ = {s:g}: {best[f'psnr@{s:g}']:.2f} dB" for s in EVAL_SIGMAS)
                      + "), kept as `photo-mse.safetensors`.", "",
                      "![loss and validation PSNR](curves.png)", ""]  # fmt: skip
            _plot(history, self.out / "curves.png")
        if levers is not None:
            lines += lever_lines(levers, self.scale.lever_guides, TARGET)
        checkpoint = self.out / "photo-mse.safetensors"
        if checkpoint.exists() and self.scale.test_report:
            model = load_denoiser(checkpoint)
            lines += test_lines(model, self.scale.val_size)
            lines += self.shipped_lines(model)
        (self.out / "README.md").write_text("\n".join(lines), encoding="utf-8")

    def shipped_lines(self, model: nn.Module) -> list[str]:
        """This denoiser against the shipped per-sigma photo denoisers and none: on the
        validation crops (what the default for each sigma is chosen by), then on the test
        crops and the test photos whole at the sizes a user sends (reported only)."""
        from ..denoisers import pretrained_denoisers

        shipped = pretrained_denoisers()
        models: dict[float, dict[str, nn.Module | None]] = {}
        for sigma in EVAL_SIGMAS:
            models[sigma] = {"none": None}
            if f"photo-sigma{sigma:g}" in shipped:
                models[sigma][f"photo-sigma{sigma:g}"] = load_denoiser(f"photo-sigma{sigma:g}")
            models[sigma]["photo-mse"] = model
        held_out = [photo_data.load_photo(p) for p in photo_data.available_photos("test")]
        test_crops = torch.from_numpy(photo_data.test_crops(held_out, self.scale.val_size)[0])
        rows = photo_figures(models[CHOOSE_SIGMA], self.scale.user_sides, sigma=CHOOSE_SIGMA)
        return ["## Against the shipped per-σ photo denoisers", "",
                f"Label kept as above, 4 noise draws per crop, the same draws for every "
                f"denoiser. On the validation crops ({len(self.val_crops)}, whole photos held "
                "out from training), which is what the default denoiser for each σ is chosen "
                "by:", "", *comparison_lines(self.val_crops, models),
                f"On the {len(test_crops)} test crops (reported only):", "",
                *comparison_lines(test_crops.float() / 255, models),
                *photo_lines(rows, list(models[CHOOSE_SIGMA]), CHOOSE_SIGMA, draws=4)]  # fmt: skip


def _log(folder: Path) -> list[dict]:
    path = folder / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [r["train_loss"] for r in history])
    left.set(xlabel="epoch", ylabel="training MSE", yscale="log", title="training loss")
    for sigma in EVAL_SIGMAS:
        right.plot(epochs, [r[f"psnr@{sigma:g}"] for r in history], label=f"σ = {sigma:g}")
    right.set(xlabel="epoch", ylabel="PSNR (dB)", title="validation PSNR")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_photo_mse(scale_name: str, out: str | Path, *, device: str | None = None,
                  only: tuple[str, ...] | None = None, fresh: bool = False) -> Path:  # fmt: skip
    """Run (or resume) the photo MSE denoiser's training in ``out``; returns ``out``.
    ``only`` and ``fresh`` as in :func:`~smoothapi.studies.natural_photos.run_photo_study`."""
    scale = pick_scale(MSE_SCALES, scale_name)
    return launch(lambda: PhotoMSERun(scale, Path(out), device), Path(out), only, fresh)
