"""Photo denoisers' quality against cost: PSNR and images/s in float32 and bfloat16.

For every trained photo denoiser at hand (the shipped ``photo-sigma0.25``, DnCNN-8 width
32; ``results/photo-mse/photo-mse.safetensors``, the noise-level-aware MSE denoiser, when
it has been trained; any ``--weights NAME=PATH``) and every architecture of the photo MSE
bake-off (``smoothapi.studies.photo_mse.CANDIDATES``: FFDNet and DRUNet sizes, random
weights, so only their speed) and the GPU-scale DnCNN-17 width 64, at several image
sizes: images per second through the denoiser alone in each precision, and for the
trained ones the PSNR (mean over crops, output clamped to [0, 1]) of the held-out test
photos' noisy crops denoised in each precision. Certifying through a denoiser
costs one denoiser pass per noisy sample, so on a CPU this is most of a certificate's
time; ``load_denoiser(name, dtype="bfloat16")`` (CLI: ``--denoiser-dtype bfloat16``)
takes the faster column.

A second table times one MSE training step (forward, backward, Adam) of wider and deeper
DnCNNs on the natural-photo study's training batches (32 crops of 96 px), relative to the
study's DnCNN-8 width 32: what a bigger denoiser would cost to train here.

    python benchmarks/bench_denoiser.py [--sizes 96 160 224] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from smoothapi import photos
from smoothapi._checkpoint import as_module_input
from smoothapi.denoisers import create_denoiser, load_denoiser
from smoothapi.denoisers.noise_level import denoise
from smoothapi.studies.photo_figures import psnr
from smoothapi.studies.photo_mse import CANDIDATES

TRAINED_MSE = Path(__file__).resolve().parents[1] / "results/photo-mse/photo-mse.safetensors"

SIGMA = 0.25


def images_per_second(model: torch.nn.Module, size: int, device: torch.device,
                      batch: int, seconds: float = 3.0) -> float:  # fmt: skip
    x = as_module_input(model, torch.rand(batch, 3, size, size, device=device))
    done, start = 0, None
    with torch.inference_mode():
        denoise(model, x, SIGMA)  # warm-up
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            denoise(model, x, SIGMA)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            done += batch
    return done / (time.perf_counter() - start)


def psnr_of(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Mean PSNR (dB) of denoised noisy held-out crops, in the model's own dtype."""
    held_out = [photos.load_photo(p) for p in photos.available_photos("test")]
    tiles, _ = photos.test_crops(held_out, size)
    clean = (torch.from_numpy(tiles[::3]).float() / 255).to(device)
    generator = torch.Generator(device).manual_seed(0)
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=generator, device=device)
    with torch.inference_mode():
        denoised = torch.cat([denoise(model, as_module_input(model, c), SIGMA).float()
                              for c in noisy.split(16)])  # fmt: skip
    return psnr(denoised.cpu(), clean.cpu()).mean().item()


def seconds_per_step(model: torch.nn.Module, device: torch.device, batch: int = 32,
                     size: int = 96, steps: int = 5) -> float:  # fmt: skip
    """Seconds per MSE training step on random ``batch`` x 3 x ``size`` x ``size`` crops."""
    clean = torch.rand(batch, 3, size, size, device=device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad()
        denoised = denoise(model, clean + SIGMA * torch.randn_like(clean), SIGMA)
        (denoised - clean).pow(2).mean().backward()
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def training_table(device: torch.device) -> None:
    print()
    print(f"{'training step (32 x 96 px)':<30} {'s/step':>8} {'vs DnCNN-8 w32':>15}")
    base = None
    archs = {f"DnCNN-{d} w{w}": ("dncnn", {"depth": d, "width": w})
             for d, w in [(8, 32), (12, 32), (8, 48), (12, 48), (17, 64)]}  # fmt: skip
    for name, (arch, kwargs) in {**archs, **CANDIDATES}.items():
        torch.manual_seed(0)
        model = create_denoiser(arch, in_channels=3, **kwargs).to(device)
        took = seconds_per_step(model, device)
        base = base or took
        print(f"{name:<30} {took:>8.3f} {took / base:>14.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    parser.add_argument("--weights", nargs="*", default=[], metavar="NAME=PATH",
                        help="more trained denoisers to measure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    trained = {"photo-sigma0.25 (DnCNN-8 w32)": "photo-sigma0.25"}
    if TRAINED_MSE.exists():
        trained["photo-mse"] = str(TRAINED_MSE)
    trained.update(item.split("=", 1) for item in args.weights)
    models = {name: (lambda p=path: load_denoiser(p, device)) for name, path in trained.items()}

    def untrained(arch: str, kwargs: dict):
        return lambda: create_denoiser(arch, in_channels=3, **kwargs).to(device).eval().to(
            memory_format=torch.channels_last)

    for name, (arch, kwargs) in CANDIDATES.items():
        models[f"{name} (untrained)"] = untrained(arch, kwargs)
    models["DnCNN-17 w64 (GPU scale)"] = untrained("dncnn", {"depth": 17, "width": 64})
    print(f"device {device}, {args.threads} threads, batch {args.batch}, sigma {SIGMA}")
    print(f"{'denoiser':<30} {'size':>5} {'fp32 img/s':>11} {'bf16 img/s':>11} {'speed-up':>9} "
          f"{'fp32 dB':>8} {'bf16 dB':>8}")
    for name, build in models.items():
        for size in args.sizes:
            full = build()
            half = build().to(torch.bfloat16)
            fast = [images_per_second(m, size, device, args.batch) for m in (full, half)]
            quality = ["", ""]
            if name in trained:
                quality = [f"{psnr_of(m, size, device):.2f}" for m in (full, half)]
            print(f"{name:<30} {size:>5} {fast[0]:>11.1f} {fast[1]:>11.1f} "
                  f"{fast[1] / fast[0]:>8.1f}x {quality[0]:>8} {quality[1]:>8}")
    training_table(device)


if __name__ == "__main__":
    main()
