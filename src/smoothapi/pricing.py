"""What vision-API queries cost, in one table with its sources and dates.

Prices change: check the provider's page before a large run, and pass your own
``prices=`` where your contract differs. Every image in a batch request is billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .certification import max_certifiable_radius
from .errors import InvalidInputError

__all__ = ["PRICES", "Price", "estimate_cost", "plan_run"]


@dataclass(frozen=True)
class Price:
    """USD per 1,000 images at the first paid tier, where the figure came from and when."""

    per_1000: float
    source: str
    checked: str
    verified: bool


PRICES: dict[str, Price] = {
    "azure": Price(
        1.00,
        "Azure AI Vision pricing, S1 tier, tagging (order of magnitude; no primary source read)",
        "2026-11",
        verified=False,
    ),
    "google": Price(
        1.50,
        "Cloud Vision pricing, label detection, units 1,001-5,000,000 "
        "(secondary sources); first 1,000 units a month free",
        "2026-11",
        verified=False,
    ),
    "aws": Price(
        1.00,
        "Amazon Rekognition pricing, DetectLabels, first 1M images a month (secondary sources)",
        "2026-11",
        verified=False,
    ),
    "clarifai": Price(
        1.20,
        "Clarifai pricing, general image recognition (order of magnitude; no primary source read)",
        "2026-11",
        verified=False,
    ),
}


def estimate_cost(provider: str, queries: int, prices: Mapping[str, Price] = PRICES) -> float:
    """USD for ``queries`` images sent to ``provider`` (free tiers ignored)."""
    if provider not in prices:
        raise InvalidInputError(f"no price for {provider!r}; known: {', '.join(sorted(prices))}")
    if queries < 0:
        raise InvalidInputError(f"queries must be >= 0, got {queries}")
    return prices[provider].per_1000 * queries / 1000


def plan_run(
    images: int,
    n0: int,
    n: int,
    alpha: float,
    sigma: float,
    *,
    provider: str | None = None,
    target_radius: float | None = None,
    prices: Mapping[str, Price] = PRICES,
) -> str:
    """A one-line plan (queries, cost, best possible radius) to show before paying.

    Raises :class:`~smoothapi.errors.InvalidInputError`, saying why, when even unanimous
    answers could not certify ``target_radius`` with ``n`` samples.
    """
    best = max_certifiable_radius(n, alpha, sigma)
    if target_radius is not None and best < target_radius:
        raise InvalidInputError(
            f"with n={n} samples at sigma={sigma} and alpha={alpha} the largest radius any "
            f"image can get is {best:.3f} < the {target_radius} asked for; raise n (see "
            "samples_needed) or sigma"
        )
    queries = images * (n0 + n)
    plan = f"{images} image(s) x {n0 + n} queries = {queries:,} queries"
    if provider is not None and provider in prices:
        plan += f", about ${estimate_cost(provider, queries, prices):,.2f} ({provider})"
    return plan + f"; best possible radius {best:.3f}"
