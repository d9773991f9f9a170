"""Certifying one given radius with the fewest queries: an anytime-valid sequential test.

:class:`SequentialTest` tests "the smoothed classifier's radius is at least ``r``" from
Bernoulli samples, may look after every sample, and stops as soon as it decides;
:class:`RadiusCertification` is its outcome for one image. The exact operating
characteristics of any such stopping rule (:func:`stopping_law`, :func:`expected_queries`,
:func:`type_one_error`) come from dynamic programming over count paths.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special
from scipy.stats import binom, norm

from .certification import ABSTAIN, Label, check_alpha, check_count, check_radius, check_sigma
from .errors import InvalidInputError

__all__ = [
    "Outcome",
    "RadiusCertification",
    "SequentialTest",
    "StoppingLaw",
    "bernoulli_kl",
    "expected_queries",
    "information_floor",
    "log_mixture_lower",
    "log_mixture_upper",
    "sequential_law",
    "stopping_law",
    "type_one_error",
]


class Outcome(str, enum.Enum):
    """How a sequential test of "R >= r" stopped."""

    CERTIFIED = "certified"
    """The mixture martingale reached ``1/alpha``: ``p_A > Phi(r / sigma)``, so ``R >= r``."""
    NOT_CERTIFIABLE = "not_certifiable"
    """The futility martingale reached ``1/beta``: the data favour ``p_A < Phi(r / sigma)``."""
    CANDIDATE_REJECTED = "candidate_rejected"
    """As :attr:`NOT_CERTIFIABLE`, and another class came back more often than the
    candidate in the samples the test used: they speak against the candidate itself (e.g.
    a clean-image label that the noise does not keep), not just against the radius;
    ``selection="samples"`` would test the noisy majority instead."""
    NO_CANDIDATE = "no_candidate"
    """The selection returned no class (``None``): there was nothing to test, and no
    estimation sample was drawn."""
    BUDGET_EXHAUSTED = "budget_exhausted"
    """``max_n`` samples were used and neither martingale crossed its threshold."""

    def __str__(self) -> str:
        return self.value


# Integer codes for the vectorised decision (numpy arrays of outcomes).
_GO, _CERT, _FUTILE, _BUDGET = 0, 1, 2, 3
_CODES = {
    _CERT: Outcome.CERTIFIED,
    _FUTILE: Outcome.NOT_CERTIFIABLE,
    _BUDGET: Outcome.BUDGET_EXHAUSTED,
}


def _log(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(values)


#: The certifying statistic's prior on ``[p*, 1]``: weight :data:`POINT_MASS` on ``p = 1``
#: and the rest a ``Beta(*BETA_PRIOR)`` density truncated to ``[p*, 1]`` (which leans
#: towards 1). Any prior on ``[p*, 1]`` keeps the level-``alpha`` guarantee (see
#: :class:`SequentialTest`); this one was tuned for few queries at ``p_A`` near 1.
POINT_MASS = 0.2
BETA_PRIOR = (1.0, 0.7)


def log_mixture_upper(
    k: np.ndarray | int,
    t: np.ndarray | int,
    p_star: float,
    point_mass: float = POINT_MASS,
    prior: tuple[float, float] = BETA_PRIOR,
) -> np.ndarray:
    """``log M_t``, the certifying mixture likelihood ratio, after ``k`` hits in ``t``.

    ``M_t = w L_t(1) + (1 - w) int_{p*}^1 L_t(p) pi(p) dp`` with ``w = point_mass``,
    ``L_t(p) = (p/p*)^k ((1-p)/(1-p*))^(t-k)`` and ``pi`` the ``Beta(a, b)`` density
    truncated to ``[p*, 1]`` (``prior = (a, b)``). ``L_t(1) = p*^-t`` when ``k = t``, else 0;
    the integral is ``B(k+a, t-k+b) I^c_{p*}(k+a, t-k+b) / (B(a, b) I^c_{p*}(a, b)
    p*^k (1-p*)^(t-k))``, with ``I^c`` the upper regularised incomplete beta function.
    ``point_mass=0, prior=(1, 1)`` is the uniform prior on ``[p*, 1]``.

    ``I^c`` can underflow to 0 only when ``k / t < p*``. There the log-integrand
    ``h(p) = log L_t(p)`` is concave with ``h(p*) = 0`` and ``h'(p*) < 0``, so ``h <= 0`` on
    ``[p*, 1]`` and ``M_t <= 1 < 1/alpha``: the bound ``log 1 = 0`` is returned (for the
    uniform prior the sharper ``min(1, 1 / (|h'(p*)| (1-p*)))``); no decision depends on it.
    """
    k, t = np.asarray(k, dtype=float), np.asarray(t, dtype=float)
    a, b = prior
    big_a, big_b = k + a, t - k + b
    tail = _log(special.betaincc(big_a, big_b, p_star))
    norm_log = special.betaln(a, b) + math.log(special.betaincc(a, b, p_star))
    value = (
        special.betaln(big_a, big_b) + tail - norm_log
        - k * math.log(p_star) - (t - k) * math.log1p(-p_star)
    )  # fmt: skip
    bound = _tangent_bound(k, t, p_star, upper=True) if prior == (1.0, 1.0) else 0.0
    spread = np.where(tail > -np.inf, value, bound)
    if point_mass <= 0.0:
        return spread
    at_one = np.where(k == t, -t * math.log(p_star), -np.inf)
    if point_mass >= 1.0:
        return at_one
    return np.logaddexp(math.log(point_mass) + at_one, math.log1p(-point_mass) + spread)


def _tangent_bound(k: np.ndarray, t: np.ndarray, p_star: float, upper: bool) -> np.ndarray:
    """``log min(1, 1 / (|h'(p*)| * width))``: the mixture where its beta function underflows."""
    slope = np.abs(k / p_star - (t - k) / (1.0 - p_star))
    width = 1.0 - p_star if upper else p_star
    with np.errstate(divide="ignore"):
        return np.minimum(0.0, -np.log(slope * width))


def log_mixture_lower(k: np.ndarray | int, t: np.ndarray | int, p_star: float) -> np.ndarray:
    """``log M'_t``: uniform prior on ``[0, p*]`` against ``p*`` (the futility statistic).

    ``M'_t = (1/p*) * int_0^{p*} (p/p*)^k ((1-p)/(1-p*))^(t-k) dp``. Where the regularised
    incomplete beta underflows (only when ``k / t > p*``, where ``M'_t <= 1``) the tangent
    bound ``min(1, 1 / (h'(p*) p*))`` is returned, as in :func:`log_mixture_upper`.
    """
    k, t = np.asarray(k, dtype=float), np.asarray(t, dtype=float)
    a, b = k + 1.0, t - k + 1.0
    head = _log(special.betainc(a, b, p_star))
    value = special.betaln(a, b) + head - a * math.log(p_star) - (t - k) * math.log1p(-p_star)
    return np.where(head > -np.inf, value, _tangent_bound(k, t, p_star, upper=False))


class SequentialTest:
    """An anytime-valid sequential test of "the smoothed classifier's radius is at least r".

    ``R >= r`` holds when ``p_A > p* = Phi(r / sigma)``, so the test is of
    ``H1: p_A > p*`` against ``H0: p_A <= p*`` from Bernoulli samples ("did the base
    classifier return the candidate class on this noisy copy?").

    **Certifying.** After ``t`` samples with ``k`` hits the statistic is a mixture of
    likelihood ratios over alternatives ``p >= p*`` (:func:`log_mixture_upper`)::

        L_t(p) = (p/p*)^k ((1-p)/(1-p*))^(t-k)
        M_t    = w L_t(1) + (1 - w) int_{p*}^1 L_t(p) pi(p) dp

    with weight ``w = 0.2`` on ``p = 1`` and ``pi`` a ``Beta(1, 0.7)`` density truncated to
    ``[p*, 1]``. **Why it is valid, for any prior on** ``[p*, 1]``: ``L_t(p)`` multiplies one
    factor per sample, and when the true rate is ``q <= p*`` each factor has expectation
    ``q p/p* + (1-q)(1-p)/(1-p*) = 1 + (q - p*)(p - p*)/(p*(1-p*)) <= 1``
    (``q - p* <= 0 <= p - p*``; at ``p = 1`` the factor is ``x_i / p*``, of mean ``q / p* <= 1``).
    So each ``L_t(p)`` is a nonnegative supermartingale with ``L_0 = 1``, and so is any
    average of them with weights summing to 1, such as ``M_t``. Ville's inequality gives
    ``P[sup_t M_t >= 1/alpha] <= alpha`` under ``H0``: stopping the *first* time
    ``M_t >= 1/alpha`` certifies falsely with probability at most ``alpha`` at *any*
    stopping time, however often (every sample) and for whatever reason one looks, and
    however the budget is later extended on the same stream. The prior only decides how
    fast the test is where: the point mass makes ``p_A = 1`` certify after 344 samples
    (a level-``alpha`` test needs at least 301 at ``r = 2 sigma``, ``alpha = 0.001``), the
    Beta part covers ``p_A < 1``. ``M_t`` increases with ``k`` (each ``L_t(p)`` does, as
    ``p/p* >= 1 >= (1-p)/(1-p*)``), so the test certifies iff ``k`` reaches a boundary.

    **Futility.** The mirror statistic ``M'_t`` (uniform prior on ``[0, p*]`` against
    ``p*``) is a supermartingale when ``q >= p*``; stopping when ``M'_t >= 1/beta``
    abandons an image whose ``p_A`` is really above ``p*`` with probability at most
    ``beta``. It only ever ends a test early as "not certifiable", so it cannot create
    a false certificate and does not touch the ``alpha`` guarantee. ``futility=True``
    (default) uses ``beta = alpha``: giving up on a certifiable image is then as unlikely as
    a false certificate, and an image with ``p_A`` well below ``p*`` still stops early (about
    32 samples on average at ``p_A = 0.8``, ``r = 0.5``, ``sigma = 0.25``,
    ``alpha = 0.001``). A float sets ``beta`` itself (larger stops sooner); ``False`` never
    stops for futility.

    **Budget.** After ``max_n`` samples without a decision the outcome is
    "budget_exhausted".

    Feed it with :meth:`update` (a batch, judged at its end) or :meth:`feed` (judged after
    every sample). Certification is checked before futility.
    """

    def __init__(
        self,
        radius: float,
        sigma: float,
        alpha: float,
        max_n: int,
        futility: bool | float = True,
    ) -> None:
        self.radius = check_radius(radius)
        self.sigma = check_sigma(sigma)
        self.alpha = check_alpha(alpha)
        self.max_n = check_count("max_n", max_n)
        if futility is True:
            self.beta: float | None = self.alpha
        elif futility is False or futility is None:
            self.beta = None
        else:
            self.beta = check_alpha(futility)
        self.p_star = float(norm.cdf(self.radius / self.sigma))
        if not self.p_star < 1.0:
            raise InvalidInputError(
                f"radius {radius} at sigma {sigma}: Phi(r/sigma) rounds to 1, "
                "nothing can certify it"
            )
        self.log_threshold = math.log(1.0 / self.alpha)
        self.log_futility = None if self.beta is None else math.log(1.0 / self.beta)
        self.k = 0
        self.t = 0
        self.outcome: Outcome | None = None
        self._ahead = (-1, -1, -1, 0)  # (k, t, cap) -> samples_to_decide, for the last state

    def decide_many(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The decision at each ``(k, t)`` as integer codes (0 go on, 1 certified,
        2 not certifiable, 3 budget exhausted). Every other method uses this one."""
        k, t = np.broadcast_arrays(np.asarray(k, dtype=np.int64), np.asarray(t, dtype=np.int64))
        codes = np.where(t >= self.max_n, _BUDGET, _GO)
        if self.log_futility is not None:
            codes = np.where(
                log_mixture_lower(k, t, self.p_star) >= self.log_futility, _FUTILE, codes
            )
        codes = np.where(log_mixture_upper(k, t, self.p_star) >= self.log_threshold, _CERT, codes)
        return codes

    def _log_upper(self, k: int, t: int) -> float:
        return float(log_mixture_upper(k, t, self.p_star))

    def _log_lower(self, k: int, t: int) -> float:
        return float(log_mixture_lower(k, t, self.p_star))

    def boundaries(self, t: int, hint: tuple[int, int] | None = None) -> tuple[int, int]:
        """``(k_f, k_c)`` at time ``t``: the test certifies iff ``k >= k_c`` and (if it does
        not certify) stops for futility iff ``k <= k_f``; ``k_c = t + 1`` / ``k_f = -1`` when
        it cannot. Found by walking from ``hint`` (the last boundaries, shifted), using that
        ``M_t`` increases and ``M'_t`` decreases in ``k``; :meth:`decide_many` is the
        definition, and the tests check the two agree."""
        guess_f, guess_c = hint if hint is not None else (round(self.p_star * t),) * 2
        k = min(max(guess_c, 0), t)
        if self._log_upper(k, t) >= self.log_threshold:
            while k > 0 and self._log_upper(k - 1, t) >= self.log_threshold:
                k -= 1
        else:
            while k <= t and self._log_upper(k, t) < self.log_threshold:
                k += 1
        k_c = k
        if self.log_futility is None:
            return -1, k_c
        k = min(max(guess_f, 0), t)
        if self._log_lower(k, t) >= self.log_futility:
            while k < t and self._log_lower(k + 1, t) >= self.log_futility:
                k += 1
        else:
            while k >= 0 and self._log_lower(k, t) < self.log_futility:
                k -= 1
        return k, k_c

    def _band_rule(self) -> Rule:
        """A :data:`Rule` for :func:`stopping_law` from :meth:`boundaries` (fast, same answers)."""
        last: list[tuple[int, int, int]] = []  # the previous look's (t, k_f, k_c)

        def rule(k: np.ndarray, t: int) -> np.ndarray:
            hint = None
            if last:
                t_prev, k_f, k_c = last[0]
                shift = round(self.p_star * (t - t_prev))
                hint = (k_f + shift, k_c + shift)
            k_f, k_c = self.boundaries(t, hint)
            last[:] = [(t, k_f, k_c)]
            codes = np.where(k <= k_f, _FUTILE, _GO)
            codes = np.where(k >= k_c, _CERT, codes)
            if t >= self.max_n:
                codes = np.where(codes == _GO, _BUDGET, codes)
            return codes

        return rule

    def samples_to_decide(self, cap: int) -> int:
        """The fewest further samples after which the test could stop, at most ``cap``
        (0 once stopped): a sampler may ask for that many at once knowing the test will use
        every one, whatever they say. The earliest stop is that of all hits (certifying is
        monotone in ``k``) or of all misses (futility is), so two short scans find it."""
        if self.outcome is not None:
            return 0
        if self._ahead[:3] != (self.k, self.t, cap):
            m = np.arange(1, min(cap, self.max_n - self.t) + 1)
            hits = self.decide_many(self.k + m, self.t + m)
            misses = self.decide_many(np.full_like(m, self.k), self.t + m)
            stops = np.flatnonzero((hits != _GO) | (misses != _GO))
            self._ahead = (self.k, self.t, cap, int(m[stops[0]]) if stops.size else len(m))
        return self._ahead[3]

    def decide(self, k: int, t: int) -> Outcome | None:
        """The outcome if the test looks at ``k`` hits of ``t`` samples, or ``None`` to go on."""
        if not 0 <= k <= t:
            raise InvalidInputError(f"need 0 <= k <= t, got k={k!r}, t={t!r}")
        return _CODES.get(int(self.decide_many(np.array([k]), np.array([t]))[0]))

    def update(self, k_new: int, t_new: int) -> Outcome | None:
        """Add ``k_new`` hits of ``t_new`` samples and look once, at the end of the batch.

        Samples past ``max_n`` are not counted (the budget ends the test at ``max_n``).
        """
        if self.outcome is not None:
            return self.outcome
        if not 0 <= k_new <= t_new:
            raise InvalidInputError(f"need 0 <= k_new <= t_new, got {k_new!r}, {t_new!r}")
        if self.t + t_new > self.max_n:
            raise InvalidInputError(
                f"{self.t} + {t_new} samples exceed max_n={self.max_n}; use feed() to truncate"
            )
        self.k, self.t = self.k + k_new, self.t + t_new
        self.outcome = self.decide(self.k, self.t)
        return self.outcome

    def feed(self, hits: Sequence[bool] | np.ndarray) -> Outcome | None:
        """Add samples one at a time (1 = the candidate came back) and look after each.

        Stops at the first sample where the test stops; later samples are ignored, so
        :attr:`t` and :attr:`k` are where it stopped. Returns the outcome or ``None``.
        """
        if self.outcome is not None:
            return self.outcome
        hits = np.asarray(hits, dtype=np.int64)[: self.max_n - self.t]
        if hits.size == 0:
            return None
        ks = self.k + np.cumsum(hits)
        ts = self.t + np.arange(1, hits.size + 1)
        codes = self.decide_many(ks, ts)
        stops = np.flatnonzero(codes)
        last = int(stops[0]) if stops.size else hits.size - 1
        self.k, self.t = int(ks[last]), int(ts[last])
        self.outcome = _CODES.get(int(codes[last]))
        return self.outcome


@dataclass(frozen=True)
class RadiusCertification:
    """The outcome of certifying one given radius ``r`` with :class:`SequentialTest`.

    ``label`` is the candidate class when ``outcome`` is "certified" and :data:`ABSTAIN`
    otherwise; ``radius`` is ``r`` when certified and ``0.0`` otherwise. With probability at
    least ``1 - alpha`` a certified ``label`` is ``g(x')`` for every ``||x' - x||_2 < r``.
    ``n`` is the number of estimation samples the test used (it stopped after the
    ``n``-th); ``counts`` are their labels. ``estimation_queries`` counts the estimation
    samples evaluated, which can exceed ``n`` when requests already in flight finished
    after the test stopped; ``selection_queries`` is 0 (local surrogate), 1 (clean image)
    or ``n0`` (noisy samples). ``queries`` is their sum.
    """

    label: Label
    radius: float
    outcome: Outcome
    n: int
    alpha: float
    sigma: float
    tested_radius: float
    candidate: Label | None = None
    counts: Mapping[Label, int] = field(default_factory=dict)
    selection_queries: int = 0
    estimation_queries: int = 0
    max_n: int = 0

    @property
    def certified(self) -> bool:
        return self.outcome is Outcome.CERTIFIED

    @property
    def abstained(self) -> bool:
        return self.label is ABSTAIN

    @property
    def queries(self) -> int:
        return self.selection_queries + self.estimation_queries


# --- exact operating characteristics, by dynamic programming over count paths ---------------


@dataclass(frozen=True)
class StoppingLaw:
    """Exact law of a stopping rule: probabilities of each outcome and ``E[N]``."""

    certified: float
    not_certifiable: float
    budget_exhausted: float
    expected_n: float
    unresolved: float = 0.0
    """Mass dropped once the running paths weighed less than ``tol``: each of the other
    probabilities is exact to within it (it is counted as budget exhausted at ``max_n``, so
    ``expected_n`` is an upper bound, within ``unresolved * max_n``)."""


Rule = Callable[[np.ndarray, int], np.ndarray]


def stopping_law(
    p_a: float, rule: Rule, max_n: int, batch: int = 1, tol: float = 1e-15
) -> StoppingLaw:
    """Run ``rule`` exactly over every count path of ``Bernoulli(p_a)`` samples.

    The rule looks after every ``batch`` samples (and at ``max_n``): ``rule(k, t)`` gets
    the array of hit counts ``k`` still running at time ``t`` and returns codes
    (0 go on, 1 certified, 2 not certifiable, 3 budget); paths that stop are absorbed.
    At ``max_n`` every remaining path counts as budget exhausted unless it certifies or
    is declared futile there. The surviving mass lives on a band of ``k`` between the two
    boundaries, so the cost is ``O(max_n / batch * band)``. Once the running mass is below
    ``tol`` it is dropped and reported as :attr:`StoppingLaw.unresolved`.
    """
    max_n, batch = check_count("max_n", max_n), check_count("batch", batch)
    if not 0.0 <= p_a <= 1.0:
        raise InvalidInputError(f"p_a must lie in [0, 1], got {p_a!r}")
    mass, low = np.ones(1), 0  # mass[j] = P[k = low + j, still running]
    t = 0
    probs = np.zeros(4)
    expected = 0.0
    unresolved = 0.0
    while t < max_n and mass.size:
        step = min(batch, max_n - t)
        kernel = binom.pmf(np.arange(step + 1), step, p_a)
        mass, t = np.convolve(mass, kernel), t + step
        codes = np.asarray(rule(low + np.arange(mass.size), t))
        if t >= max_n:
            codes = np.where(codes == _GO, _BUDGET, codes)
        for code in (_CERT, _FUTILE, _BUDGET):
            stopped = float(mass[codes == code].sum())
            probs[code] += stopped
            expected += t * stopped
        mass = np.where(codes == _GO, mass, 0.0)
        alive = np.flatnonzero(mass > 0)
        if alive.size == 0:
            break
        mass, low = mass[alive[0] : alive[-1] + 1], low + int(alive[0])
        if t < max_n and mass.sum() < tol:
            unresolved = float(mass.sum())
            probs[_BUDGET] += unresolved
            expected += max_n * unresolved
            break
    return StoppingLaw(
        float(probs[_CERT]), float(probs[_FUTILE]), float(probs[_BUDGET]), expected, unresolved
    )


def sequential_law(
    p_a: float,
    radius: float,
    sigma: float,
    alpha: float,
    max_n: int,
    batch: int = 1,
    futility: bool | float = True,
) -> StoppingLaw:
    """Exact :class:`StoppingLaw` of :class:`SequentialTest` looking every ``batch`` samples."""
    test = SequentialTest(radius, sigma, alpha, max_n, futility)
    return stopping_law(p_a, test._band_rule(), max_n, batch)


def expected_queries(
    p_a: float,
    radius: float,
    sigma: float,
    alpha: float,
    max_n: int,
    batch: int = 1,
    futility: bool | float = True,
) -> float:
    """Exact expected estimation samples of :class:`SequentialTest` (selection excluded)."""
    return sequential_law(p_a, radius, sigma, alpha, max_n, batch, futility).expected_n


def type_one_error(
    radius: float,
    sigma: float,
    alpha: float,
    max_n: int,
    batch: int = 1,
    futility: bool | float = True,
    p_a: float | None = None,
) -> float:
    """Exact probability of certifying ``radius`` when ``p_A = p_a`` (default the boundary
    ``Phi(radius / sigma)``, the worst case of ``H0``); at most ``alpha`` by Ville. Mass
    left below the DP's tolerance is added, so this is an upper bound (within 1e-15)."""
    p_star = float(norm.cdf(check_radius(radius) / check_sigma(sigma)))
    p = p_star if p_a is None else p_a
    law = sequential_law(p, radius, sigma, alpha, max_n, batch, futility)
    return law.certified + law.unresolved


def bernoulli_kl(p: float, q: float) -> float:
    """``KL(Bernoulli(p) || Bernoulli(q))`` in nats (``0 log 0 = 0``)."""
    total = 0.0
    if p > 0:
        total += p * math.log(p / q) if q > 0 else math.inf
    if p < 1:
        total += (1 - p) * math.log((1 - p) / (1 - q)) if q < 1 else math.inf
    return total


def information_floor(p_a: float, p_star: float, alpha: float) -> float:
    """``log(1/alpha) / KL(p_a || p*)``: roughly the fewest samples any level-``alpha`` test
    needs on average to certify when the rate is ``p_a`` (Wald). ``inf`` when ``p_a <= p*``.
    At ``p_a = 1`` it is exact and a whole number: a test that certifies after ``t``
    samples all of which hit certifies falsely with probability ``p*^t`` at ``p_A = p*``, so
    it needs ``p*^t <= alpha``, ``t >= log(1/alpha) / log(1/p*)`` (301 for ``p* = Phi(2)``,
    ``alpha = 0.001``)."""
    alpha = check_alpha(alpha)
    if not 0.0 < p_star < 1.0:
        raise InvalidInputError(f"p_star must lie in (0, 1), got {p_star!r}")
    if not 0.0 <= p_a <= 1.0:
        raise InvalidInputError(f"p_a must lie in [0, 1], got {p_a!r}")
    if p_a <= p_star:
        return math.inf
    floor = math.log(1.0 / alpha) / bernoulli_kl(p_a, p_star)
    return float(math.ceil(floor - 1e-9)) if p_a == 1.0 else floor
