"""The sequential test of "R >= r": exact error rates, query counts, and the SDK path.

Exact checks run the dynamic program over count paths (no sampling, no false alarms).
Sampled checks are seeded; each states the false-alarm rate of its statistical test.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import binom, binomtest, norm

from smoothapi import (
    ABSTAIN,
    Adapter,
    InvalidInputError,
    LocalModelAdapter,
    Outcome,
    SequentialTest,
    SmoothedClassifier,
)
from smoothapi.journal import Journal
from smoothapi.sequential import (
    _CERT,
    _GO,
    BETA_PRIOR,
    POINT_MASS,
    expected_queries,
    information_floor,
    log_mixture_upper,
    sequential_law,
    stopping_law,
    type_one_error,
)

from .adapters.fake import CrashingAdapter, FakeAdapter
from .conftest import linear_adapter

# --- exact error rates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("radius", "sigma", "alpha", "max_n"),
    [
        (0.5, 0.25, 0.001, 4000),
        (0.25, 0.25, 0.01, 3000),
        (0.1, 0.5, 0.05, 2000),
        (0.0, 0.25, 0.05, 1000),
    ],
)
@pytest.mark.parametrize("futility", [True, False])
def test_exact_type_one_error_at_the_boundary_is_at_most_alpha(
    radius, sigma, alpha, max_n, futility
):
    error = type_one_error(radius, sigma, alpha, max_n, futility=futility)
    assert 0.0 < error <= alpha  # > 0: the paths do reach real certificates


def _cp_recheck_rule(p_star: float, alpha: float):
    """The INVALID procedure: after each look, certify if the one-sided 1 - alpha
    Clopper-Pearson lower bound exceeds p* (i.e. P[Bin(t, p*) >= k] <= alpha)."""

    def rule(k, t):
        return np.where(binom.sf(k - 1, t, p_star) <= alpha, _CERT, _GO)

    return rule


def test_looking_after_every_batch_cannot_push_the_false_certificate_rate_above_alpha():
    radius, sigma, alpha, max_n = 0.25, 0.25, 0.01, 2000
    p_star = float(norm.cdf(radius / sigma))
    # Without futility, looking more often only adds chances to certify, so batch=1 (a look
    # after every answer, what the SDK does) is the adversary's best schedule.
    rates = {
        b: type_one_error(radius, sigma, alpha, max_n, b, futility=False) for b in (1, 7, 32, 100)
    }
    assert all(rate <= alpha for rate in rates.values())
    assert rates[1] == max(rates.values())
    with_futility = [type_one_error(radius, sigma, alpha, max_n, b) for b in (1, 7, 32, 100)]
    assert max(with_futility) <= alpha
    # The same DP applied to re-checking an ordinary CP bound after every look exceeds alpha
    # several-fold: this is what the test above would catch if SequentialTest did that.
    invalid = {
        b: stopping_law(p_star, _cp_recheck_rule(p_star, alpha), max_n, b).certified
        for b in (1, 7, 32)
    }
    assert invalid[1] > 4 * alpha
    assert all(rate > 2 * alpha for rate in invalid.values())


def _mixture_by_quadrature(k: int, t: int, p_star: float) -> float:
    """log M_t by direct numerical integration, independent of the library's beta functions:
    weight POINT_MASS on p = 1 plus the Beta(BETA_PRIOR) density truncated to [p*, 1]."""
    a, b = BETA_PRIOR
    log_ratio = lambda p: k * math.log(p / p_star) + (t - k) * math.log((1 - p) / (1 - p_star))  # noqa: E731
    density = lambda p: p ** (a - 1) * (1 - p) ** (b - 1)  # noqa: E731
    mass, _ = integrate.quad(density, p_star, 1)
    grid = np.linspace(p_star, 1 - 1e-12, 2001)
    peak = max(log_ratio(p) for p in grid)
    value, _ = integrate.quad(
        lambda p: math.exp(log_ratio(p) - peak) * density(p) / mass,
        p_star,
        1,
        points=[min(max(k / t, p_star), 1)],
        limit=200,
    )
    spread = math.log1p(-POINT_MASS) + peak + math.log(value)
    if k < t:
        return spread
    return float(np.logaddexp(spread, math.log(POINT_MASS) - t * math.log(p_star)))


def _uniform_by_quadrature(k: int, t: int, p_star: float) -> float:
    def ratio(p: float) -> float:
        return math.exp(k * math.log(p / p_star) + (t - k) * math.log((1 - p) / (1 - p_star)))

    return math.log(integrate.quad(ratio, p_star, 1, limit=200)[0] / (1 - p_star))


def test_the_uniform_prior_is_the_closed_form_of_the_first_release():
    p_star = float(norm.cdf(2.0))
    k, t = np.array([0, 5, 290, 300, 1000]), np.array([10, 10, 300, 300, 1010])
    uniform = log_mixture_upper(k, t, p_star, point_mass=0.0, prior=(1.0, 1.0))
    for ki, ti, value in zip(k.tolist(), t.tolist(), uniform, strict=True):
        if ki / ti >= p_star:
            assert value == pytest.approx(_uniform_by_quadrature(ki, ti, p_star), abs=1e-6)
        else:
            assert value <= 0.0


def test_decisions_certify_exactly_when_the_mixture_reaches_one_over_alpha():
    # The library's decision never certifies where the mixture (computed independently,
    # by quadrature) is below 1/alpha, and always certifies where it is above.
    rng = np.random.default_rng(0)
    test = SequentialTest(0.5, 0.25, 0.001, 10**6, futility=False)
    threshold = math.log(1 / test.alpha)
    checked = 0
    for t in rng.integers(1, 3000, 150):
        k_c = test.boundaries(int(t))[1]
        for k in {k_c - 2, k_c - 1, k_c, k_c + 1, int(rng.integers(0, t + 1))}:
            if not 0 <= k <= t:
                continue
            log_m = _mixture_by_quadrature(k, int(t), test.p_star)
            if abs(log_m - threshold) < 1e-6:
                continue
            assert (test.decide(k, int(t)) is Outcome.CERTIFIED) == (log_m >= threshold), (k, t)
            library = float(log_mixture_upper(k, t, test.p_star))
            if k / t >= test.p_star:  # no underflow possible: the exact value
                assert library == pytest.approx(log_m, abs=1e-6)
            else:  # exact, or the tangent bound where the beta function underflows
                assert log_m - 1e-6 <= library <= 0.0
            checked += 1
    assert checked > 400


@pytest.mark.parametrize("futility", [True, False, 0.2])
def test_fast_boundaries_agree_with_the_decision_function(futility):
    test = SequentialTest(0.5, 0.25, 0.001, 5000, futility=futility)
    rule = test._band_rule()
    for t in list(range(1, 400)) + list(range(400, 5001, 97)) + [5000]:
        k = np.arange(t + 1)
        np.testing.assert_array_equal(rule(k, t), test.decide_many(k, np.full_like(k, t)))


def test_feed_stops_at_the_first_crossing_like_one_look_per_sample():
    rng = np.random.default_rng(1)
    for p in (0.5, 0.9, 0.977, 0.99, 1.0):
        hits = rng.random(3000) < p
        fed, stepped = SequentialTest(0.5, 0.25, 0.01, 2500), SequentialTest(0.5, 0.25, 0.01, 2500)
        for start in range(0, 3000, 37):  # arbitrary chunks
            fed.feed(hits[start : start + 37])
        outcome = None
        for hit in hits:
            outcome = stepped.update(int(hit), 1)
            if outcome is not None:
                break
        assert (fed.outcome, fed.t, fed.k) == (outcome, stepped.t, stepped.k)
        assert fed.outcome is not None


# --- expected queries -------------------------------------------------------------------


def test_expected_queries_approach_the_information_floor():
    sigma, radius, alpha = 0.25, 0.5, 0.001
    p_star = float(norm.cdf(radius / sigma))
    # At p_A = 1 the floor is exact: p*^t <= alpha needs t >= 300.2, so 301 samples.
    assert information_floor(1.0, p_star, alpha) == 301
    assert p_star**301 <= alpha < p_star**300
    floor = information_floor(0.999, p_star, alpha)
    assert floor == pytest.approx(366.15, abs=0.01)
    # Selection by one clean query counted in both columns: within 1.2x the floor (issue 15),
    # looking after every sample. The uniform prior of the first release took 1.32x at p_A = 1.
    for p_a in (1.0, 0.999, 0.99):
        used = 1 + expected_queries(p_a, radius, sigma, alpha, 100_000)
        assert used <= 1.2 * (1 + information_floor(p_a, p_star, alpha)), p_a
    assert expected_queries(1.0, radius, sigma, alpha, 100_000) < 350  # a deterministic path
    # Far below p*: futility stops early (about 32 samples at p_A = 0.8), never certifies.
    law = sequential_law(0.8, radius, sigma, alpha, 100_000)
    assert 30 <= law.expected_n <= 34 and law.certified < 1e-30


# --- end to end through SmoothedClassifier ----------------------------------------------


@pytest.mark.filterwarnings("ignore::smoothapi.journal.RepeatedAttemptWarning")
@pytest.mark.parametrize("journaled", [False, True])
def test_sdk_false_certificates_beyond_the_true_radius_occur_at_most_at_rate_alpha(
    digit_images, tmp_path, journaled
):
    # The linear classifier's smoothed radius is exactly d; testing r just above d puts
    # p_A = Phi(d/sigma) at (just below) p*, the hardest null. A larger alpha keeps it fast.
    # False-alarm rate: each binomial test below fires wrongly with probability <= 0.001.
    # Through a journal too: every trial is a new occurrence of the same attempt, fresh noise.
    sigma, d, r, alpha, max_n = 0.25, 0.25, 0.2501, 0.05, 100
    trials = 2000 if journaled else 4000
    x = digit_images[0]
    journal = Journal(tmp_path / "j.sqlite", durability="normal") if journaled else None
    smoothed = SmoothedClassifier(
        linear_adapter(x, d), sigma, batch_size=25, device="cpu", seed=7, journal=journal
    )
    false = 0
    for _ in range(trials):
        result = smoothed.certify(x, n=max_n, alpha=alpha, radius=r, selection="clean")
        false += result.certified and (result.label != 1 or result.radius > d)
    assert binomtest(false, trials, alpha, alternative="greater").pvalue > 0.001
    # And it matches the exact rate of the DP (a look after every sample), so the SDK runs
    # the very test the DP analyses.
    exact = sequential_law(float(norm.cdf(d / sigma)), r, sigma, alpha, max_n).certified
    assert 0.005 < exact <= alpha
    assert binomtest(false, trials, exact).pvalue > 0.001


def test_sdk_certifies_a_radius_well_inside_the_true_one_quickly(digit_images):
    x = digit_images[3]
    smoothed = SmoothedClassifier(linear_adapter(x, 0.5), 0.25, batch_size=32, device="cpu", seed=8)
    results = [
        smoothed.certify(x, n=1000, alpha=0.001, radius=0.2, selection="clean") for _ in range(100)
    ]
    assert sum(r.certified for r in results) >= 95
    assert all(r.label == 1 and r.radius == 0.2 for r in results if r.certified)
    assert all(r.label is ABSTAIN and r.radius == 0.0 for r in results if not r.certified)
    assert np.mean([r.n for r in results]) < 60


IMAGE = torch.full((1, 12, 12), 0.7)

Fake = CrashingAdapter


class Bright(torch.nn.Module):
    """A local surrogate that says 'bright' (index 0) for every image."""

    def forward(self, x):
        return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], dim=1)


def _smoothed(adapter, journal=None, seed=3):
    return SmoothedClassifier(adapter, 0.3, batch_size=16, device="cpu", seed=seed, journal=journal)


def _sent(adapter):
    return sum(map(len, adapter.requests))


@pytest.mark.parametrize("selection", ["clean", "samples", "surrogate"])
def test_queries_equal_what_the_adapter_was_sent(selection):
    fake = Fake()
    if selection == "surrogate":
        chosen = LocalModelAdapter(Bright(), class_names=["bright", "dark"])
    else:
        chosen = selection
    result = _smoothed(fake).certify(
        IMAGE, n0=20, n=2000, alpha=0.001, radius=0.3, selection=chosen
    )
    assert result.certified and result.label == "bright"
    expected_selection = {"clean": 1, "samples": 20, "surrogate": 0}[selection]
    assert result.selection_queries == expected_selection
    assert result.queries == _sent(fake)
    assert result.n <= result.estimation_queries
    assert sum(result.counts.values()) == result.n
    if selection == "clean":
        assert len(fake.requests[0]) == 1  # one query, before any estimation request


def test_radius_mode_selects_with_one_clean_query_by_default_and_fixed_certify_with_n0():
    # The default used to be n0 noisy samples (100 paid queries) in radius mode too; on
    # photos through a vision API one clean query certified as many for a tenth of the cost.
    by_default = _smoothed(Fake()).certify(IMAGE, n0=20, n=2000, alpha=0.001, radius=0.3)
    assert by_default.selection_queries == 1
    fixed = _smoothed(Fake()).certify(IMAGE, n0=20, n=200, alpha=0.001)
    assert fixed.n0 == 20  # CERTIFY keeps its n0 selection samples
    with pytest.raises(InvalidInputError, match="only used with radius"):
        _smoothed(Fake()).certify(IMAGE, n0=20, n=200, alpha=0.001, selection="clean")


def test_tests_stop_sending_soon_after_deciding():
    fake = Fake()
    result = _smoothed(fake).certify(IMAGE, n=10_000, alpha=0.001, radius=0.3, selection="clean")
    # The client asks only for samples the test will surely use: nothing is paid past its stop.
    assert result.estimation_queries == result.n and _sent(fake) == 1 + result.n < 200


class _Bernoulli(Adapter):
    """Answers "a" exactly when Phi(noise / sigma) < p_a on the first pixel: i.i.d.
    Bernoulli(p_a) answers that are a function of the noise. One image a request, up to 8
    in flight, finishing out of order."""

    name = "bernoulli"
    max_batch, max_in_flight = 1, 8

    def __init__(self, p_a, sigma=0.25):
        self.p_a, self.sigma = p_a, sigma
        self.turns = np.random.default_rng(0)
        self.sent = 0

    def top_labels(self, images):
        self.sent += len(images)
        z = (images[:, 0, 0, 0].double() - 0.5) / self.sigma
        return ["a" if q < self.p_a else "b" for q in norm.cdf(z.numpy())]

    def ranked_labels(self, image):
        return [(self.top_labels(image.unsqueeze(0))[0], 1.0)]

    async def atop_labels(self, images):
        for _ in range(int(self.turns.integers(0, 4))):
            await asyncio.sleep(0)
        return self.top_labels(images)


HALF = torch.full((1, 2, 2), 0.5)


def test_what_a_user_pays_with_one_image_a_request_and_eight_in_flight():
    sigma, radius, alpha = 0.25, 0.5, 0.001
    p_star = float(norm.cdf(radius / sigma))
    sure = _Bernoulli(1.0)
    smoothed = SmoothedClassifier(sure, sigma, device="cpu", seed=15)
    result = smoothed.certify(HALF, n=10_000, alpha=alpha, radius=radius, selection="clean")
    # p_A = 1 is one path: 1 + 344 paid queries, within 1.2x the floor (1 + 301), no overshoot
    # although 8 requests may be in flight (the default batch of 256 was 513 before issue 15).
    assert result.certified and result.queries == sure.sent == 1 + 344 == 1 + result.n
    assert result.queries <= 1.2 * (1 + information_floor(1.0, p_star, alpha))
    # p_A = 0.8: futility. Exact mean 33.3 (selection counted); over 200 seeded images the
    # standard error is about 1.6, so a mean above 40 (4 standard errors) has a false-alarm
    # rate under 1e-4.
    unsure = _Bernoulli(0.8)
    smoothed = SmoothedClassifier(unsure, sigma, device="cpu", seed=16)
    results = [
        smoothed.certify(HALF, n=10_000, alpha=alpha, radius=radius, selection="clean")
        for _ in range(200)
    ]
    stops = {Outcome.NOT_CERTIFIABLE, Outcome.CANDIDATE_REJECTED}  # the latter: "b" led
    assert all(r.outcome in stops for r in results)
    assert all(r.estimation_queries == r.n for r in results)
    paid = np.mean([r.queries for r in results])
    assert unsure.sent == sum(r.queries for r in results) and paid <= 40


def test_samples_to_decide_is_the_earliest_stop_of_any_continuation():
    test = SequentialTest(0.5, 0.25, 0.01, 60)
    rng = np.random.default_rng(3)
    for _ in range(40):
        probe = SequentialTest(0.5, 0.25, 0.01, 60)
        probe.feed(rng.random(int(rng.integers(0, 12))) < 0.9)
        if probe.outcome is not None:
            continue
        ahead = probe.samples_to_decide(cap=20)
        # Brute force over every continuation of up to 12 samples.
        earliest = 20
        for m in range(1, 13):
            for hits in range(m + 1):
                if probe.decide(probe.k + hits, probe.t + m) is not None:
                    earliest = min(earliest, m)
        assert ahead == min(earliest, 20, probe.max_n - probe.t)
    test.feed([True] * 60)
    assert test.samples_to_decide(cap=5) == 0


def test_fixed_n_certify_is_unchanged_and_rejects_selection_without_radius():
    fake = Fake()
    result = _smoothed(fake).certify(IMAGE, n0=16, n=80, alpha=0.01)
    assert result.queries == 96 == _sent(fake)
    with pytest.raises(Exception, match="selection"):
        _smoothed(Fake()).certify(IMAGE, selection="clean")


def test_journal_rerun_with_the_same_seed_resends_nothing(tmp_path):
    for selection in ("clean", "samples"):
        path = tmp_path / f"{selection}.sqlite"
        first = Fake()
        result = _smoothed(first, path).certify(
            IMAGE, n0=16, n=2000, radius=0.3, selection=selection
        )
        assert result.queries == _sent(first) > 0
        again = _smoothed(Fake(budget=0), path).certify(
            IMAGE, n0=16, n=2000, radius=0.3, selection=selection
        )
        assert again == result


def test_budget_alias_and_certify_many_with_a_radius():
    from smoothapi import SmoothedClassifier

    images = [torch.full((1, 12, 12), v) for v in (0.95, 0.05)]
    smoothed = SmoothedClassifier(FakeAdapter(), 0.05, device="cpu", seed=0)
    by_budget = smoothed.certify(images[0], n0=8, budget=64, alpha=0.01)
    assert by_budget.n == 64
    outcomes = list(
        SmoothedClassifier(FakeAdapter(), 0.05, device="cpu", seed=0).certify_many(
            images, n=2_000, alpha=0.01, radius=0.05, selection="clean"
        )
    )
    assert [o.certification.outcome for o in outcomes] == ["certified", "certified"]
    assert [o.certification.label for o in outcomes] == ["bright", "dark"]
    assert all(o.queries == o.certification.queries < 2_000 for o in outcomes)


def test_certify_radius_is_the_radius_mode_of_certify():
    x = torch.full((1, 12, 12), 0.95)
    options = dict(n0=8, n=500, alpha=0.01, selection="clean")
    by_method = SmoothedClassifier(FakeAdapter(), 0.05, device="cpu", seed=1).certify_radius(
        x, 0.05, **options
    )
    by_alias = SmoothedClassifier(FakeAdapter(), 0.05, device="cpu", seed=1).certify(
        x, radius=0.05, **options
    )
    assert by_method == by_alias and by_method.certified and by_method.selection_queries == 1
    with pytest.raises(InvalidInputError, match="selection must be"):
        SmoothedClassifier(FakeAdapter(), 0.05, device="cpu").certify_radius(x, 0.05, selection="x")


# --- what an outcome is about -------------------------------------------------------------


class _Labels(Adapter):
    """A base classifier given by a function of the batch; the clean image is exactly IMAGE."""

    name = "labels"
    max_batch = 1
    max_in_flight = 4

    def __init__(self, clean_label, noisy_label):
        self.clean_label, self.noisy_label = clean_label, noisy_label
        self.sent = 0

    def top_labels(self, images):
        self.sent += len(images)
        return [self.clean_label if torch.equal(image, IMAGE) else self.noisy_label
                for image in images]  # fmt: skip

    def ranked_labels(self, image):
        return [(self.top_labels(image.unsqueeze(0))[0], 1.0)]


def test_a_clean_label_the_noise_contradicts_is_reported_as_rejected_not_as_the_radius():
    adapter = _Labels("cat", "dog")
    smoothed = SmoothedClassifier(adapter, 0.25, batch_size=16, device="cpu", seed=0)
    clean = smoothed.certify(IMAGE, n=1000, alpha=0.001, radius=0.5, selection="clean")
    assert (
        clean.outcome is Outcome.CANDIDATE_REJECTED and str(clean.outcome) == "candidate_rejected"
    )
    assert clean.candidate == "cat" and clean.counts == {"dog": clean.n} and clean.abstained
    noisy = smoothed.certify(IMAGE, n0=10, n=1000, alpha=0.001, radius=0.5, selection="samples")
    assert noisy.outcome is Outcome.CERTIFIED and noisy.label == "dog"
    # A candidate that does come back, but too rarely, stays "not certifiable".
    rare = SequentialTest(0.5, 0.25, 0.001, 1000)
    rare.feed([True, False] * 50)
    assert rare.outcome is Outcome.NOT_CERTIFIABLE


def test_no_candidate_is_its_own_outcome_and_tests_nothing():
    adapter = _Labels(None, "dog")
    smoothed = SmoothedClassifier(adapter, 0.25, batch_size=16, device="cpu", seed=0)
    result = smoothed.certify(IMAGE, n=1000, alpha=0.001, radius=0.5, selection="clean")
    assert result.outcome is Outcome.NO_CANDIDATE and result.candidate is None
    assert result.n == 0 and result.estimation_queries == 0 and adapter.sent == 1
    assert result.abstained and result.radius == 0.0
