"""The held-out test photos whole, at the sizes a user sends, certified through the API.

The natural-photo study certifies fixed 160-px crops. A user sends a whole photo, its
shorter side somewhere between 224 and 512 px, and wants to know whether the certificate
is the answer the API gives on that photo. Here each test photo, upright, is scaled to
each of ``sides`` and certified as it is (the denoiser runs at the image's size) through
the loopback vision API, the API's clean answer asked once beside it (``clean=True``, a
paid query). The report's table puts that answer, with the model's probability for it,
beside each certificate, and gives certified accuracy against it over all photos and over
those the model is confident about (probability at least :data:`CONFIDENT`).

* :func:`~.photo_figures.whole_photos`: the images and each one's clean answer;
* :func:`whole_lines`: the report's section, from the logs the study wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..analysis import read_log_rows
from .photo_figures import CONFIDENT, whole_photos

__all__ = ["WHOLE_METHODS", "whole_lines", "whole_log_path", "whole_photos"]

#: What the whole photos are certified with: no denoiser, and the shipped default.
WHOLE_METHODS = ("none", "photo-mse")
#: The radii the section reports certified accuracy at.
WHOLE_RADII = (0.0, 0.12, 0.25, 0.5)


def whole_log_path(out: Path, method: str, sigma: float, side: int) -> Path:
    """Where the study writes ``method``'s log for the photos at shorter side ``side``."""
    return out / "whole-photos" / f"{method}@{sigma:g}_{side}px.tsv"


def _cell(row: Mapping[str, str]) -> str:
    """One certificate: the label and radius, or "abstain"; marked when it is not the
    API's clean answer."""
    if row["predict"] in ("-1", "", "abstain"):
        return "abstain"
    mark = "" if row["predict"] == row["clean"] else " ✗"
    return f"{row['predict']} r={float(row['radius']):.2f}{mark}"


def whole_lines(out: Path, meta: Mapping[int, Sequence[Mapping[str, Any]]], sigma: float,
                methods: Sequence[str], n0: int, n: int, alpha: float) -> list[str]:  # fmt: skip
    """The report's section for the whole photos, from the logs under ``out`` (``meta``:
    side -> :func:`whole_photos`' records). Empty when no log is written yet."""
    logs = {(m, side): read_log_rows(whole_log_path(out, m, sigma, side))
            for side in meta for m in methods if whole_log_path(out, m, sigma, side).exists()}
    if not logs:
        return []
    shown = [m for m in methods if any((m, side) in logs for side in meta)]
    lines = ["## Test photos whole, at the sizes a user sends", "",
             f"Each test photo upright, its shorter side scaled to the size given, certified "
             f"as it is through the loopback vision API at σ = {sigma:g} (n0 = {n0}, n = {n}, "
             f"α = {alpha:g}; the denoiser runs at the image's size). Clean answer: the API's "
             "answer on the clean photo (one more query, `clean=True`), with the model's "
             "probability for it. A certificate that is not that answer is marked ✗.", "",
             "| photo | side | clean answer (probability) | " + " | ".join(shown) + " |",
             "|---|---|---|" + "---|" * len(shown)]  # fmt: skip
    for side, records in meta.items():
        for i, record in enumerate(records):
            cells = [_cell(logs[m, side][i]) if (m, side) in logs else "–" for m in shown]
            lines.append(f"| {record['photo']} | {side} | {record['answer']} "
                         f"({record['probability']:.2f}) | " + " | ".join(cells) + " |")
    lines += ["", "Certified accuracy against the clean answer, % (photos):", "",
              "| side | photos | method | " + " | ".join(f"r = {r:g}" for r in WHOLE_RADII)
              + " |", "|---|---|---|" + "---|" * len(WHOLE_RADII)]  # fmt: skip
    for side, records in meta.items():
        for subset, chosen in (("all", range(len(records))),
                               ("confident", [i for i, r in enumerate(records)
                                              if r["probability"] >= CONFIDENT])):  # fmt: skip
            chosen = list(chosen)
            for m in shown:
                if (m, side) not in logs or not chosen:
                    continue
                rows = [logs[m, side][i] for i in chosen]
                shares = [sum(r["predict"] == r["clean"] and float(r["radius"]) >= radius
                              for r in rows) / len(rows) for radius in WHOLE_RADII]  # fmt: skip
                lines.append(f"| {side} | {subset} ({len(rows)}) | {m} | "
                             + " | ".join(f"{100 * s:.0f}" for s in shares) + " |")
    lines += ["", f"Confident: the clean answer's probability is at least {CONFIDENT:g}. "
              "With a handful of photos these shares are coarse: one photo moves them by "
              f"{100 / max(len(r) for r in meta.values()):.0f} points.", ""]  # fmt: skip
    return lines
