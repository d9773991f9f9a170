"""What vision-API queries cost, in one table with its sources and dates.

Prices change: check the provider's page before a large run, and pass your own
``prices=`` where your contract differs. Every image in a batch request is billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidInputError

__all__ = ["PRICES", "Price", "estimate_cost"]


@dataclass(frozen=True)
class Price:
    """USD per 1,000 images at the first paid tier, where the figure came from and when."""

    per_1000: float
    source: str
    checked: str
    verified: bool


PRICES: dict[str, Price] = {
    "azure": Price(1.00, "Azure AI Vision pricing, S1 tier, tagging (order of magnitude; "
                   "no primary source read)", "2026-11", verified=False),
    "google": Price(1.50, "Cloud Vision pricing, label detection, units 1,001-5,000,000 "
                    "(secondary sources); first 1,000 units a month free", "2026-11",
                    verified=False),
    "aws": Price(1.00, "Amazon Rekognition pricing, DetectLabels, first 1M images a month "
                 "(secondary sources)", "2026-11", verified=False),
    "clarifai": Price(1.20, "Clarifai pricing, general image recognition (order of "
                      "magnitude; no primary source read)", "2026-11", verified=False),
}


def estimate_cost(provider: str, queries: int, prices: Mapping[str, Price] = PRICES) -> float:
    """USD for ``queries`` images sent to ``provider`` (free tiers ignored)."""
    if provider not in prices:
        raise InvalidInputError(f"no price for {provider!r}; known: {', '.join(sorted(prices))}")
    if queries < 0:
        raise InvalidInputError(f"queries must be >= 0, got {queries}")
    return prices[provider].per_1000 * queries / 1000
