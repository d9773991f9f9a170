"""How many paid queries does certifying a given radius take? Exact, no sampling.

For sigma = 0.25, alpha = 0.001 and each radius r and rate p_A (the base classifier's rate of
returning the right class under noise), print the expected queries per image, selection
counted, of

* ``certify(image, radius=r, selection="clean")``: 1 clean-image query, then the
  sequential test looking after every answer, budget 10,000 (exact, by DP over count paths);
* Cohen et al.'s fixed CERTIFY, n0 = 100 + n = 10,000 (always 10,100), and how likely it is
  to certify r (its Clopper-Pearson bound reaching Phi(r / sigma));
* the vision-API setting of the paper, n0 = 20 + n = 100, whose radius can never exceed
  0.375 at sigma = 0.25 (so it never certifies r = 0.5);
* the information floor log(1/alpha) / KL(p_A || Phi(r / sigma)), which no level-alpha test
  beats on average by much, and the sequential test's ratio to it.

Fixed-n columns assume the selection picks the right class (p_A >= 0.8 here).

    python benchmarks/bench_queries.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy.stats import binom, norm

from smoothapi.certification import _min_successes
from smoothapi.sequential import information_floor, sequential_law

SIGMA, ALPHA, BUDGET = 0.25, 0.001, 10_000
RADII = (0.25, 0.5)
RATES = (0.8, 0.9, 0.99, 0.999, 1.0)


def fixed_n_certifies(p_a: float, p_star: float, n: int) -> float:
    """P[CERTIFY with n estimation samples reaches radius >= r], exactly."""
    k_min = int(_min_successes(np.array([n]), p_star, ALPHA)[0])
    return float(binom.sf(k_min - 1, n, p_a)) if k_min <= n else 0.0


def main() -> None:
    header = (
        f"{'r':>5} {'p_A':>6} | {'sequential':>10} {'P(cert)':>8} {'/floor':>7} | "
        f"{'floor':>7} | {'Cohen':>6} {'P(cert)':>8} | {'API':>4} {'P(cert)':>8}"
    )
    print(f"expected queries per image (selection counted), sigma={SIGMA}, alpha={ALPHA}")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for radius in RADII:
        p_star = float(norm.cdf(radius / SIGMA))
        for p_a in RATES:
            law = sequential_law(p_a, radius, SIGMA, ALPHA, BUDGET)
            queries = 1 + law.expected_n
            floor = information_floor(p_a, p_star, ALPHA)
            ratio = f"{queries / floor:7.2f}" if floor != float("inf") else f"{'-':>7}"
            floor_text = f"{floor:7.0f}" if floor != float("inf") else f"{'inf':>7}"
            print(
                f"{radius:5.2f} {p_a:6.3f} | {queries:10.1f} {law.certified:8.4f} {ratio} | "
                f"{floor_text} | {10_100:6d} {fixed_n_certifies(p_a, p_star, 10_000):8.4f} | "
                f"{120:4d} {fixed_n_certifies(p_a, p_star, 100):8.4f}"
            )
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
