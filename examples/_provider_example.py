"""What the certify_<provider>.py examples share: arguments, the cost check, the certificate."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from smoothapi import SmoothedClassifier, max_certifiable_radius
from smoothapi.adapters import Adapter
from smoothapi.pricing import PRICES, estimate_cost

DEFAULT_IMAGE = "astronaut"  # a scikit-image photo (public domain), used without --image


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--image", help="image file (default: scikit-image's astronaut photo)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n0", type=int, default=20, help="selection queries (default: 20)")
    parser.add_argument("--n", type=int, default=100, help="estimation queries (default: 100)")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--size", type=int, default=224,
                        help="resize the image to SIZE x SIZE before noise (default: 224)")
    parser.add_argument("--yes", action="store_true",
                        help="run even when the estimate is above --max-cost")
    parser.add_argument("--max-cost", type=float, default=1.0,
                        help="USD above which --yes is required (default: 1.0)")
    return parser.parse_args()


def require_env(names: Sequence[str], provider: str) -> None:
    """Exit with a message naming the variables to set when none of them is set."""
    if not any(os.environ.get(name) for name in names):
        sys.exit(f"{provider}: no credentials found. Set {' or '.join(names)} "
                 "(see the README's 'Vision APIs' section) and run again.")


def load_image(args: argparse.Namespace) -> Image.Image:
    if args.image:
        image = Image.open(args.image).convert("RGB")
    else:
        from skimage import data

        image = Image.fromarray(getattr(data, DEFAULT_IMAGE)())
    return image.resize((args.size, args.size))


def run(provider: str, make_adapter: Callable[[], Adapter], args: argparse.Namespace) -> None:
    queries = args.n0 + args.n
    cost = estimate_cost(provider, queries)
    price = PRICES[provider]
    print(f"{provider}: {queries} queries, about ${cost:.2f} at ${price.per_1000:.2f}/1,000 "
          f"({price.source}; checked {price.checked})")
    print(f"with n={args.n} the largest certifiable radius is "
          f"{max_certifiable_radius(args.n, args.alpha, args.sigma):.3f}")
    if cost > args.max_cost and not args.yes:
        sys.exit(f"estimated cost ${cost:.2f} is above --max-cost {args.max_cost}; add --yes")
    adapter = make_adapter()
    image = load_image(args)
    print(f"clean image: top label {adapter.ranked_labels(_tensor(image))[:1]}")
    smoothed = SmoothedClassifier(adapter, args.sigma, batch_size=min(queries, 64))
    result = smoothed.certify(image, n0=args.n0, n=args.n, alpha=args.alpha)
    if result.abstained:
        print(f"abstained: candidate {result.candidate!r}, p_A >= {result.p_a_lower:.3f}")
    else:
        print(f"certified {result.label!r} within l2 radius {result.radius:.3f} "
              f"(sigma={args.sigma}, {result.queries} queries, seed {smoothed.seed})")


def _tensor(image: Image.Image) -> torch.Tensor:
    """The RGB image as a (3, H, W) float tensor in [0, 1], as adapters take it."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
