"""Which candidate selection should radius certification use by default? Queries paid and
outcomes on real photos through a loopback vision API.

``certify(image, radius=r)`` first picks the candidate class, then runs the sequential
test of that one radius. The candidate can come from

* ``samples``: ``n0`` noisy samples through the API (paid);
* ``clean``: ONE query on the clean image (paid);
* a local surrogate (here EfficientNet-Lite0, free): its answer on the clean image, when
  the API's labels are the surrogate's classes (ImageNet names, as the zoo and the
  loopback speak).

All three are sound: the candidate never reuses an estimation sample. This prints, per
selection and radius, the mean queries paid per image (selection included, counted by
the client as the provider bills them), how many images each outcome took, and how often
the certified label is the API's own answer on the clean photo. The API is
EfficientNet-Lite2 served on loopback HTTP (one image per request, 8 in flight, as a
vision API), the photos the held-out test crops at 160 px, sigma = 0.25, alpha = 0.001,
budget n = 500, behind the shipped photo denoiser as the CLI runs by default.

    python benchmarks/bench_selection.py [--crops 21] [--radii 0.25 0.5] [--n0 100]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch

from smoothapi import SmoothedClassifier, photos
from smoothapi.adapters.http import HTTPAdapter
from smoothapi.denoisers import default_denoiser, load_denoiser
from smoothapi.dispatch import RateLimits
from smoothapi.testing import LoopbackProvider
from smoothapi.zoo import load_classifier

SIGMA, ALPHA, BUDGET, SIZE = 0.25, 0.001, 500, 160


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=21, help="test crops (every k-th of 126)")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--n0", type=int, default=100, help="samples for 'samples' selection")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    held_out = [photos.load_photo(p) for p in photos.available_photos("test")]
    tiles, _ = photos.test_crops(held_out, SIZE)
    step = max(1, len(tiles) // args.crops)
    images = torch.from_numpy(tiles[::step][: args.crops]).float() / 255
    target = load_classifier("efficientnet_lite2", input_size=SIZE)
    surrogate = load_classifier("efficientnet_lite0", input_size=SIZE)
    clean = target.top_labels(images)
    name = default_denoiser(SIGMA)
    denoiser = load_denoiser(name, dtype="bfloat16") if name else None
    print(f"{len(images)} held-out crops at {SIZE} px, sigma {SIGMA}, alpha {ALPHA}, budget "
          f"n = {BUDGET}, denoiser {name}; API: Lite2 on loopback HTTP, 1 image/request, "
          "8 in flight")
    kinds = ("certified", "not_certifiable", "candidate_rejected", "budget_exhausted",
             "no_candidate")  # fmt: skip
    print(f"{'selection':<12} {'r':>5} {'queries/img':>12} "
          + " ".join(f"{k[:10]:>10}" for k in kinds) + f" {'= clean API':>12} {'s/img':>7}")
    selections = {"samples": "samples", "clean": "clean", "surrogate": surrogate}
    with LoopbackProvider(target) as api:
        for radius in args.radii:
            for label, selection in selections.items():
                http = HTTPAdapter(api.url("generic"), labels_path="labels")
                smoothed = SmoothedClassifier(http, SIGMA, denoiser, seed=0,
                                              limits=RateLimits(max_in_flight=8))  # fmt: skip
                outcomes, agree, paid = Counter(), 0, 0
                started = time.perf_counter()
                with smoothed:
                    for image, answer in zip(images, clean, strict=True):
                        before = smoothed.stats.images
                        cert = smoothed.certify(image, n0=args.n0, n=BUDGET, alpha=ALPHA,
                                                radius=radius, selection=selection)  # fmt: skip
                        paid += smoothed.stats.images - before
                        outcomes[cert.outcome.value] += 1
                        agree += int(not cert.abstained and cert.label == answer)
                seconds = (time.perf_counter() - started) / len(images)
                print(f"{label:<12} {radius:>5.2f} {paid / len(images):>12.1f} "
                      + " ".join(f"{outcomes[k]:>10}" for k in kinds)
                      + f" {agree:>12} {seconds:>7.1f}")


if __name__ == "__main__":
    main()
