"""Prices and the plan shown before a paid run."""

from __future__ import annotations

import pytest

from smoothapi import max_certifiable_radius
from smoothapi.errors import InvalidInputError
from smoothapi.pricing import PRICES, Price, estimate_cost, plan_run


def test_every_provider_has_a_dated_sourced_price():
    assert set(PRICES) == {"azure", "google", "aws", "clarifai"}
    for price in PRICES.values():
        assert price.per_1000 > 0 and price.source and price.checked.startswith("20")
    assert estimate_cost("aws", 10_100) == pytest.approx(10.1 * PRICES["aws"].per_1000)
    mine = {"aws": Price(0.8, "my contract", "2026-11", verified=True)}
    assert estimate_cost("aws", 1000, mine) == pytest.approx(0.8)
    with pytest.raises(InvalidInputError):
        estimate_cost("nobody", 1)


def test_plan_refuses_radii_the_budget_cannot_reach():
    plan = plan_run(10, 100, 1000, 0.001, 0.25, provider="google")
    best = max_certifiable_radius(1000, 0.001, 0.25)
    assert "11,000 queries" in plan and "$16.50" in plan and f"{best:.3f}" in plan
    with pytest.raises(InvalidInputError, match=r"0\.616 < the 0\.75"):
        plan_run(1, 100, 1000, 0.001, 0.25, target_radius=0.75)
