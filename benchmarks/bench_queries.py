"""How many paid queries does certifying a given radius take? Exact figures, and what the
real client pays.

For sigma = 0.25, alpha = 0.001 and each radius r and rate p_A (the base classifier's rate of
returning the right class under noise), print the expected queries per image, selection
counted, of ``certify(image, radius=r, selection="clean")``: 1 clean-image query, then the
sequential test, budget 10,000:

* ``exact``: looking after every answer, by DP over count paths (no sampling);
* ``1/req``: measured through ``SmoothedClassifier`` with the default settings, an adapter of
  one image per request and ``max_in_flight = 8`` (a vision API): what a user pays,
  requests already in flight when the test decides included;
* ``16/req``: the same with 16 images per request (a batch API);
* ``floor``: the information floor log(1/alpha) / KL(p_A || Phi(r / sigma)) plus the
  selection query (exact at p_A = 1: p*^t <= alpha), which no level-alpha test beats on
  average by much, and ``1/req`` as a multiple of it;
* Cohen et al.'s fixed CERTIFY, n0 = 100 + n = 10,000 (always 10,100), and how likely it is
  to certify r (its Clopper-Pearson bound reaching Phi(r / sigma)).

The simulated classifier answers the candidate exactly when Phi(noise / sigma) < p_A for
the noise on its one pixel: i.i.d. Bernoulli(p_A) answers that are a function of the noise,
as a real classifier's are. Measured means are over ``--trials`` images (their standard
error is printed); the run is seeded.

    python benchmarks/bench_queries.py [--trials 600]   # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

import numpy as np
import torch
from scipy.stats import binom, norm

from smoothapi import Adapter, SmoothedClassifier
from smoothapi.certification import _min_successes
from smoothapi.sequential import information_floor, sequential_law

SIGMA, ALPHA, BUDGET = 0.25, 0.001, 10_000
ROWS = [(0.5, p) for p in (1.0, 0.999, 0.99, 0.9, 0.8)] + [(0.25, p) for p in (0.99, 0.9)]
IMAGE = torch.full((1, 2, 2), 0.5)


class Bernoulli(Adapter):
    """Answers "a" with probability ``p_a`` (given the noise), "b" otherwise; answers come
    back after a random number of event-loop turns, so requests finish out of order."""

    name = "bernoulli"
    requests_per_second = None

    def __init__(self, p_a: float, per_request: int, in_flight: int) -> None:
        self.p_a, self.max_batch, self.max_in_flight = p_a, per_request, in_flight
        self.turns = np.random.default_rng(0)

    def top_labels(self, images: torch.Tensor) -> list[str]:
        z = (images[:, 0, 0, 0].double() - 0.5) / SIGMA
        return ["a" if q < self.p_a else "b" for q in norm.cdf(z.numpy())]

    def ranked_labels(self, image: torch.Tensor) -> list[tuple[str, float]]:
        return [(self.top_labels(image.unsqueeze(0))[0], 1.0)]

    async def atop_labels(self, images: torch.Tensor) -> list[str]:
        for _ in range(int(self.turns.integers(0, 4))):
            await asyncio.sleep(0)
        return self.top_labels(images)


def paid_queries(radius: float, p_a: float, per_request: int, trials: int) -> list[int]:
    """Queries paid per image (selection included) through the real client."""
    adapter = Bernoulli(p_a, per_request, in_flight=8)
    with SmoothedClassifier(adapter, SIGMA, None, device="cpu", seed=15) as smoothed:
        results = [
            smoothed.certify(IMAGE, n=BUDGET, alpha=ALPHA, radius=radius, selection="clean")
            for _ in range(trials)
        ]
        assert smoothed.stats.images == sum(r.queries for r in results)  # all paid, all counted
    return [r.queries for r in results]


def fixed_n_certifies(p_a: float, p_star: float, n: int) -> float:
    """P[CERTIFY with n estimation samples reaches radius >= r], exactly."""
    k_min = int(_min_successes(np.array([n]), p_star, ALPHA)[0])
    return float(binom.sf(k_min - 1, n, p_a)) if k_min <= n else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=600, help="images per measured cell")
    trials = parser.parse_args().trials
    header = (
        f"{'r':>5} {'p_A':>6} | {'exact':>7} {'1/req':>13} {'16/req':>13} | {'floor':>6} "
        f"{'1/req/floor':>11} | {'P(cert)':>8} | {'Cohen':>6} {'P(cert)':>8}"
    )
    print(f"paid queries per image (selection counted), sigma={SIGMA}, alpha={ALPHA}, "
          f"budget={BUDGET}, {trials} images per measured cell")  # fmt: skip
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for radius, p_a in ROWS:
        p_star = float(norm.cdf(radius / SIGMA))
        law = sequential_law(p_a, radius, SIGMA, ALPHA, BUDGET)
        measured = []
        for per_request in (1, 16):
            paid = np.array(paid_queries(radius, p_a, per_request, trials))
            measured.append((paid.mean(), paid.std(ddof=1) / math.sqrt(trials)))
        floor = 1 + information_floor(p_a, p_star, ALPHA)
        finite = math.isfinite(floor)
        print(
            f"{radius:5.2f} {p_a:6.3f} | {1 + law.expected_n:7.1f} "
            + " ".join(f"{mean:7.1f} ±{se:4.1f}" for mean, se in measured)
            + f" | {floor if finite else math.inf:6.0f} "
            + (f"{measured[0][0] / floor:11.3f}" if finite else f"{'-':>11}")
            + f" | {law.certified:8.4f} | {10_100:6d} "
            + f"{fixed_n_certifies(p_a, p_star, 10_000):8.4f}"
        )
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
