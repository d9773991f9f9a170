"""The statistics alone: exact values, the abstain convention, and samples_needed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, binom, norm

from smoothapi import (
    ABSTAIN,
    InvalidInputError,
    certify_counts,
    clopper_pearson_lower,
    max_certifiable_radius,
    predict_counts,
    samples_needed,
)


@pytest.mark.parametrize("n, ratio", [(100, 1.5005), (1_000, 2.4633), (10_000, 3.1986)])
def test_unanimous_radius_is_sigma_times_phi_inverse_of_alpha_root(n, ratio):
    for sigma in (0.12, 0.25, 1.0):
        radius = max_certifiable_radius(n, 0.001, sigma)
        assert radius == pytest.approx(sigma * norm.ppf(0.001 ** (1 / n)), rel=1e-12)
        assert radius / sigma == pytest.approx(ratio, abs=5e-5)
        result = certify_counts({"cat": 100}, {"cat": n}, sigma, 0.001)
        assert result.label == "cat"
        assert result.radius == pytest.approx(radius, rel=1e-9)


@pytest.mark.parametrize("k, n", [(1, 1), (3, 10), (99, 100), (100, 100), (5_123, 10_000)])
def test_lower_bound_is_the_beta_quantile(k, n):
    for alpha in (0.001, 0.01, 0.05):
        assert clopper_pearson_lower(k, n, alpha) == beta.ppf(alpha, k, n - k + 1)
    assert clopper_pearson_lower(0, n, 0.001) == 0.0


def test_lower_bound_covers_with_probability_at_least_one_minus_alpha():
    # Exact coverage over all outcomes k for several true rates p.
    n, alpha = 60, 0.05
    bounds = np.array([clopper_pearson_lower(k, n, alpha) for k in range(n + 1)])
    for p in np.linspace(0.01, 0.99, 99):
        miss = binom.pmf(np.arange(n + 1), n, p)[bounds > p].sum()
        assert miss <= alpha + 1e-12


def test_certify_uses_only_estimation_counts_for_the_bound():
    result = certify_counts({3: 90, 5: 10}, {3: 700, 5: 300}, sigma=0.5, alpha=0.001)
    assert result.candidate == 3 and result.label == 3
    assert result.p_a_lower == pytest.approx(beta.ppf(0.001, 700, 301))
    assert result.radius == pytest.approx(0.5 * norm.ppf(result.p_a_lower))
    assert (result.n0, result.n, result.queries) == (100, 1000, 1100)
    assert dict(result.counts) == {3: 700, 5: 300}


def test_certify_abstains_below_one_half_with_radius_zero():
    result = certify_counts({"a": 60, "b": 40}, {"a": 520, "b": 480}, sigma=0.25, alpha=0.001)
    assert result.label is ABSTAIN and result.abstained
    assert result.candidate == "a"
    assert result.radius == 0.0 and result.p_a_lower < 0.5


def test_none_is_never_certified_and_counts_against_the_candidate():
    result = certify_counts({None: 95, "dog": 5}, {None: 100, "dog": 900}, 0.25, 0.001)
    assert result.candidate == "dog" and result.label == "dog"
    assert result.p_a_lower == pytest.approx(beta.ppf(0.001, 900, 101))
    only_none = certify_counts({None: 100}, {None: 1000}, 0.25, 0.001)
    assert only_none.label is ABSTAIN and only_none.candidate is None


def test_predict_abstains_on_ties_and_small_counts_and_never_returns_none():
    assert predict_counts({"a": 50, "b": 50}, 0.001).label is ABSTAIN
    assert predict_counts({"a": 6, "b": 4}, 0.001).label is ABSTAIN
    assert predict_counts({"a": 5}, 0.001).label is ABSTAIN  # p = 2 * 0.5**5 > 0.001
    assert predict_counts({"a": 10}, 0.001).label is ABSTAIN  # p = 2 * 0.5**10 > 0.001
    assert predict_counts({"a": 11}, 0.001).label == "a"  # p = 2 * 0.5**11 < 0.001
    assert predict_counts({None: 1000, "a": 2}, 0.001).label is ABSTAIN
    assert predict_counts({None: 1000}, 0.001).label is ABSTAIN
    winner = predict_counts({None: 900, "a": 80, "b": 20}, 0.001)
    assert winner.label == "a" and winner.p_value <= 0.001
    for counts in ({None: 10}, {None: 60, 1: 40}, {None: 5, 2: 5, 3: 5}):
        assert predict_counts(counts, 0.5).label is not None


def test_predict_p_value_is_the_two_sided_binomial_test():
    result = predict_counts({"x": 30, "y": 12, "z": 3}, 0.01)
    assert result.p_value == pytest.approx(2 * binom.sf(29, 42, 0.5))
    assert result.label == "x"


def _power(n: int, p_star: float, p_a: float, alpha: float) -> float:
    """P[CERTIFY reaches p*] by brute force over k with beta.ppf (independent of the library)."""
    k = np.arange(1, n + 1)
    ok = beta.ppf(alpha, k, n - k + 1) >= p_star
    return float(binom.pmf(k[ok], n, p_a).sum())


@pytest.mark.parametrize(
    "z, p_a, power, expected",
    # From ../shared/reference/statistics.md ("samples needed"), sigma = 0.25, alpha = 0.001.
    [
        (0.5, 0.9, 0.5, 43),
        (0.5, 0.9, 0.9, 71),
        (1.0, 0.9, 0.5, 335),
        (1.0, 0.9, 0.9, 637),
        (1.0, 0.99, 0.9, 67),
        (2.0, 0.99, 0.5, 1054),
        (2.0, 0.99, 0.9, 1953),
        (2.0, 0.999, 0.9, 402),
    ],
)
def test_samples_needed_matches_reference_and_is_minimal(z, p_a, power, expected):
    n = samples_needed(z * 0.25, 0.25, 0.001, p_a, power=power)
    assert n == expected
    p_star = norm.cdf(z)
    assert _power(n, p_star, p_a, 0.001) >= power
    assert all(_power(m, p_star, p_a, 0.001) < power for m in range(max(1, n - 50), n))


@pytest.mark.parametrize("z, floor", [(0.5, 19), (1.0, 40), (2.0, 301), (3.0, 5114)])
def test_samples_needed_when_all_agree_is_the_closed_form_floor(z, floor):
    n = samples_needed(z * 0.25, 0.25, 0.001)
    assert n == floor
    assert (
        max_certifiable_radius(n, 0.001, 0.25)
        >= z * 0.25
        > max_certifiable_radius(n - 1, 0.001, 0.25)
    )


def test_samples_needed_refuses_impossible_requests():
    with pytest.raises(InvalidInputError, match="can never certify"):
        samples_needed(0.5, 0.25, 0.001, p_a=0.9)
    with pytest.raises(InvalidInputError, match="max_n"):
        samples_needed(0.75, 0.25, 0.001, p_a=0.999, max_n=50_000)


@pytest.mark.parametrize(
    "call",
    [
        lambda: certify_counts({"a": 1}, {"a": 1}, sigma=0.0, alpha=0.001),
        lambda: certify_counts({"a": 1}, {"a": 1}, sigma=-1.0, alpha=0.001),
        lambda: certify_counts({"a": 1}, {"a": 1}, sigma=math.nan, alpha=0.001),
        lambda: certify_counts({"a": 1}, {"a": 1}, sigma=0.25, alpha=0.0),
        lambda: certify_counts({"a": 1}, {"a": 1}, sigma=0.25, alpha=1.0),
        lambda: certify_counts({}, {"a": 1}, sigma=0.25, alpha=0.1),
        lambda: certify_counts({"a": 1}, {}, sigma=0.25, alpha=0.1),
        lambda: predict_counts({}, 0.1),
        lambda: max_certifiable_radius(0, 0.001, 0.25),
        lambda: clopper_pearson_lower(11, 10, 0.001),
        lambda: clopper_pearson_lower(5.5, 10, 0.001),
        lambda: clopper_pearson_lower(True, 10, 0.001),
        lambda: clopper_pearson_lower(np.bool_(True), 10, 0.001),
        lambda: clopper_pearson_lower(-1, 10, 0.001),
        lambda: clopper_pearson_lower(5.0, 10, 0.001),
        lambda: samples_needed(-0.1, 0.25, 0.001),
    ],
)
def test_bad_arguments_raise_value_errors(call):
    with pytest.raises(ValueError):
        call()


def test_lower_bound_takes_python_and_numpy_integer_counts_alike():
    expected = clopper_pearson_lower(7, 10, 0.01)
    assert clopper_pearson_lower(np.int64(7), np.int32(10), 0.01) == expected
    assert clopper_pearson_lower(np.uint8(0), 10, 0.01) == 0.0
