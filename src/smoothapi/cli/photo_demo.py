"""``smoothapi demo --photos``: a real ImageNet classifier behind a vision API, on photos.

EfficientNet-Lite2 (published ImageNet weights) is served on loopback HTTP as a vision
API, every request carrying PNG images; held-out photos (scikit-image's and
scikit-learn's, never seen by the denoiser) are certified with no denoiser and behind
the shipped photo denoiser for sigma (``default_denoiser``), side by side. The labels
certified are the API's own answers on the clean photos, as in the paper's vision-API
experiments. A PNG grid shows each photo clean, one noisy sample, and that sample denoised, with the
certificate under each column beside the API's clean answer, and a title saying what the
radius means.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image, ImageDraw, ImageFont

from .. import photos
from ..adapters.encoding import to_pil
from ..adapters.http import HTTPAdapter
from ..adapters.local import LocalModelAdapter
from ..certification import Certification, Label, max_certifiable_radius
from ..denoisers import default_denoiser, load_denoiser
from ..denoisers.noise_level import denoise
from ..smoothing import RateLimits, SmoothedClassifier
from ..testing import LoopbackProvider
from ..zoo import load_classifier

__all__ = ["run_photo_demo"]

SIZE = 160  # the size the natural-photo study certifies at (denoisers trained on 96-px crops)


def _photo_crops(count: int) -> tuple[list[str], torch.Tensor]:
    """The whole-photo (centre square) crop of the first ``count`` held-out photos."""
    chosen = photos.available_photos("test")[:count]
    tiles, _ = photos.test_crops([photos.load_photo(p) for p in chosen], SIZE)
    first = [i * photos.CROPS_PER_PHOTO for i in range(len(chosen))]
    return [p.name for p in chosen], torch.from_numpy(tiles[first]).float() / 255


COLUMNS = ("clean photo: the API's answer", "one noisy sample: certified\nwith no denoiser",
           "that sample denoised: certified\nbehind the photo denoiser")


def _grid(names, answers, clean, noisy, denoised, results, path: Path, title: str) -> None:
    """The picture: a title saying what r means, column headers, one row per photo (its
    name on the left): the clean photo with the API's answer on it, one noisy sample with
    the certificate without the denoiser, that sample denoised with the certificate behind
    it; each certificate beside the API's clean answer, marked where they differ."""
    zoom, caption, label_width = 2, 36, 110
    cell = SIZE * zoom
    font, bold = ImageFont.load_default(size=12), ImageFont.load_default(size=15)
    head, header = 48, 34
    width = label_width + 3 * cell
    sheet = Image.new("RGB", (width, head + header + len(names) * (cell + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.multiline_text((8, 6), title, fill="black", font=bold, spacing=4)
    for col, text in enumerate(COLUMNS):
        draw.multiline_text((label_width + col * cell + 4, head + 2), text, fill="black",
                            font=font)  # fmt: skip
    for row, name in enumerate(names):
        top = head + header + row * (cell + caption)
        draw.text((6, top + cell // 2 - 8), name, fill="black", font=bold)
        answer = str(answers[row])
        captions = [(f"API: {answer}", "")]
        for cert in results[row].values():
            if cert.abstained:
                captions.append(("abstains (no certificate)", ""))
                continue
            same = "= the clean answer" if cert.label == answers[row] else f"≠ clean: {answer}"
            captions.append((f"{cert.label}, r = {cert.radius:.2f}", same))
        for col, image in enumerate((clean[row], noisy[row], denoised[row])):
            left = label_width + col * cell
            tile = to_pil(image.clamp(0, 1)).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (left, top))
            for line, text in enumerate(captions[col]):
                draw.text((left + 3, top + cell + 2 + 16 * line), text[:44], fill="black",
                          font=font)  # fmt: skip
    sheet.save(path)


def run_photo_demo(
    out_png: str | Path = "photo_demo.png",
    *,
    count: int = 6,
    sigma: float = 0.25,
    n0: int = 20,
    n: int = 100,
    alpha: float = 0.001,
    seed: int = 0,
    denoiser: str | Path | None = None,
    out: TextIO | None = None,
) -> dict[str, list[Certification]]:
    """Certify ``count`` held-out photos through a loopback vision API, without and with
    the shipped photo denoiser for ``sigma``; print a table, write the grid, return the
    certificates per column."""
    out = sys.stdout if out is None else out
    names, clean = _photo_crops(count)
    target = load_classifier("efficientnet_lite2", input_size=SIZE)
    shipped = load_denoiser(denoiser or default_denoiser(sigma) or "photo-mse")
    answers = target.top_labels(clean)
    print(f"smoothapi demo --photos: EfficientNet-Lite2 (ImageNet) served as a vision API on "
          f"loopback; {len(names)} held-out photos at {SIZE} px, sigma={sigma}, n0={n0}, n={n}, "
          f"alpha={alpha} (largest radius {max_certifiable_radius(n, alpha, sigma):.2f}).",
          file=out)
    denoisers = {"no denoiser": None, "photo denoiser": shipped}
    columns = _certify_through_api(target, denoisers, names, clean, answers, sigma=sigma, n0=n0,
                                   n=n, alpha=alpha, seed=seed, out=out)  # fmt: skip
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        denoised = denoise(shipped, noisy, sigma)
    results = [{c: columns[c][i] for c in columns} for i in range(len(names))]
    title = (f"EfficientNet-Lite2 as a vision API; sigma = {sigma:g}, n0 = {n0}, n = {n}, "
             f"alpha = {alpha:g}.\nr: no image within l2 distance r (pixels in [0, 1]) of the "
             f"photo changes the certified answer, with probability >= {1 - alpha:g}.")
    _grid(names, answers, clean, noisy, denoised, results, Path(out_png), title)
    _print_summary(columns, answers, out)
    print(f"picture: {Path(out_png).resolve()}", file=out)
    return columns


def _certify_through_api(
    target: LocalModelAdapter,
    denoisers: dict[str, torch.nn.Module | None],
    names: list[str],
    clean: torch.Tensor,
    answers: Sequence[Label | None],
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    seed: int,
    out: TextIO,
) -> dict[str, list[Certification]]:
    """Serve ``target`` on loopback HTTP as a vision API and certify each photo through it
    once per column of ``denoisers`` (column name -> denoiser, ``None`` for none), printing
    a table row per photo as it is done; returns the certificates per column."""
    columns: dict[str, list[Certification]] = {column: [] for column in denoisers}
    with LoopbackProvider(target) as api:
        http = HTTPAdapter(api.url("generic-batch"), send="json", field="images", max_batch=16,
                           batch_path="results")
        limits = RateLimits(max_in_flight=4)
        smoothers = {column: SmoothedClassifier(http, sigma, denoiser, seed=seed, limits=limits)
                     for column, denoiser in denoisers.items()}  # fmt: skip
        header = f"{'photo':<14} {'API answer':<22}" + "".join(f"{c:>30}" for c in columns)
        print(header, file=out)
        for name, image, answer in zip(names, clean, answers, strict=True):
            cells = []
            for column, smoothed in smoothers.items():
                started = time.perf_counter()
                cert = smoothed.certify(image, n0=n0, n=n, alpha=alpha)
                columns[column].append(cert)
                label = str(cert.label)[:18]
                verdict = "abstain" if cert.abstained else f"{label} {cert.radius:.2f}"
                cells.append(f"{verdict:>24} {time.perf_counter() - started:4.0f}s")
            print(f"{name:<14} {str(answer)[:22]:<22}" + "".join(cells), file=out)
        for smoothed in smoothers.values():
            smoothed.close()
    return columns


def _print_summary(columns: dict[str, list[Certification]], answers: Sequence[Label | None],
                   out: TextIO) -> None:  # fmt: skip
    """One line per column: how many photos were certified with the API's own clean answer,
    and the mean radius."""
    for column, certs in columns.items():
        kept = sum(not c.abstained and c.label == a for c, a in zip(certs, answers, strict=True))
        print(f"{column}: {kept}/{len(certs)} certified with the API's own answer, mean radius "
              f"{sum(c.radius for c in certs) / len(certs):.2f}", file=out)
