"""Fixed-sample statistics: CERTIFY, PREDICT and Clopper-Pearson bounds over label counts.

Pure functions (numpy/scipy, no torch); the sequential test of one radius is in
:mod:`smoothapi.sequential`.

The smoothed classifier is ``g(x) = argmax_c P[f(x + delta) = c]`` with
``delta ~ N(0, sigma^2 I)``. Cohen et al. (2019) give two Monte Carlo algorithms:

* **CERTIFY** (:func:`certify_counts`): choose the candidate class ``c_A`` from ``n0``
  *selection* samples, then count how often ``c_A`` comes back in ``n`` *separate*
  estimation samples. With probability at least ``1 - alpha`` over the noise,
  ``p_A >= p_A_lower`` (one-sided Clopper-Pearson), and then ``g`` returns ``c_A``
  everywhere within ``R = sigma * Phi^-1(p_A_lower)`` of ``x``. If
  ``p_A_lower < 1/2`` it abstains.
* **PREDICT** (:func:`predict_counts`): from ``n`` samples, return the top class
  only if a two-sided binomial test of its count against the runner-up's rejects
  equality at level ``alpha``; otherwise abstain. The probability of returning a
  class other than ``g(x)`` is at most ``alpha``.

Labels are any hashable values (ints for local models, strings for vision APIs).
A base classifier may answer ``None`` ("no label"): ``None`` is counted as a vote
for no class, so it lowers ``p_A`` but can never be selected or predicted.
Abstention is reported with the single sentinel :data:`ABSTAIN`.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import beta, binom, binomtest, norm

from .errors import InvalidInputError

__all__ = [
    "ABSTAIN",
    "Certification",
    "Label",
    "Prediction",
    "certify_counts",
    "clopper_pearson_lower",
    "max_certifiable_radius",
    "predict_counts",
    "radius_from_p_lower",
    "samples_needed",
]

Label = Hashable


class _Abstain(enum.Enum):
    ABSTAIN = "abstain"

    def __repr__(self) -> str:
        return "ABSTAIN"

    __str__ = __repr__


ABSTAIN = _Abstain.ABSTAIN
"""Returned as the label of a :class:`Certification` or :class:`Prediction` that abstains."""


@dataclass(frozen=True)
class Certification:
    """The outcome of CERTIFY for one image.

    ``label`` is the certified class, or :data:`ABSTAIN`. When it is a class, then
    with probability at least ``1 - alpha`` the smoothed classifier returns
    ``label`` for every input within l2 distance ``radius`` (in the [0, 1] pixel
    space of the image) of the one certified. ``radius`` is ``0.0`` on abstention.
    ``candidate`` is the class chosen from the selection samples, abstained or not.
    ``counts`` / ``selection_counts`` map labels (``None`` included) to how often
    the base classifier returned them in the ``n`` estimation / ``n0`` selection
    samples. ``queries`` is the number of base-classifier evaluations used.
    """

    label: Label
    radius: float
    p_a_lower: float
    n0: int
    n: int
    alpha: float
    sigma: float
    candidate: Label | None = None
    counts: Mapping[Label, int] = field(default_factory=dict)
    selection_counts: Mapping[Label, int] = field(default_factory=dict)

    @property
    def abstained(self) -> bool:
        return self.label is ABSTAIN

    @property
    def queries(self) -> int:
        return self.n0 + self.n


@dataclass(frozen=True)
class Prediction:
    """The outcome of PREDICT for one image.

    ``label`` is the top class, or :data:`ABSTAIN` when the binomial test of the
    top two counts gives ``p_value > alpha`` (ties always abstain). It is never
    ``None``. With probability at least ``1 - alpha`` a returned class is ``g(x)``.
    """

    label: Label
    p_value: float
    n: int
    alpha: float
    counts: Mapping[Label, int] = field(default_factory=dict)

    @property
    def abstained(self) -> bool:
        return self.label is ABSTAIN

    @property
    def queries(self) -> int:
        return self.n


# --- argument checks shared by the package -------------------------------------------


def _is_real(value: object) -> bool:
    """A real number: Python or numpy int or float, but not a bool (``True`` is no sigma)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_integer(value: object) -> bool:
    """A Python or numpy integer, but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


# Noise is drawn in float32: sigma must be a normal float32 number, and small enough that
# sigma times any normal draw (|z| < 2**10, far beyond what a generator yields) plus a pixel
# stays finite.
SIGMA_MIN = float(np.finfo(np.float32).tiny)
SIGMA_MAX = float(np.finfo(np.float32).max) / 2**10


def check_sigma(sigma: float) -> float:
    if not _is_real(sigma) or not math.isfinite(sigma) or sigma <= 0:
        raise InvalidInputError(f"sigma must be a finite number > 0, got {sigma!r}")
    if not SIGMA_MIN <= sigma <= SIGMA_MAX:
        raise InvalidInputError(
            f"sigma must lie in [{SIGMA_MIN:.3g}, {SIGMA_MAX:.3g}] (noise is drawn in "
            f"float32), got {sigma!r}"
        )
    return float(sigma)


def check_alpha(alpha: float) -> float:
    if not _is_real(alpha) or not 0.0 < alpha < 1.0:
        raise InvalidInputError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def check_count(name: str, value: int) -> int:
    if not _is_integer(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_seed(seed: int | None) -> int | None:
    """``None`` (draw a fresh seed), or a non-negative Python or numpy integer, as an int."""
    if seed is None:
        return None
    if not _is_integer(seed) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_radius(radius: float) -> float:
    if not _is_real(radius) or not math.isfinite(radius) or radius < 0:
        raise InvalidInputError(f"radius must be a finite number >= 0, got {radius!r}")
    return float(radius)


# --- the statistics ---------------------------------------------------------------------


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial rate from ``k`` of ``n``.

    ``k`` and ``n`` are counts: Python or numpy integers (not bools), ``0 <= k <= n``.

    Equals ``scipy.stats.beta.ppf(alpha, k, n - k + 1)`` and ``0.0`` when ``k == 0``.
    """
    n = check_count("n", n)
    alpha = check_alpha(alpha)
    if not _is_integer(k) or not 0 <= k <= n:
        raise InvalidInputError(f"k must be an integer count in [0, n={n}], got {k!r}")
    k = int(k)
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def radius_from_p_lower(p_a_lower: float, sigma: float) -> float:
    """``sigma * Phi^-1(p_a_lower)``: the l2 radius a lower bound on ``p_A`` certifies."""
    return float(sigma * norm.ppf(p_a_lower))


def _ranked(counts: Mapping[Label, int]) -> list[tuple[Label, int]]:
    """Real labels (not ``None``) by count, largest first; ties keep the order first seen."""
    return sorted(
        ((c, k) for c, k in counts.items() if c is not None and k > 0), key=lambda item: -item[1]
    )


def top_label(counts: Mapping[Label, int]) -> Label | None:
    """The most frequent real label (ties to the first seen), or ``None`` if there is none."""
    ranked = _ranked(counts)
    return ranked[0][0] if ranked else None


def certify_counts(
    selection_counts: Mapping[Label, int],
    estimation_counts: Mapping[Label, int],
    sigma: float,
    alpha: float,
) -> Certification:
    """CERTIFY from two *independent* sets of base-classifier answers.

    ``selection_counts`` (the ``n0`` samples) only choose the candidate ``c_A``;
    ``estimation_counts`` (the ``n`` samples) alone bound ``p_A``. Reusing one set for
    both inflates the false-certificate rate, so the caller must draw them apart.
    """
    sigma, alpha = check_sigma(sigma), check_alpha(alpha)
    n0, n = sum(selection_counts.values()), sum(estimation_counts.values())
    check_count("n0", n0)
    check_count("n", n)
    candidate = top_label(selection_counts)
    p_a_lower = 0.0
    if candidate is not None:
        p_a_lower = clopper_pearson_lower(estimation_counts.get(candidate, 0), n, alpha)
    certified = candidate is not None and p_a_lower >= 0.5
    return Certification(
        label=candidate if certified else ABSTAIN,
        radius=radius_from_p_lower(p_a_lower, sigma) if certified else 0.0,
        p_a_lower=p_a_lower,
        n0=n0,
        n=n,
        alpha=alpha,
        sigma=sigma,
        candidate=candidate,
        counts=dict(estimation_counts),
        selection_counts=dict(selection_counts),
    )


def predict_counts(counts: Mapping[Label, int], alpha: float) -> Prediction:
    """PREDICT: the top class if the binomial test of the top two counts gives p <= alpha."""
    alpha = check_alpha(alpha)
    n = check_count("n", sum(counts.values()))
    ranked = _ranked(counts)
    if not ranked:
        return Prediction(ABSTAIN, 1.0, n, alpha, dict(counts))
    n_a = ranked[0][1]
    n_b = ranked[1][1] if len(ranked) > 1 else 0
    p_value = float(binomtest(n_a, n_a + n_b, 0.5).pvalue)
    label = ranked[0][0] if p_value <= alpha else ABSTAIN
    return Prediction(label, p_value, n, alpha, dict(counts))


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can return with ``n`` estimation samples: all of them agree.

    ``sigma * Phi^-1(alpha ** (1 / n))``, e.g. ``1.5005 * sigma`` for ``n = 100`` and
    ``3.1986 * sigma`` for ``n = 10_000`` at ``alpha = 0.001``. ``0.0`` when even
    unanimity cannot certify (``alpha ** (1/n) < 1/2``).
    """
    n, alpha, sigma = check_count("n", n), check_alpha(alpha), check_sigma(sigma)
    p_a_lower = alpha ** (1.0 / n)
    return radius_from_p_lower(p_a_lower, sigma) if p_a_lower >= 0.5 else 0.0


def _min_successes(n: np.ndarray, p_star: float, alpha: float) -> np.ndarray:
    """Smallest k with ``clopper_pearson_lower(k, n, alpha) >= p_star`` per n (may exceed n)."""
    # Duality: the lower bound reaches p* exactly when P[Bin(n, p*) >= k] <= alpha.
    k = binom.isf(alpha, n, p_star).astype(np.int64) + 1
    # Guard the boundary against rounding in isf.
    k = np.where(binom.sf(k - 1, n, p_star) > alpha, k + 1, k)
    k = np.where((k > 1) & (binom.sf(k - 2, n, p_star) <= alpha), k - 1, k)
    return k


def samples_needed(
    radius: float,
    sigma: float,
    alpha: float,
    p_a: float = 1.0,
    *,
    power: float = 0.5,
    max_n: int = 10_000_000,
) -> int:
    """Estimation samples ``n`` (selection excluded) to certify ``radius`` before paying for them.

    Returns the smallest ``n`` such that, when the base classifier returns the selected
    class with probability ``p_a``, CERTIFY reaches a radius ``>= radius`` with
    probability at least ``power``. With ``p_a = 1`` this is the floor where all ``n``
    samples agree: ``ceil(log(alpha) / log(Phi(radius / sigma)))`` (301 for
    ``radius=0.5, sigma=0.25, alpha=0.001``).

    Raises :class:`~smoothapi.errors.InvalidInputError` when ``p_a <= Phi(radius/sigma)``
    (no ``n`` suffices) or when more than ``max_n`` samples would be needed.
    """
    sigma, alpha = check_sigma(sigma), check_alpha(alpha)
    if not math.isfinite(radius) or radius < 0:
        raise InvalidInputError(f"radius must be a finite number >= 0, got {radius!r}")
    if not 0.0 < p_a <= 1.0:
        raise InvalidInputError(f"p_a must lie in (0, 1], got {p_a!r}")
    if not 0.0 < power <= 1.0:
        raise InvalidInputError(f"power must lie in (0, 1], got {power!r}")
    p_star = float(norm.cdf(radius / sigma))
    if p_a <= p_star:
        raise InvalidInputError(
            f"radius {radius} at sigma {sigma} needs p_A > Phi(radius/sigma) = {p_star:.6g}; "
            f"p_a = {p_a} can never certify it"
        )
    floor = max(1, math.ceil(math.log(alpha) / math.log(p_star)))
    if p_a == 1.0:
        if floor > max_n:
            raise InvalidInputError(f"needs {floor} samples, more than max_n={max_n}")
        return floor
    start, chunk = floor, max(1024, floor)
    while start <= max_n:
        n = np.arange(start, min(start + chunk, max_n + 1), dtype=np.int64)
        k = _min_successes(n, p_star, alpha)
        achieved = np.where(k <= n, binom.sf(k - 1, n, p_a), 0.0)
        hits = np.flatnonzero(achieved >= power)
        if hits.size:
            return int(n[hits[0]])
        start, chunk = start + chunk, chunk * 2
    raise InvalidInputError(
        f"certifying radius {radius} at sigma {sigma} with p_a = {p_a} needs more than "
        f"max_n={max_n} samples"
    )
