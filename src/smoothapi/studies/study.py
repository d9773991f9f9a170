"""A certification study: the denoisers it trains, what it certifies, and its report.

:class:`Study` holds what the Fashion-MNIST and natural-photo studies share: where each
classifier, denoiser and log lives, training a denoiser per method (MSE; STAB, STAB+MSE
or CLF+MSE through the target in full access or the surrogates in query access),
certifying a method at a sigma, and the report (the paper's best-sigma table, per-sigma
tables and curves, the share of the white-box gap closed, the gain over no denoiser,
the targets' verdicts, denoising examples, ``summary.json``). Stages resume as in
:mod:`~smoothapi.studies.stages`.
"""

from __future__ import annotations

import json
from collections.abc import Sized
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import torch
from torch.utils.data import Dataset

from ..adapters.encoding import to_pil
from ..adapters.local import LocalModelAdapter
from ..analysis import (
    DEFAULT_RADII,
    CertificationLog,
    accuracy_gain,
    best_sigma_table,
    format_table,
    gap_closed,
    images_compared,
    plot_curves,
    read_log,
)
from ..certification import max_certifiable_radius
from ..denoisers import create_denoiser, load_denoiser
from ..runs import LogWriter, certify_many, write_log
from ..smoothing import SmoothedClassifier
from ..training.loop import TrainConfig
from ..training.train import train_denoiser
from .stages import Stages

__all__ = ["METHODS", "Study", "StudyScale", "dataset_size"]


class StudyScale(Protocol):
    """What :class:`Study` reads of a study's scale (each study's dataclass has more)."""

    @property
    def dataset(self) -> str: ...
    @property
    def sigmas(self) -> tuple[float, ...]: ...
    @property
    def extras_sigma(self) -> float: ...
    @property
    def surrogates(self) -> dict[str, Any]: ...
    @property
    def denoiser(self) -> tuple[str, dict]: ...
    @property
    def mse_epochs(self) -> int: ...
    @property
    def stab_epochs(self) -> int: ...
    @property
    def scratch_epochs(self) -> int: ...
    @property
    def mse_lr(self) -> float: ...
    @property
    def stab_lr(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def eval_size(self) -> int: ...
    @property
    def certify_images(self) -> int | None: ...
    @property
    def certify_skip(self) -> int: ...
    @property
    def n0(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def alpha(self) -> float: ...


ScaleT = TypeVar("ScaleT", bound=StudyScale)


def dataset_size(dataset: Dataset[Any]) -> int:
    """The length of a map-style dataset (torch's ``Dataset`` type declares none)."""
    return len(cast(Sized, dataset))


#: Every method a study may certify; the first two have no denoiser.
METHODS = (
    "none",
    "whitebox",
    "mse",
    "stab+mse-full",
    "stab+mse-query",
    "stab-full",
    "clf+mse-full",
    "stab+mse-query-rr",
)



class Study(Stages, Generic[ScaleT]):
    """One run of a certification study in ``out``: its stages (skipped when already done),
    the denoisers it trains, its certifications and its report. A subclass loads its data
    in ``__init__`` (``train``, ``test``, ``channels``) and names its stages in a
    ``run_*`` function."""

    train: Dataset[Any]  # items (image (C, H, W) in [0, 1], label)
    test: Dataset[Any]
    channels: int

    def __init__(self, scale: ScaleT, out: Path, device: str | None) -> None:
        super().__init__(out)
        self.scale, self.device = scale, device

    # --- bookkeeping -------------------------------------------------------------------

    def config(self, epochs: int, lr: float, **extra: Any) -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            batch_size=self.scale.batch_size,
            lr=lr,
            device=self.device,
            progress=False,
            **extra,
        )

    def classifier_path(self, name: str) -> Path:
        return self.out / "classifiers" / name / "classifier.safetensors"

    def denoiser_path(self, method: str, sigma: float) -> Path:
        return self.out / "denoisers" / f"{method}@{sigma:g}" / "denoiser.safetensors"

    def log_path(self, method: str, sigma: float) -> Path:
        return self.out / "logs" / f"{method}@{sigma:g}.tsv"

    def sample_counts(self, method: str) -> tuple[int, int]:
        """The ``(n0, n)`` that ``method`` is certified with."""
        return self.scale.n0, self.scale.n

    # --- stages ------------------------------------------------------------------------

    def classifier(self, name: str) -> LocalModelAdapter:
        return LocalModelAdapter.from_checkpoint(self.classifier_path(name), device=self.device)

    def train_denoiser(self, method: str, sigma: float) -> None:
        scale = self.scale
        objective = method.split("-")[0]
        guides = (
            {"target": self.classifier("target")}
            if method.endswith("full")
            else {name: self.classifier(name) for name in scale.surrogates}
        )
        if objective == "mse":
            guides = {}
        denoiser, epochs, lr = self.initial_denoiser(objective, sigma)
        train_denoiser(
            denoiser,
            self.train,
            sigma=sigma,
            out_dir=self.denoiser_path(method, sigma).parent,
            objective=objective,
            classifiers=guides,
            guidance="round-robin" if method.endswith("-rr") else "mean",
            test_set=self.test,
            eval_classifiers={"target": self.classifier("target")},
            eval_size=scale.eval_size,
            config=self.config(epochs, lr),
            metadata={"dataset": scale.dataset, "method": method},
        )

    def initial_denoiser(self, objective: str, sigma: float) -> tuple[torch.nn.Module, int, float]:
        """The denoiser a stage starts from, with its epochs and learning rate: ``+mse``
        objectives fine-tune the MSE denoiser of the same sigma; others start afresh."""
        scale = self.scale
        if objective.endswith("+mse"):
            start = load_denoiser(self.denoiser_path("mse", sigma))
            return start, scale.stab_epochs, scale.stab_lr
        torch.manual_seed(0)
        name, kwargs = scale.denoiser
        denoiser = create_denoiser(name, in_channels=self.channels, **kwargs)
        epochs = scale.mse_epochs if objective == "mse" else scale.scratch_epochs
        return denoiser, epochs, scale.mse_lr

    def certify(self, method: str, sigma: float) -> dict[str, str] | None:
        """CERTIFY the test images with ``method`` at ``sigma`` into its log; a subclass may
        return what its stage's marker should record."""
        scale = self.scale
        name = f"whitebox@{sigma:g}" if method == "whitebox" else "target"
        denoiser = None
        if method not in ("none", "whitebox"):
            denoiser = load_denoiser(self.denoiser_path(method, sigma))
        adapter = self.classifier(name)
        path = self.log_path(method, sigma)
        path.parent.mkdir(parents=True, exist_ok=True)
        end = dataset_size(self.test)
        if scale.certify_images is not None:
            end = min(end, scale.certify_images * scale.certify_skip)
        indices = range(0, end, scale.certify_skip)
        images, labels = zip(*(self.test[i] for i in indices), strict=True)
        names = adapter.class_names
        with (
            SmoothedClassifier(
                adapter, sigma, denoiser, batch_size=500, device=self.device, seed=0
            ) as smoothed,
            open(path.with_suffix(".part"), "w", encoding="utf-8", newline="") as f,
        ):
            outcomes = certify_many(smoothed, images, scale.n0, scale.n, scale.alpha, shard=False)
            write_log(outcomes, LogWriter(f), indices=indices,
                      labels=[names[label] if names else label for label in labels])  # fmt: skip
        path.with_suffix(".part").rename(path)
        return None

    def runs(self) -> list[tuple[str, float]]:
        """(method, sigma) pairs to certify, the headline sigma first (it sets the targets)."""
        sigmas = sorted(self.scale.sigmas, key=lambda s: s != self.scale.extras_sigma)
        return [
            (method, sigma)
            for sigma in sigmas
            for method in METHODS
            if method in ("none", "whitebox", "mse", "stab+mse-full", "stab+mse-query")
            or sigma == self.scale.extras_sigma
        ]

    def examples(self, sigma: float, count: int = 6) -> None:
        """The paper's Figure 5: rows of clean, noisy, MSE and STAB+MSE denoised images."""
        clean = torch.stack([self.test[i][0] for i in self.example_indices(count)])
        noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
        rows = [clean, noisy]
        for method in self.example_methods:
            path = self.denoiser_path(method, sigma)
            if path.exists():
                with torch.inference_mode():
                    rows.append(load_denoiser(path)(noisy))
        _image_sheet(rows).save(self.out / f"denoising_examples_sigma{sigma:g}.png")

    #: Radii of the report's tables.
    radii: tuple[float, ...] = DEFAULT_RADII

    #: Denoisers shown in the examples, one row each under the clean and noisy rows.
    example_methods: tuple[str, ...] = ("mse", "stab+mse-full")

    #: The share of the white-box gap each method should close at ``extras_sigma``, at
    #: r = 0.25 and 0.5, and what the paper measured (the report says whether each is met).
    targets: dict[str, float] = {"stab+mse-full": 0.90, "stab+mse-query": 0.75}
    targets_source: str = "the paper on CIFAR-10: 94% / 90% in full access, 73% / 40% in query"

    def example_indices(self, count: int) -> list[int]:
        """Test images shown in the examples: the first certified ones."""
        return [i * self.scale.certify_skip for i in range(min(count, dataset_size(self.test)))]

    def report(self) -> None:
        scale = self.scale
        for sigma in scale.sigmas:  # the denoising examples need no certification yet
            if self.denoiser_path("mse", sigma).exists():
                self.examples(sigma)
        done = [(m, s) for m, s in self.runs() if self.log_path(m, s).exists()]
        if not done:
            return
        logs = {(m, s): read_log(self.log_path(m, s), f"{m}@{s:g}") for m, s in done}
        radii = self.radii
        grouped: dict[str, dict[float, Any]] = {}
        for (method, sigma), log in logs.items():
            grouped.setdefault(method, {})[sigma] = log
        counts = {s: len(log) for (_, s), log in logs.items()}  # images certified per sigma
        images = max(counts.values())
        every = f" (every {scale.certify_skip}th)" if scale.certify_skip > 1 else ""
        header = (
            f"{scale.dataset}, CERTIFY n0={scale.n0}, n={scale.n}, alpha={scale.alpha}, "
            f"{_image_counts(counts)}{every}"
        )
        lines = [
            f"# {header}",
            "",
            format_table(
                best_sigma_table(grouped, radii),
                radii,
                caption="Certified accuracy % (standard accuracy), best sigma per radius"
                + _shared_caption(list(logs.values())),
            ),
            "",
        ]
        summary: dict[str, Any] = {
            "dataset": scale.dataset,
            "n0": scale.n0,
            "n": scale.n,
            "alpha": scale.alpha,
            "images": images,
            "methods": {},
        }
        summary["images_per_sigma"] = {f"{s:g}": c for s, c in counts.items()}
        lines += self.sigma_tables(logs, summary["methods"])
        gaps = {f"{sigma:g}": _gaps(self, logs, sigma) for sigma in scale.sigmas}
        gaps = {sigma: by_method for sigma, by_method in gaps.items() if by_method}
        summary["gap_closed"] = gaps
        summary["stage_seconds"] = self.times
        lines += _gap_lines(gaps)
        lines += _target_lines(self, gaps)
        gains = {f"{sigma:g}": _gains(self, logs, sigma) for sigma in scale.sigmas}
        gains = {sigma: by_method for sigma, by_method in gains.items() if by_method}
        summary["gain_over_none"] = gains
        lines += _gain_lines(gains)
        lines += self.extra_sections()
        lines += ["The intervals resample the test images (paired across methods).", ""]
        lines += self.report_notes()
        lines += ["", *_sizing(self, done, counts)]
        lines += ["", *self.reproduce_lines()]
        lines += ["", "Stage wall times (s):", ""]
        lines += [f"- {name}: {seconds:.0f}" for name, seconds in self.times.items()]
        (self.out / "README.md").write_text("\n".join(lines) + "\n")
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))

    def sigma_tables(self, logs: dict, methods: dict[str, Any]) -> list[str]:
        """Per sigma: its table (lines returned), curves (saved) and numbers (into methods)."""
        scale, radii, lines = self.scale, self.radii, []
        for sigma in scale.sigmas:
            at_sigma = {m: {s: log} for (m, s), log in logs.items() if s == sigma}
            table = best_sigma_table(at_sigma, radii)
            if not table:
                continue
            images = max(len(log) for by_sigma in at_sigma.values() for log in by_sigma.values())
            lines += [format_table(table, radii, caption=f"sigma = {sigma:g} (n = {scale.n}, "
                                                         f"{images} images)"), ""]
            plot_curves(
                [log for (m, s), log in logs.items() if s == sigma],
                self.out / f"curves_sigma{sigma:g}.png",
                title=f"sigma = {sigma:g}",
            )
            for method, cells in table.items():
                methods.setdefault(method, {})[f"{sigma:g}"] = {
                    "standard_accuracy": cells[0][1],
                    "certified_accuracy": {
                        f"{r:g}": c for r, (c, _, _) in zip(radii, cells, strict=True)
                    },
                }
        return lines

    #: The command that runs this study (set by its ``run_*`` function).
    command: str = "smoothapi experiment"

    def reproduce_lines(self) -> list[str]:
        """How to run the study again from scratch, and how long its stages took."""
        hours = sum(self.times.values()) / 3600
        return [f"To reproduce from scratch: `{self.command} --out NEW_FOLDER --fresh` (every "
                f"stage reruns; here they took {hours:.1f} h of wall time in all, each summed "
                "over its runs, on 2 CPU cores). A run into this folder resumes: with every "
                "stage finished it only rewrites this report."]  # fmt: skip

    def extra_sections(self) -> list[str]:
        """Report lines a study adds after the gaps (none here)."""
        return []

    def report_notes(self) -> list[str]:
        """What the report says about the setting (none here)."""
        return []

def _compared_radii(study: Study, method: str, sigma: float) -> tuple[float, ...]:
    """Where a row's gap and gain are reported: the paper's r = 0.25 and 0.5, and sigma,
    up to the largest radius its n can certify at sigma (past it every row is 0)."""
    top = max_certifiable_radius(study.sample_counts(method)[1], study.scale.alpha, sigma)
    return tuple(r for r in sorted({sigma, 0.25, 0.5}) if r <= top)


def _gaps(study: Study, logs, sigma: float) -> dict[str, dict[str, dict[str, Any]]]:
    """Method -> radius -> the share of the gap closed at ``sigma`` and its 95%
    bootstrap interval; empty until the no-denoiser and white-box logs exist."""
    if ("none", sigma) not in logs or ("whitebox", sigma) not in logs:
        return {}
    out = {}
    others = [m for m, s in logs if s == sigma and m not in METHODS]
    for method in [*METHODS[2:], *others]:
        radii = _compared_radii(study, method, sigma)
        if (method, sigma) in logs and not method.startswith("api-") and radii:  # other n
            found = gap_closed(logs[method, sigma], logs["none", sigma],
                               logs["whitebox", sigma], radii)
            out[method] = {
                f"{g.radius:g}": {"share": g.share, "ci95": [g.low, g.high], "gap": g.gap}
                for g in found
            }
    return out


def _gains(study: Study, logs, sigma: float) -> dict[str, dict[str, dict[str, Any]]]:
    """Method -> radius -> certified accuracy gained over no denoiser at ``sigma`` (an
    ``api-*`` row over ``api-none``, at the same budget), with its 95% interval."""
    out = {}
    for method, at in logs:
        baseline = "api-none" if method.startswith("api-") else "none"
        radii = _compared_radii(study, method, sigma)
        if at == sigma and method != baseline and (baseline, sigma) in logs and radii:
            found = accuracy_gain(logs[method, sigma], logs[baseline, sigma], radii)
            out[method] = {f"{g.radius:g}": {"gain": g.gain, "ci95": [g.low, g.high],
                                             "over": baseline} for g in found}  # fmt: skip
    return out


def _gain_lines(gains: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The report's lines on certified accuracy gained over no denoiser, per sigma."""
    lines: list[str] = []
    for sigma, by_method in gains.items():
        lines += [f"Certified accuracy gained over no denoiser at sigma {sigma} (percentage "
                  "points, 95% paired-bootstrap interval):", ""]  # fmt: skip
        lines += [
            f"- {method} (over {next(iter(by_r.values()))['over']}): "
            + ", ".join(f"r={r}: {100 * g['gain']:+.1f} ({100 * g['ci95'][0]:+.1f} to "
                        f"{100 * g['ci95'][1]:+.1f})" for r, g in by_r.items())  # fmt: skip
            for method, by_r in by_method.items()
        ]
        lines.append("")
    return lines


def _shared_caption(logs: list[CertificationLog]) -> str:
    """When the sigmas certified different test images: which ones the best-sigma table
    compares (those certified at every sigma)."""
    shared = images_compared(logs)
    return "" if shared is None else f", on the {shared} test images certified at every sigma"


def _image_counts(counts: dict[float, int]) -> str:
    """"500 test images", or "126 test images at sigma 0.25, 42 at 0.12 and 0.5"."""
    by_count: dict[int, list[str]] = {}
    for sigma, count in sorted(counts.items(), key=lambda item: -item[1]):
        by_count.setdefault(count, []).append(f"{sigma:g}")
    if len(by_count) == 1:
        return f"{next(iter(by_count))} test images"
    parts = [f"{count} at {' and '.join(sigmas)}" for count, sigmas in by_count.items()]
    return parts[0].replace(" at ", " test images at sigma ", 1) + ", " + ", ".join(parts[1:])


def _gap_lines(gaps: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The report's lines on the share of the gap each method closed, per sigma; the title
    gives the gap itself (the same for every method), which says what a share stands on."""
    lines: list[str] = []
    for sigma, by_method in gaps.items():
        sizes = {r: g["gap"] for by_r in by_method.values() for r, g in by_r.items()}
        lines += [f"Share of the white-box minus no-denoiser gap closed at sigma {sigma} (the "
                  "gap: " + ", ".join(f"{100 * g:+.1f} points at r={r}" for r, g in sizes.items())
                  + "):", ""]  # fmt: skip
        lines += [
            f"- {method}: "
            + ", ".join(
                f"r={r}: {g['share']:.0%} (95% CI {g['ci95'][0]:.0%} to {g['ci95'][1]:.0%})"
                if g["share"] is not None
                else f"r={r}: none (the white box certifies no more than no denoiser)"
                for r, g in by_r.items()
            )
            for method, by_r in by_method.items()
        ]
        lines.append("")
    return lines


def _target_lines(study: Study, gaps: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Whether each method closes its target share of the gap at ``extras_sigma`` (on the
    point estimate; the intervals are in the gap lines), or why that cannot be told."""
    sigma = f"{study.scale.extras_sigma:g}"
    by_method = gaps.get(sigma, {})
    lines = [f"Targets at sigma {sigma}, share of the gap closed at r = 0.25 and 0.5 "
             f"({study.targets_source}):", ""]  # fmt: skip
    for method, goal in study.targets.items():
        verdicts = []
        for r in ("0.25", "0.5"):
            found = by_method.get(method, {}).get(r)
            if found is None:
                verdicts.append(f"r={r}: not certified yet")
            elif found["share"] is None:
                verdicts.append(f"r={r}: cannot be told (the white box certifies no more "
                                "than no denoiser)")  # fmt: skip
            else:
                met = "met" if found["share"] >= goal else "missed"
                verdicts.append(f"r={r}: {found['share']:.0%}, {met}")
        lines.append(f"- {method} >= {goal:.0%}: " + ", ".join(verdicts))
    return [*lines, ""]

def _image_sheet(rows: list[torch.Tensor]):
    """One PIL image: a row per batch of images, each enlarged to about 96 px."""
    from PIL import Image

    tiles = [[to_pil(image) for image in row] for row in rows]
    width, height = tiles[0][0].size
    zoom = max(1, 96 // max(width, height))
    size = (width * zoom, height * zoom)
    sheet = Image.new(tiles[0][0].mode, (len(tiles[0]) * size[0], len(rows) * size[1]))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile.resize(size, Image.Resampling.NEAREST), (c * size[0], r * size[1]))
    return sheet


def _sizing(study: Study, done: list[tuple[str, float]], counts: dict[float, int]) -> list[str]:
    """Why n and the image count are what they are: the largest certifiable radius per
    sigma, and what the issue's n = 10,000 on 500 images would take at measured speed."""
    scale = study.scale
    radii = ", ".join(
        f"{max_certifiable_radius(scale.n, scale.alpha, s):.3f} at sigma {s:g}"
        for s in scale.sigmas
    )
    lines = [f"With n = {scale.n} the largest certifiable radius is {radii}."]
    per_image = {}
    for with_denoiser in (False, True):
        seconds = [
            study.times[f"certify:{m}@{s:g}"] / counts[s]
            for m, s in done
            if f"certify:{m}@{s:g}" in study.times and not m.startswith("api-")  # other n
            and (m not in ("none", "whitebox")) == with_denoiser
        ]
        if seconds:
            per_image[with_denoiser] = sum(seconds) / len(seconds)
    if per_image:
        scale_up = (scale.n0 + 10_000) / (scale.n0 + scale.n) * 500 / 3600
        lines += [
            "",
            "Measured CERTIFY time per image here: "
            + ", ".join(
                f"{t:.2f} s {'with' if d else 'without'} a denoiser"
                for d, t in per_image.items()
            )
            + ". n = 10,000 on 500 images would take about "
            + " and ".join(f"{t * scale_up:.1f} h" for t in per_image.values())
            + f" per configuration ({len(study.runs())} configurations), hence "
            f"n = {scale.n} on {max(counts.values())} images.",
        ]
    return lines
