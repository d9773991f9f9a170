"""What storing weights channels-last buys, for the ImageNet classifiers and a photo denoiser.

``load_classifier`` and ``load_denoiser`` store convolution weights channels-last and the
library feeds inputs in the module's layout (``as_module_input``): oneDNN's fast path on
CPU, tensor-core friendly on GPU. For EfficientNet-Lite0/1/2 at their native sizes and the
shipped photo denoiser at 160 px: images per second in each layout, and on held-out photo
crops the largest output difference and the share of equal top-1 labels (the layouts sum in
different orders, so outputs agree to float rounding, not bit for bit).

    python benchmarks/bench_classifier.py [--threads 2] [--batch 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from smoothapi import photos
from smoothapi._checkpoint import as_module_input
from smoothapi.denoisers import load_denoiser
from smoothapi.zoo import list_classifiers, load_classifier


def images_per_second(run, x: torch.Tensor, seconds: float = 3.0) -> float:
    done = 0
    with torch.inference_mode():
        run(x)  # warm-up
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            run(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            done += x.shape[0]
    return done / (time.perf_counter() - start)


def held_out(size: int, device: torch.device) -> torch.Tensor:
    tiles, _ = photos.test_crops([photos.load_photo(p) for p in photos.available_photos("test")],
                                 size)  # fmt: skip
    return (torch.from_numpy(tiles[::4]).float() / 255).to(device)


def compare(name: str, module: torch.nn.Module, prepare, size: int, args) -> None:
    device = torch.device(args.device)
    dense = copy.deepcopy(module).to(memory_format=torch.contiguous_format)
    last = copy.deepcopy(module).to(memory_format=torch.channels_last)
    x = torch.rand(args.batch, 3, size, size, device=device)
    speed = [images_per_second(lambda b, m=m: m(as_module_input(m, prepare(b))), x)
             for m in (dense, last)]  # fmt: skip
    crops = held_out(size, device)
    with torch.inference_mode():
        outs = [torch.cat([m(as_module_input(m, prepare(c))).float() for c in crops.split(16)])
                for m in (dense, last)]  # fmt: skip
    gap = (outs[0] - outs[1]).abs().max().item()
    same = "-"  # a denoiser has no labels
    if outs[0].dim() == 2:
        same = f"{100 * (outs[0].argmax(1) == outs[1].argmax(1)).float().mean().item():.0f}%"
    print(f"{name:<24} {size:>5} {speed[0]:>12.1f} {speed[1]:>12.1f} {speed[1] / speed[0]:>8.2f}x "
          f"{gap:>10.1e} {same:>10}  ({len(crops)} crops)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.threads} threads, batch {args.batch}, float32 "
          "(denoiser: bfloat16, as the study certifies)")
    print(f"{'model':<24} {'size':>5} {'dense img/s':>12} {'chan-last/s':>12} {'speed-up':>9} "
          f"{'max |diff|':>10} {'same top-1':>10}")
    for name in list_classifiers():
        adapter = load_classifier(name, device=args.device)
        size = adapter.input_size[0]

        def prepare(b, a=adapter):  # the adapter's normalisation, then the module
            return (b - a.mean) / a.std

        compare(name, adapter.module, prepare, size, args)
    denoiser = load_denoiser("photo-sigma0.25", args.device, dtype="bfloat16")
    compare("photo-sigma0.25 (bf16)", denoiser, lambda b: b, 160, args)


if __name__ == "__main__":
    main()
