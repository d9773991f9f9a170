"""Reading certification logs: certified accuracy, average radius, best-sigma tables, curves.

A log is one row per image with at least ``correct`` and ``radius`` (Cohen et al.'s
TSV columns ``idx label predict radius correct time``, as ``smoothapi certify`` and the
authors' code write them), or the JSON Lines that ``smoothapi certify --format json``
writes. An image counts as certified at radius ``r`` when its prediction is correct
and its radius is at least ``r``; abstentions are never correct.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInputError, MissingDependencyError
from .journal import Journal
from .runs import read_log_rows

__all__ = [
    "DEFAULT_RADII",
    "AccuracyGain",
    "CertificationLog",
    "accuracy_gain",
    "attempts_summary",
    "average_certified_radius",
    "best_sigma_table",
    "certified_accuracy",
    "common_images",
    "format_table",
    "gap_closed",
    "images_compared",
    "plot_curves",
    "read_log",
]

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass(frozen=True)
class CertificationLog:
    """The per-image ``correct`` (bool) and ``radius`` arrays of one certification run;
    ``index``: each row's image in the test set (the log's ``idx``), ``None`` for 0, 1, ..."""

    name: str
    correct: np.ndarray
    radius: np.ndarray
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.correct)

    def images(self) -> np.ndarray:
        """The test-set index of each row."""
        return np.arange(len(self)) if self.index is None else self.index

    def only(self, images: np.ndarray) -> CertificationLog:
        """The rows of the test images in ``images`` (in this log's order)."""
        keep = np.isin(self.images(), images)
        return CertificationLog(self.name, self.correct[keep], self.radius[keep],
                                self.images()[keep])


def common_images(logs: Iterable[CertificationLog]) -> np.ndarray:
    """The test images (sorted ``idx``) that every one of ``logs`` certified."""
    shared: np.ndarray | None = None
    for log in logs:
        shared = log.images() if shared is None else np.intersect1d(shared, log.images())
    return np.unique(shared) if shared is not None else np.zeros(0, dtype=int)


def images_compared(logs: Sequence[CertificationLog]) -> int | None:
    """How many images a table over ``logs`` compares (:func:`common_images`), or ``None``
    when every log holds exactly those (nothing to say)."""
    shared = len(common_images(logs))
    return shared if any(len(log) != shared for log in logs) else None


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "1.0")


def read_log(path: str | os.PathLike, name: str | None = None) -> CertificationLog:
    """Read a TSV (Cohen et al.'s columns) or JSON Lines certification log."""
    path = Path(path)
    try:
        rows = read_log_rows(path)
        correct = np.array([_truthy(row["correct"]) for row in rows], dtype=bool)
        radius = np.array([float(row["radius"]) for row in rows], dtype=float)
        index = _indices(rows)
    except InvalidInputError:
        raise
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{path}: not a certification log (needs 'correct' and 'radius' columns): {exc}"
        ) from None
    return CertificationLog(name or path.stem, correct, radius, index)


def _indices(rows: Sequence[Mapping[str, object]]) -> np.ndarray | None:
    """The rows' integer ``idx`` column, or ``None`` when a row has none (or not a number)."""
    try:
        return np.array([int(str(row["idx"])) for row in rows], dtype=int)
    except (KeyError, ValueError):
        return None


def certified_accuracy(
    log: CertificationLog, radii: Sequence[float] | np.ndarray = DEFAULT_RADII
) -> np.ndarray:
    """Share of images certified correctly at each radius (``radius >= r``)."""
    if len(log) == 0:
        raise InvalidInputError(f"{log.name}: empty log")
    r = np.asarray(radii, dtype=float)[:, None]
    return (log.correct[None, :] & (log.radius[None, :] >= r)).mean(axis=1)


def average_certified_radius(log: CertificationLog) -> float:
    """Mean over images of the radius when correct, 0 otherwise (ACR)."""
    return float(np.where(log.correct, log.radius, 0.0).mean())


def _certified_at(log: CertificationLog, radius: float) -> np.ndarray:
    """Per image: certified correctly with at least ``radius``."""
    return log.correct & (log.radius >= radius)


def _check_paired(who: str, *logs: CertificationLog) -> None:
    """Paired statistics need the same test images in the same order in every log."""
    first = logs[0]
    for other in logs[1:]:
        if len(other) != len(first) or not np.array_equal(other.images(), first.images()):
            counts = ", ".join(f"{log.name} has {len(log)}" for log in logs)
            raise InvalidInputError(
                f"{who} needs logs of the same images in the same order ({counts}); "
                "restrict them with CertificationLog.only(common_images(logs))"
            )


def _resampled_images(count: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, count)`` image indices drawn with replacement: a paired bootstrap,
    the same draws applied to every method's log."""
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


@dataclass(frozen=True)
class GapClosed:
    """Share of the gap between a baseline and a reference closed at one radius, with a
    paired-bootstrap confidence interval (``None`` where there is no gap to close), and
    the gap itself: reference minus baseline certified accuracy (a fraction), which says
    how many images the share stands on."""

    radius: float
    share: float | None
    low: float | None
    high: float | None
    gap: float = 0.0


def gap_closed(
    log: CertificationLog,
    baseline: CertificationLog,
    reference: CertificationLog,
    radii: Sequence[float] = (0.25, 0.5),
    *,
    level: float = 0.95,
    resamples: int = 9_999,
    seed: int = 0,
) -> list[GapClosed]:
    """``(log - baseline) / (reference - baseline)`` in certified accuracy at each radius.

    The paper's measure of how much of the white-box (``reference``) over no-denoiser
    (``baseline``) advantage a denoiser recovers. The three logs must cover the same
    images in the same order: the interval is a percentile bootstrap that resamples
    images, keeping each image's three results together, so it reflects which test
    images were drawn (not the certificates' own ``alpha``). Resamples in which the
    reference does not beat the baseline have no share and are left out.
    """
    _check_paired("gap_closed", log, baseline, reference)
    draws = _resampled_images(len(log), resamples, seed)
    out = []
    for r in radii:
        got, low, high = (_certified_at(x, r) for x in (log, baseline, reference))
        whole = float(high.mean() - low.mean())
        if whole <= 0:
            out.append(GapClosed(float(r), None, None, None, whole))
            continue
        point = (got.mean() - low.mean()) / whole
        gap = high[draws].mean(1) - low[draws].mean(1)
        shares = (got[draws].mean(1) - low[draws].mean(1))[gap > 0] / gap[gap > 0]
        tail = (1 - level) / 2 * 100
        lo, hi = np.percentile(shares, [tail, 100 - tail])
        out.append(GapClosed(float(r), float(point), float(lo), float(hi), whole))
    return out


@dataclass(frozen=True)
class AccuracyGain:
    """Certified accuracy of a method minus a baseline's at one radius (a fraction; 0.1 is
    10 percentage points), with a paired-bootstrap confidence interval."""

    radius: float
    gain: float
    low: float
    high: float


def accuracy_gain(
    log: CertificationLog,
    baseline: CertificationLog,
    radii: Sequence[float] = (0.25, 0.5),
    *,
    level: float = 0.95,
    resamples: int = 9_999,
    seed: int = 0,
) -> list[AccuracyGain]:
    """How much more often ``log`` certifies than ``baseline`` at each radius.

    The measure that stands when there is no white-box reference to close a gap to
    (:func:`gap_closed` needs one that beats the baseline). Both logs must cover the same
    images in the same order; the interval is a percentile bootstrap resampling images
    with each image's two results kept together (it reflects which images were drawn,
    not the certificates' ``alpha``).
    """
    _check_paired("accuracy_gain", log, baseline)
    draws = _resampled_images(len(log), resamples, seed)
    tail = (1 - level) / 2 * 100
    out = []
    for r in radii:
        diff = _certified_at(log, r).astype(float) - _certified_at(baseline, r)
        lo, hi = np.percentile(diff[draws].mean(1), [tail, 100 - tail])
        out.append(AccuracyGain(float(r), float(diff.mean()), float(lo), float(hi)))
    return out


def best_sigma_table(
    logs: Mapping[str, Mapping[float, CertificationLog]],
    radii: Sequence[float] = DEFAULT_RADII,
) -> dict[str, list[tuple[float, float, float]]]:
    """Per method and radius, the best sigma's ``(certified, standard accuracy, sigma)``.

    ``logs`` maps method -> sigma -> log. The standard accuracy is the certified
    accuracy at radius 0 of the sigma that won at that radius, as in the paper's tables.
    Logs of different test images are compared on the images all of them certified
    (:func:`common_images`), never one sigma's subset against another's.
    """
    shared = common_images(log for by_sigma in logs.values() for log in by_sigma.values())
    if logs and not len(shared):
        raise InvalidInputError("best_sigma_table: no test image is in every log")
    table = {}
    for method, by_sigma in logs.items():
        by_sigma = {sigma: log.only(shared) for sigma, log in by_sigma.items()}
        certified = {sigma: certified_accuracy(log, radii) for sigma, log in by_sigma.items()}
        standard = {
            sigma: float(certified_accuracy(log, [0.0])[0]) for sigma, log in by_sigma.items()
        }
        rows = []
        for index in range(len(radii)):
            sigma = max(certified, key=lambda s: (certified[s][index], -s))
            rows.append((float(certified[sigma][index]), standard[sigma], sigma))
        table[method] = rows
    return table


def format_table(
    table: Mapping[str, Sequence[tuple[float, float, float]]],
    radii: Sequence[float] = DEFAULT_RADII,
    *,
    style: str = "markdown",
    caption: str = "",
) -> str:
    """The paper's format: ``(standard)certified`` in percent per radius, one row per method."""
    if style not in ("markdown", "latex"):
        raise InvalidInputError(f"style must be 'markdown' or 'latex', got {style!r}")
    header = ["method"] + [f"{r:g}" for r in radii]
    body = [[method] + [f"({100 * std:.0f}){100 * cert:.0f}" for cert, std, _ in cells]
            for method, cells in table.items()]
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return (f"{caption}\n\n" if caption else "") + "\n".join(lines)
    lines = [r"\begin{table}", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{caption}}}")
    lines += [r"\begin{tabular}{l" + "c" * len(radii) + "}", r"\toprule",
              r"$\ell_2$ radius & " + " & ".join(header[1:]) + r" \\", r"\midrule"]
    lines += [" & ".join(row).replace("%", r"\%") + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def plot_curves(
    logs: Sequence[CertificationLog],
    path: str | os.PathLike,
    *,
    max_radius: float | None = None,
    title: str = "",
) -> Path:
    """Certified accuracy against radius, one line per log, saved as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib", "train") from None
    top = max_radius or max(float(log.radius.max(initial=0.0)) for log in logs) * 1.05 or 1.0
    grid = np.linspace(0.0, top, 300)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for log in logs:
        axes.plot(grid, certified_accuracy(log, grid), label=f"{log.name} ({len(log)} images)")
    axes.set_xlabel(r"$\ell_2$ radius")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def attempts_summary(journal: str | os.PathLike) -> list[str]:
    """Lines that account for repeated tries in a journal: per run and method, the images
    tried, the attempts, and the images tried more than once. Keeping the best of ``k``
    attempts of an image at level ``alpha`` holds only at ``k * alpha`` (a union bound)."""
    with Journal(journal) as opened:
        attempts = opened.attempts()
    lines = []
    groups: dict[tuple[str, str], list] = {}
    for attempt in attempts:
        groups.setdefault((attempt.run, attempt.method), []).append(attempt)
    for (run, method), group in groups.items():
        per_image = Counter(a.key.digest for a in group)
        repeated = {digest: k for digest, k in per_image.items() if k > 1}
        alphas = {a.settings.get("alpha") for a in group} - {None}
        line = (f"run {run[:12]} {method}: {len(per_image)} image(s), {len(group)} attempt(s), "
                f"{len(repeated)} image(s) tried more than once")
        if repeated:
            worst = max(repeated.values())
            alpha = f"{max(alphas):g}" if alphas else "alpha"
            line += (f" (up to {worst} times: the best of {worst} tries holds at "
                     f"{worst} x {alpha}, not {alpha})")
        lines.append(line)
    return lines or ["no attempts recorded"]
