"""Certify your own PyTorch classifier, with or without a denoiser in front.

    python examples/certify_local_model.py                       # the bundled demo model
    python examples/certify_local_model.py --model clf.safetensors --denoiser den.safetensors \\
        --image photo.png --sigma 0.25 --n 10000

It prints what the budget allows before sampling (the largest radius n samples can
certify, and the samples a target radius needs), then the certificate.
"""

from __future__ import annotations

import argparse

from PIL import Image

from smoothapi import (
    LocalModelAdapter,
    SmoothedClassifier,
    load_denoiser,
    max_certifiable_radius,
    samples_needed,
)
from smoothapi.cli.demo import demo_images_dir, demo_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="classifier checkpoint (default: bundled)")
    parser.add_argument("--denoiser", default=None, help="denoiser checkpoint (optional)")
    parser.add_argument("--image", default=None, help="image file (default: a bundled sneaker)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--target-radius", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    adapter = LocalModelAdapter.from_checkpoint(args.model or demo_model_path())
    denoiser = load_denoiser(args.denoiser) if args.denoiser else None
    image = Image.open(args.image or demo_images_dir() / "sneaker" / "9.png")

    ceiling = max_certifiable_radius(args.n, args.alpha, args.sigma)
    print(f"n={args.n} samples can certify at most R={ceiling:.3f} (sigma={args.sigma})")
    try:
        needed = samples_needed(args.target_radius, args.sigma, args.alpha, p_a=0.999)
        print(f"R={args.target_radius} needs n>={needed} samples if p_A=0.999 (50% chance)")
    except ValueError as exc:
        print(f"R={args.target_radius}: {exc}")

    smoothed = SmoothedClassifier(adapter, args.sigma, denoiser, seed=args.seed)
    result = smoothed.certify(image, n0=args.n0, n=args.n, alpha=args.alpha)
    print(f"seed={smoothed.seed}")
    if result.abstained:
        print(f"abstain (candidate {result.candidate}, p_A lower bound {result.p_a_lower:.4f})")
    else:
        print(f"certified {result.label!r} within l2 radius {result.radius:.3f} "
              f"(p_A >= {result.p_a_lower:.4f}, {result.queries} queries)")


if __name__ == "__main__":
    main()
