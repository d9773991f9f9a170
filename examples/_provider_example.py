"""What the certify_<provider>.py examples share: arguments, the plan and cost check, the run.

Each example certifies a few photos through one vision API behind the shipped
natural-photo denoiser for ``--sigma`` (``--denoiser none``: the no-denoiser baseline;
``--compare``: both, on the same photos and noise), through ``certify_many`` with a
cost cap, a progress bar and a journal, and prints a short table.
"""

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
from smoothapi.denoisers import default_denoiser, load_denoiser
from smoothapi.dispatch import RateLimits
from smoothapi.errors import BudgetExceededError
from smoothapi.pricing import PRICES
from smoothapi.runs import certify_many


def parse_args(description: str, add_options: Callable | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image file (repeatable; default: held-out photos that ship "
                             "with scikit-image and scikit-learn)")
    parser.add_argument("--count", type=int, default=2, help="default photos to use (2)")
    parser.add_argument("--size", type=int, default=224,
                        help="resize each image to SIZE x SIZE before noise (default: 224)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n0", type=int, default=20, help="selection queries (default: 20)")
    parser.add_argument("--n", type=int, default=100, help="estimation queries (default: 100)")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--denoiser", default=None, metavar="NAME|PATH|none",
                        help="default: the shipped photo denoiser for --sigma")
    parser.add_argument("--compare", action="store_true",
                        help="certify with no denoiser and with the denoiser, side by side")
    parser.add_argument("--max-cost", type=float, default=1.0,
                        help="USD: run only when the estimate is under it, and never spend "
                             "more (default: 1.0)")
    parser.add_argument("--yes", action="store_true",
                        help="run even when the estimate is above --max-cost (no cap then)")
    parser.add_argument("--journal", default=None, metavar="FILE",
                        help="SQLite journal: rerun the same command to resume without "
                             "paying twice (default: certify_<provider>.sqlite)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--rate", type=float, default=None,
                        help="requests per second (default: the provider's documented rate)")
    if add_options is not None:
        add_options(parser)
    return parser.parse_args()


def require_env(names: Sequence[str], provider: str) -> None:
    """Exit with a message naming the variables to set when none of them is set."""
    if not any(os.environ.get(name) for name in names):
        sys.exit(f"{provider}: no credentials found. Set {' or '.join(names)} "
                 "(see the README's 'Certify your vision API') and run again.")


def load_images(args: argparse.Namespace) -> tuple[list[str], list[torch.Tensor]]:
    """(names, (3, SIZE, SIZE) tensors in [0, 1]) of --image, else of held-out photos."""
    if args.image:
        pictures = [(os.path.basename(p), Image.open(p).convert("RGB")) for p in args.image]
    else:
        from smoothapi import photos

        chosen = photos.available_photos("test")[: args.count]
        pictures = [(p.name, Image.fromarray(photos.load_photo(p))) for p in chosen]
    names = [name for name, _ in pictures]
    tensors = [_tensor(_square(image).resize((args.size, args.size))) for _, image in pictures]
    return names, tensors


def choose_denoisers(args: argparse.Namespace) -> dict[str, torch.nn.Module | None]:
    """Column name -> denoiser: the one asked for (default: shipped), and none with --compare."""
    spec = args.denoiser or default_denoiser(args.sigma)
    if spec is None:
        print(f"no shipped photo denoiser for sigma={args.sigma:g} here: certifying without one")
        spec = "none"
    columns: dict[str, torch.nn.Module | None] = {}
    if args.compare or spec.lower() == "none":
        columns["no denoiser"] = None
    if spec.lower() != "none":
        columns[os.path.basename(spec)] = load_denoiser(spec)
    return columns


def plan(provider: str, args: argparse.Namespace, images: int, columns: int) -> float:
    """Print the plan (queries, cost with the price's source and date, best radius); exit
    unless the estimate is under --max-cost or --yes is given. Returns USD per 1,000."""
    queries = images * columns * (args.n0 + args.n)
    if getattr(args, "price", None) is not None:
        per_1000, source = args.price, "--price"
    else:
        price = PRICES[provider]
        per_1000, source = price.per_1000, f"{price.source}; checked {price.checked}"
    cost = per_1000 * queries / 1000
    print(f"plan: {images} image(s) x {columns} column(s) x {args.n0 + args.n} queries = "
          f"{queries:,} queries, about ${cost:.2f} at ${per_1000:.2f}/1,000 ({source})")
    print(f"with n={args.n} the largest certifiable radius is "
          f"{max_certifiable_radius(args.n, args.alpha, args.sigma):.3f}")
    if cost > args.max_cost and not args.yes:
        sys.exit(f"estimated cost ${cost:.2f} is above --max-cost {args.max_cost}; add --yes")
    return per_1000


def run(provider: str, make_adapter: Callable[[], Adapter], args: argparse.Namespace) -> None:
    names, images = load_images(args)
    columns = choose_denoisers(args)
    per_1000 = plan(provider, args, len(images), len(columns))
    adapter = make_adapter()
    journal = args.journal or f"certify_{provider}.sqlite"
    cap = None if args.yes or not per_1000 else args.max_cost
    results: dict[str, list] = {column: [] for column in columns}
    try:
        for column, denoiser in columns.items():
            limits = RateLimits(requests_per_second=args.rate)
            with SmoothedClassifier(adapter, args.sigma, denoiser, seed=args.seed,
                                    journal=journal, limits=limits) as smoothed:  # fmt: skip
                for outcome in certify_many(smoothed, images, args.n0, args.n, args.alpha,
                                            max_cost=cap, price_per_1000=per_1000,
                                            progress=True):  # fmt: skip
                    results[column].append(outcome)
                if cap is not None:
                    cap -= sum(o.cost or 0 for o in results[column])
    except BudgetExceededError as exc:
        print(f"stopped at the cost cap: {exc}")
    print_table(names, results)
    print(f"journal: {journal} (rerun the same command to resume or re-read; seed {args.seed})")


def print_table(names: Sequence[str], results: dict[str, list]) -> None:
    print(f"{'image':<16}" + "".join(f"{column[:26]:>28}" for column in results))
    for i, name in enumerate(names):
        cells = []
        for outcomes in results.values():
            outcome = outcomes[i] if i < len(outcomes) else None
            result = None if outcome is None else outcome.result
            if outcome is None:
                cell = "-"
            elif result is None:
                cell = f"error: {type(outcome.error).__name__}"
            elif result.abstained:
                cell = "abstain"
            else:
                cell = f"{str(result.label)[:18]} r={result.radius:.2f}"
            cells.append(f"{cell:>28}")
        print(f"{name[:16]:<16}" + "".join(cells))


def _square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _tensor(image: Image.Image) -> torch.Tensor:
    """The RGB image as a (3, H, W) float tensor in [0, 1], as adapters take it."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
