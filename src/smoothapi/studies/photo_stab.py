"""STAB+MSE photo denoisers fine-tuned from the noise-level-aware photo MSE denoiser.

One stage per ``(access, sigma)`` (``stab:query@0.25`` first, the headline): the photo MSE
denoiser (:mod:`smoothapi.studies.photo_mse`; it is handed the stage's sigma) is fine-tuned
with STAB+MSE (the paper's section 3), guided by

* **query** access: EfficientNet-Lite0 and Lite1, the mean of their losses (the API's own
  model is never differentiated), or
* **full** access: EfficientNet-Lite2, the model the loopback API serves,

on a pool of random square tiles of the training photos at ``tile`` px, each batch seen
as a fresh random view (one of ``crop_sizes``, 160-224 px: large enough for the surrogates
to see through the noise; a random place and flip), so the denoiser cannot learn the
surrogates' labels of a fixed set of crops. ``mse_weight`` > 0 adds that multiple of the
MSE to STAB (an anchor that keeps the denoised image close to the clean one, so what
helps the surrogates is more likely to help the API's model too).

Before training and after every epoch, on the validation photos' crops (whole photos held
out from training, ``val_draws`` noise draws each), it measures how often Lite2 keeps its
clean label on one denoised noisy sample, which a query-access user measures with API
queries on held-out photos of their own; the learning rate halves when that stalls,
training stops at the next stall, and the best epoch is kept as
``OUT/stab-{access}-sigma{sigma}.safetensors`` (marked ``beats_start`` only if it keeps the
label more often than the MSE denoiser it started from).
The test photos give only the report's final table. Stages keep markers under
``OUT/stages``, so a killed run resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .. import photos as photo_data
from ..denoisers import load_denoiser
from ..errors import InvalidInputError
from ..training.augment import random_view
from ..training.data import ArrayDataset
from ..training.loop import LOG_FILE, TrainConfig
from ..training.train import evaluate_denoiser, train_denoiser
from .photo_figures import USER_SIDES, photo_figures, photo_lines, test_figures
from .stages import Stages, launch, pick_scale

__all__ = ["ACCESS", "STAB_SCALES", "PhotoStabRun", "StabScale", "run_photo_stab"]

#: The classifiers that guide each access level (zoo names).
ACCESS = {"query": ("efficientnet_lite0", "efficientnet_lite1"), "full": ("efficientnet_lite2",)}
TARGET = "efficientnet_lite2"
#: What the epoch is chosen by: Lite2 keeps its clean label on one denoised sample.
METRIC = "accuracy_target"


@dataclass(frozen=True)
class StabScale:
    """Everything that sizes the run."""

    tile: int = 240  # the pool's tiles; every batch is a random view of them
    crop_sizes: tuple[int, ...] = (160, 192, 224)
    tiles: int = 4_000  # tiles in the pool, seen once an epoch
    batch_size: int = 8
    lr: float = 2e-5
    mse_weight: float = 1_000.0  # the MSE anchor (0: STAB alone, as in the paper)
    soft_labels: bool = True  # STAB against the guides' whole distribution, not their top-1
    epochs: int = 8  # at most: the rate halves at a 1-epoch stall, the next one stops
    sigmas: tuple[float, ...] = (0.25, 0.12, 0.5)
    accesses: tuple[str, ...] = ("query", "full")
    val_size: int = 160
    val_draws: int = 4  # noise draws per validation crop
    test_size: int = 160
    user_sides: tuple[int, ...] = USER_SIDES  # the test photos whole, shorter side in px
    test_report: bool = True
    surrogates: dict[str, tuple[str, ...]] | None = None  # None: ACCESS
    train_photos: tuple[str, ...] | None = None  # None: every "train" photo not validating
    val_photos: tuple[str, ...] = photo_data.VALIDATION_PHOTOS
    cpu_bfloat16: bool = True


STAB_SCALES: dict[str, StabScale] = {
    # 2 CPU cores: about 5-8 minutes an epoch in query access (2 surrogates at 192 px).
    "small": StabScale(),
    # One GPU: more crops a larger batch (see benchmarks/gpu_photo_mse.sh for the MSE half).
    "gpu": StabScale(tiles=20_000, batch_size=32, epochs=12),
    # Seconds, on the pip-shipped test photos: for tests.
    "tiny": StabScale(
        tile=72,
        crop_sizes=(48, 64),
        tiles=8,
        batch_size=4,
        epochs=2,
        sigmas=(0.25,),
        accesses=("query",),
        val_size=64,
        val_draws=2,
        test_report=False,
        surrogates={"query": ("efficientnet_lite0",)},
        train_photos=("astronaut", "coffee"),
        val_photos=("chelsea",),
        cpu_bfloat16=False,
    ),  # fmt: skip
}


def _file(access: str, sigma: float) -> str:
    return f"stab-{access}-sigma{sigma:g}.safetensors"


class PhotoStabRun(Stages):
    """One run in ``out`` from the MSE checkpoint ``start``."""

    prefix = "[photo-stab]"

    def __init__(self, scale: StabScale, out: Path, start: Path, device: str | None = None):
        super().__init__(out)
        if not start.is_file():
            raise InvalidInputError(f"no MSE denoiser at {start}; run `make photo-mse` first")
        self.scale, self.start, self.device = scale, start, device
        train, val = photo_data.split_photos(scale.train_photos, scale.val_photos)
        tiles = photo_data.train_crops([photo_data.load_photo(p) for p in train], scale.tiles,
                                       scale.tile, seed=1)  # fmt: skip
        self.train_set = ArrayDataset(tiles.transpose(0, 2, 3, 1), np.zeros(len(tiles), np.int64))
        crops, _ = photo_data.test_crops([photo_data.load_photo(p) for p in val], scale.val_size)
        self.val_crops = torch.from_numpy(crops).float() / 255
        self.augment = partial(random_view, crop_sizes=scale.crop_sizes, rotate=False)
        self.train_names, self.val_names = [p.name for p in train], [p.name for p in val]

    def classifier(self, name: str):
        from ..zoo import load_classifier

        return load_classifier(name, input_size=None, resize=False, device=self.device)

    def guides(self, access: str) -> tuple[str, ...]:
        return (self.scale.surrogates or ACCESS)[access]

    def train(self, access: str, sigma: float) -> dict[str, Any]:
        s = self.scale
        target = self.classifier(TARGET)
        with torch.inference_mode():  # what "kept" means: Lite2's top-1 on the clean crop
            labels = torch.cat([target.logits(part).argmax(1) for part in self.val_crops.split(16)])
        draws = s.val_draws  # each copy of a crop gets its own noise draw
        validation = TensorDataset(self.val_crops.repeat(draws, 1, 1, 1), labels.repeat(draws))
        guides = {name: self.classifier(name) for name in self.guides(access)}
        watchers = {**guides, "target": target}
        denoiser = load_denoiser(self.start)
        start = evaluate_denoiser(denoiser, validation, sigma=sigma, classifiers=watchers,
                                  eval_size=len(validation), device=self.device)  # fmt: skip
        mse_epochs = getattr(denoiser, "checkpoint_metadata", {}).get("epochs")
        config = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, lr_gamma=0.5,
                             plateau_metric=METRIC, plateau_patience=1, plateau_drops=1,
                             device=self.device, progress=False,
                             cpu_bfloat16=s.cpu_bfloat16)  # fmt: skip
        folder = self.out / f"{access}@{sigma:g}"
        started = time.perf_counter()
        history = train_denoiser(
            denoiser, self.train_set, sigma=sigma, out_dir=folder, objective="stab+mse",
            classifiers=guides, guidance="mean", mse_weight=s.mse_weight,
            soft_labels=s.soft_labels, augment=self.augment,
            test_set=validation, eval_classifiers={"target": target},
            eval_size=len(validation), config=config, best_by=METRIC,
            metadata={"dataset": "natural photos", "access": access, "start": str(self.start),
                      "start_mse_epochs": mse_epochs, "train_photos": self.train_names,
                      "val_photos": self.val_names, "tile": s.tile,
                      "input_size": [max(s.crop_sizes)] * 2},
        )  # fmt: skip
        best = max(history, key=lambda r: r[METRIC])
        (folder / "denoiser.safetensors").replace(self.out / _file(access, sigma))
        print(f"{self.prefix} {access}@{sigma:g}: {time.perf_counter() - started:.0f} s, best "
              f"epoch {best['epoch']}", flush=True)  # fmt: skip
        return {"access": access, "sigma": sigma, "epochs": len(history),
                "best_epoch": best["epoch"], "validation_kept": best[METRIC],
                "validation_psnr": best["psnr_denoised"], "start": start,
                "beats_start": best[METRIC] > start[METRIC]}  # fmt: skip

    def run(self) -> None:
        s = self.scale
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "scale.json").write_text(json.dumps(asdict(s), indent=1))
        done = []
        for sigma in s.sigmas:
            for access in s.accesses:
                found = self.stage(f"stab:{access}@{sigma:g}", partial(self.train, access, sigma),
                                   keep=True)  # fmt: skip
                if found is not None:
                    done.append(found)
        self.report(done)

    def report(self, done: list[dict[str, Any]]) -> None:
        s = self.scale
        stab = "STAB (KL to the guides' distribution)" if s.soft_labels else "STAB"
        anchor = f"{stab} + {s.mse_weight:g} x MSE" if s.mse_weight else f"{stab} alone"
        lines = [
            "# STAB+MSE photo denoisers (from the photo MSE denoiser)",
            "",
            f"Start: `{self.start}`. Guides: query access "
            f"{' + '.join(self.guides('query')) if 'query' in s.accesses else '-'}, full "
            f"access {TARGET}. Loss: {anchor}, Adam from {s.lr:g}. A pool of {s.tiles} "
            f"tiles of {s.tile} px, each batch a random view of "
            f"{'/'.join(map(str, s.crop_sizes))} px. The epoch is chosen on "
            f"{len(self.val_crops)} validation crops x {s.val_draws} noise draws "
            f"({', '.join(self.val_names)}) by how often Lite2 keeps its clean label on "
            "one denoised sample; epoch 0 is the MSE denoiser it starts from.",
            "",
            "| access | σ | epochs | best | validation: label kept (start) | "
            "validation PSNR (start) | beats start |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in done:
            start = r.get("start", {})
            lines.append(
                f"| {r['access']} | {r['sigma']:g} | {r['epochs']} | {r['best_epoch']} | "
                f"{r['validation_kept']:.0%} ({start.get(METRIC, math.nan):.0%}) | "
                f"{r['validation_psnr']:.2f} ({start.get('psnr_denoised', math.nan):.2f})"
                f" | {'yes' if r.get('beats_start') else 'no'} |"
            )
        for r in done:
            log = self.out / f"{r['access']}@{r['sigma']:g}" / LOG_FILE
            epochs = [json.loads(line) for line in log.read_text().splitlines()]
            surrogates = [f"accuracy_{name}" for name in self.guides(r["access"])]
            lines += [
                "",
                f"Epochs of {r['access']}@{r['sigma']:g} (lr, loss, Lite2 kept, "
                "guides kept, PSNR): "
                + "; ".join(
                    f"{x['epoch']}: {x['lr']:g}, {x['train_loss']:.4f}, {x[METRIC]:.0%}, "
                    f"{'/'.join(format(x.get(k, math.nan), '.0%') for k in surrogates)}, "
                    f"{x['psnr_denoised']:.2f}"
                    for x in epochs
                ),
            ]
        if s.test_report and done:
            lines += ["", *self.test_lines(done)]
        (self.out / "README.md").write_text("\n".join([*lines, ""]), encoding="utf-8")


    def test_lines(self, done: list[dict[str, Any]]) -> list[str]:
        """The final tables (nothing is chosen on them): per sigma, no denoiser, the MSE
        start and each stage's denoiser on the test crops, then on the test photos whole
        at the sizes a user sends."""
        s = self.scale
        crops = ["## Test photos (final figures; nothing is chosen on them)", "",
                 f"The 126 fixed crops of the 7 test photos at {s.test_size} px, 4 noise draws "
                 "each: PSNR, and how often Lite2 keeps its clean label on one denoised sample "
                 "at the denoiser's σ.", "",
                 "| denoiser | σ | PSNR | label kept |", "|---|---|---|---|"]  # fmt: skip
        whole: list[str] = []
        mse = load_denoiser(self.start)
        for sigma in sorted({r["sigma"] for r in done}):
            models: dict[str, torch.nn.Module | None] = {"none": None, "photo-mse": mse}
            for r in done:
                if r["sigma"] == sigma:
                    models[f"stab+mse {r['access']}"] = load_denoiser(
                        self.out / _file(r["access"], sigma))
            for name, model in models.items():
                f = test_figures(model, s.test_size, sigma=sigma)
                crops.append(f"| {name} | {sigma:g} | {f[f'psnr@{sigma:g}']:.2f} | "
                             f"{f[f'label_kept@{sigma:g}']:.0%} |")  # fmt: skip
            if s.user_sides:
                rows = photo_figures(models, s.user_sides, sigma=sigma)
                whole += photo_lines(rows, list(models), sigma=sigma, draws=4)
        return [*crops, "", *whole]


def run_photo_stab(scale_name: str, out: str | Path, *, start: str | Path,
                   device: str | None = None, only: tuple[str, ...] | None = None,
                   fresh: bool = False) -> Path:  # fmt: skip
    """Run (or resume) the STAB+MSE fine-tuning in ``out`` from the MSE checkpoint ``start``."""
    scale = pick_scale(STAB_SCALES, scale_name)
    return launch(lambda: PhotoStabRun(scale, Path(out), Path(start), device), Path(out), only,
                  fresh)  # fmt: skip
