"""How much of a provider's rate limit the smoothing client uses, against a real server.

A loopback vision API (``smoothapi.testing.LoopbackProvider``) serves the bundled
Fashion-MNIST classifier with 150 ms latency and a 50 requests/s limit (429 above it).
Each row certifies one image and reports the achieved requests/s and images/s, the
429s received, and the share of the limit used; the first row is the authors' way,
one request at a time. Then one row per provider adapter, each through its default
transport (boto3, msrest, aiohttp, gRPC) against the same server speaking that
provider's wire format, one image per request, with ``max_in_flight=16``. The last row
is the local denoiser's own throughput, the ceiling for images/s when it, not the
provider, is the bottleneck.

    python benchmarks/bench_client.py [--latency 0.15] [--limit 50] [--n 1000]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from smoothapi import LocalModelAdapter, SmoothedClassifier, create_denoiser
from smoothapi._images import load_image
from smoothapi.adapters.http import HTTPAdapter
from smoothapi.cli.demo import demo_images_dir, demo_model_path
from smoothapi.dispatch import RateLimits
from smoothapi.testing import LoopbackProvider


def provider_adapter(name: str, api):
    """A provider adapter with its default transport, pointed at the loopback server."""
    from smoothapi.adapters.aws import RekognitionAdapter
    from smoothapi.adapters.azure import AzureVisionAdapter
    from smoothapi.adapters.clarifai import ClarifaiAdapter
    from smoothapi.adapters.google import GoogleVisionAdapter

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIALOOPBACKBENCH000")  # loopback only
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "loopback-bench-secret")
    options = {"max_in_flight": 16}
    adapters = {
        "aws": lambda: RekognitionAdapter(endpoint_url=api.url(""), region_name="us-east-1",
                                          **options),
        "azure v3.2": lambda: AzureVisionAdapter(api.url(""), "loopback", **options),
        "azure 4.0": lambda: AzureVisionAdapter(api.url(""), "loopback", api="4.0", **options),
        "google": lambda: GoogleVisionAdapter(endpoint=api.target(), insecure=True,
                                              api_key="loopback", **options),
        "clarifai": lambda: ClarifaiAdapter(target=api.target(), insecure=True, pat="loopback",
                                            **options),
        "http": lambda: HTTPAdapter(api.url("generic"), **options),
    }
    return adapters[name]()


def run(api, *, batch: bool, limits: RateLimits, n: int, denoiser, image,
        adapter=None) -> dict:
    if adapter is not None:
        # One image per request, so requests/s compare with the limit (google and clarifai
        # would otherwise send their whole batch in one request).
        adapter.max_batch = 1
    elif batch:
        adapter = HTTPAdapter(api.url("generic-batch"), send="json", field="images",
                              max_batch=16, batch_path="results")
    else:
        adapter = HTTPAdapter(api.url("generic"))
    before_requests, before_429 = api.stats.requests, api.stats.rate_limited
    api.stats.first = None
    started = time.perf_counter()
    with SmoothedClassifier(adapter, 0.25, denoiser, batch_size=256, device="cpu", seed=0,
                            limits=limits) as smoothed:
        smoothed.certify(image, n0=min(100, n), n=n, alpha=0.001)
        stats = smoothed.stats
    wall = time.perf_counter() - started
    steady = (api.stats.requests - before_requests - 1) / (api.stats.last - api.stats.first)
    return {"requests/s": stats.requests / wall, "images/s": stats.images / wall,
            "steady": steady,
            "429s": api.stats.rate_limited - before_429,
            "sent": api.stats.requests - before_requests, "wall": wall}


def denoise_throughput(denoiser, image, batch: int = 256, rounds: int = 5) -> float:
    x = image.expand(batch, *image.shape).contiguous()
    with torch.inference_mode():
        denoiser(x)
        started = time.perf_counter()
        for _ in range(rounds):
            denoiser(x + 0.25 * torch.randn_like(x))
    return batch * rounds / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.15)
    parser.add_argument("--limit", type=float, default=50.0)
    parser.add_argument("--n", type=int, default=1000, help="estimation samples per run")
    parser.add_argument("--cheap-server", action="store_true",
                        help="the server answers a fixed label instead of running the model, "
                        "so on a small machine it does not compete with the client for CPU")
    parser.add_argument("--providers", nargs="*",
                        default=["aws", "azure v3.2", "azure 4.0", "google", "clarifai", "http"],
                        help="provider adapters to give a row each (none: --providers)")
    args = parser.parse_args()
    torch.manual_seed(0)
    denoiser = create_denoiser("dncnn", in_channels=1, depth=6, width=32).eval()
    image = load_image(demo_images_dir() / "sneaker" / "9.png")
    served = LocalModelAdapter.from_checkpoint(demo_model_path())
    if args.cheap_server:
        served = lambda images: [[("sneaker", 1.0)]] * len(images)  # noqa: E731
    rows = []
    with LoopbackProvider(served, latency=args.latency, rate_limit=args.limit,
                          retry_after=1.0) as api:
        rows.append(("sequential (authors' code)", 1, run(
            api, batch=False, limits=RateLimits(max_in_flight=1), n=min(args.n, 60),
            denoiser=denoiser, image=image)))
        rows.append(("smoothapi, 1 image/request", 1, run(
            api, batch=False, limits=RateLimits(requests_per_second=args.limit,
                                                max_in_flight=16),
            n=args.n, denoiser=denoiser, image=image)))
        rows.append(("smoothapi, 16 images/request", 16, run(
            api, batch=True, limits=RateLimits(requests_per_second=args.limit,
                                               max_in_flight=16),
            n=args.n * 8, denoiser=denoiser, image=image)))
        for name in args.providers:
            rows.append((f"{name} adapter, 1 image/request", 1, run(
                api, batch=False, adapter=provider_adapter(name, api),
                limits=RateLimits(requests_per_second=args.limit, max_in_flight=16),
                n=args.n, denoiser=denoiser, image=image)))
    model = "a fixed label" if args.cheap_server else "the bundled classifier"
    print(f"loopback provider serving {model}: {args.latency * 1000:.0f} ms latency, limit "
          f"{args.limit:g} requests/s; denoiser dncnn-6 on CPU, {torch.get_num_threads()} threads")
    print(f"{'client':<36}{'req/s':>8}{'img/s':>9}{'429s':>6}{'steady req/s':>14}"
          f"{'of limit':>10}{'wall s':>8}")
    for name, _per_request, r in rows:
        print(f"{name:<36}{r['requests/s']:>8.1f}{r['images/s']:>9.1f}{r['429s']:>6}"
              f"{r['steady']:>14.1f}{r['steady'] / args.limit:>10.0%}{r['wall']:>8.1f}")
    print("req/s and img/s: over the whole certification, first denoise to last answer; "
          "steady req/s: as the server saw them, first to last request")
    print(f"{'local denoise (batch 256)':<36}{'':>8}{denoise_throughput(denoiser, image):>9.0f}")


if __name__ == "__main__":
    main()
