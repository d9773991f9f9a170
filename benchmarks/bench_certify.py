"""How fast `certify` runs a local model, and how much of that time is the model itself.

For each batch size, certify a few images with and without a denoiser in front of the
classifier and print samples per second and the share of wall time spent inside the
forward passes (denoiser + classifier). The forward pass is the floor: everything else
(noise, transfers, counting, Python) is overhead, and the goal is >= 90% inside the
forward pass at batch sizes >= 256.

    python benchmarks/bench_certify.py [--device cuda] [--n 10000] [--images 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from smoothapi import LocalModelAdapter, SmoothedClassifier, create_denoiser
from smoothapi.training import create_classifier


class ForwardTimer:
    """Adds up wall time spent inside the forward passes of the modules it is attached to."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._start = device, 0.0, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def attach(self, module: nn.Module) -> None:
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after)

    def _before(self, *_):
        self._sync()
        self._start = time.perf_counter()

    def _after(self, *_):
        self._sync()
        self.seconds += time.perf_counter() - self._start


def run(device: torch.device, batch_size: int, denoise: bool, n: int, images: int) -> dict:
    torch.manual_seed(0)
    classifier = create_classifier("small_cnn", in_channels=1, num_classes=10)
    denoiser = create_denoiser("dncnn", in_channels=1, depth=6, width=32) if denoise else None
    timer = ForwardTimer(device)
    timer.attach(classifier)
    if denoiser is not None:
        timer.attach(denoiser)
    smoothed = SmoothedClassifier(
        LocalModelAdapter(classifier, mean=[0.286], std=[0.353], device=device),
        0.25,
        denoiser,
        batch_size=batch_size,
        device=device,
        seed=0,
    )
    x = torch.rand(images, 1, 28, 28)
    smoothed.certify(x[0], n0=batch_size, n=batch_size)  # warm-up
    timer.seconds = 0.0
    start = time.perf_counter()
    for image in x:
        smoothed.certify(image, n0=100, n=n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    samples = images * (n + 100)
    return {"samples_per_s": samples / wall, "in_forward": timer.seconds / wall, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU, {torch.get_num_threads()} threads")
    )
    print(
        f"certify on {name}: small_cnn (Fashion-MNIST 28x28), n0=100, n={args.n}, "
        f"{args.images} images, torch {torch.__version__}"
    )
    print(f"{'denoiser':<10}{'batch':>7}{'samples/s':>12}{'in forward':>12}{'wall s':>9}")
    for denoise in (False, True):
        for batch_size in args.batch_sizes:
            r = run(device, batch_size, denoise, args.n, args.images)
            print(
                f"{'dncnn-6' if denoise else 'none':<10}{batch_size:>7}"
                f"{r['samples_per_s']:>12,.0f}{r['in_forward']:>11.1%}{r['wall']:>9.2f}"
            )


if __name__ == "__main__":
    main()
