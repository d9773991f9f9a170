"""``smoothapi loopback``: an ImageNet model served as every vision API, on this machine.

    smoothapi loopback [--model efficientnet_lite2] [--input-size PX] [--rate RPS]

starts :class:`~smoothapi.testing.LoopbackProvider` with a zoo classifier (default
EfficientNet-Lite2, its published ImageNet weights) on 127.0.0.1, speaking each
provider's wire format (HTTP JSON, Azure v3.2, AWS Rekognition, and Google and Clarifai
over plaintext gRPC), prints one ready-to-paste ``smoothapi certify --api ...`` line per
provider (with the placeholder credentials its vendor SDK needs, and ``--price 0``: a
loopback query costs nothing), and serves until Ctrl-C. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import shlex
import threading
from collections.abc import Callable
from typing import TextIO

from ..testing import LoopbackProvider

__all__ = ["add_loopback_command", "certify_lines", "serve"]

OnReady = Callable[[dict[str, str]], None]

#: Placeholder credentials: the SDKs refuse to start without some; the server ignores them.
CREDENTIALS = {
    "azure": {"AZURE_VISION_KEY": "loopback"},
    "aws": {"AWS_ACCESS_KEY_ID": "loopback", "AWS_SECRET_ACCESS_KEY": "loopback"},
    "google": {"GOOGLE_API_KEY": "loopback"},
    "clarifai": {"CLARIFAI_PAT": "loopback"},
    "http": {},
}


def certify_lines(api: LoopbackProvider, images: str = "IMAGES",
                  sigma: float = 0.25) -> dict[str, str]:  # fmt: skip
    """Provider -> a shell line certifying ``images`` through ``api`` in its wire format."""
    flags = {
        "http": ["--url", api.url("generic"), "--labels-path", "labels"],
        "azure": ["--endpoint", api.url("")],
        "aws": ["--endpoint", api.url(""), "--region", "us-east-1"],
        "google": ["--endpoint", api.target(), "--insecure"],
        "clarifai": ["--endpoint", api.target(), "--insecure"],
    }
    lines = {}
    for name, extra in flags.items():
        env = " ".join(f"{k}={v}" for k, v in CREDENTIALS[name].items())
        words = ["smoothapi", "certify", "--api", name, *extra, images, "--sigma", f"{sigma:g}",
                 "--price", "0"]  # fmt: skip
        lines[name] = (env + " " if env else "") + shlex.join(words)
    return lines


def serve(model: str, input_size: int | None, rate: float | None, out: TextIO,
          stop: threading.Event, ready: OnReady | None = None,
          coarse_labels: bool = False) -> None:  # fmt: skip
    """Serve ``model`` until ``stop`` is set; print the certify lines to ``out`` first."""
    from ..zoo import load_classifier

    classifier = load_classifier(model, input_size=input_size)
    with LoopbackProvider(classifier, rate_limit=rate, coarse_labels=coarse_labels) as api:
        lines = certify_lines(api)
        size = f" at {input_size} px" if input_size else ""
        print(f"smoothapi loopback: {model}{size} (ImageNet) served as 5 vision APIs on "
              "127.0.0.1; nothing leaves this machine. Paste a line, with your images for "
              "IMAGES; Ctrl-C stops the server.", file=out)  # fmt: skip
        for name, line in lines.items():
            print(f"\n# {name}\n{line}", file=out)
        out.flush()
        if ready is not None:
            ready(lines)
        stop.wait()


def _cmd_loopback(args: argparse.Namespace) -> int:
    import sys

    stop = threading.Event()
    try:
        serve(args.model, args.input_size, args.rate, sys.stdout, stop,
              coarse_labels=args.coarse_labels)
    except KeyboardInterrupt:
        print("\nsmoothapi loopback: stopped", file=sys.stderr)
    return 0


def add_loopback_command(commands: argparse._SubParsersAction) -> None:
    """Add ``loopback`` to ``smoothapi``."""
    parser = commands.add_parser(
        "loopback",
        help="serve an ImageNet model as every vision API on this machine (no credentials)",
        description="Serve a zoo ImageNet classifier (default EfficientNet-Lite2, published "
        "weights) on 127.0.0.1 in every provider's wire format, print one ready-to-paste "
        "'smoothapi certify --api ...' line per provider (placeholder credentials, --price 0), "
        "and serve until Ctrl-C. Nothing leaves the machine.",
    )
    parser.add_argument("--model", default="efficientnet_lite2",
                        help="a zoo classifier (default efficientnet_lite2)")
    parser.add_argument("--input-size", type=int, default=None, metavar="PX",
                        help="the resolution the model sees (default: its native size)")
    parser.add_argument("--rate", type=float, default=None, metavar="RPS",
                        help="answer 429 above this many requests per second (default: none)")
    parser.add_argument("--coarse-labels", action="store_true",
                        help="answer as commercial APIs do: ImageNet classes mixed with their "
                             "WordNet ancestors (cat, feline, mammal ...), scored by summed "
                             "probability")
    parser.set_defaults(handler=_cmd_loopback)
