"""``smoothapi certify --api NAME`` and ``predict --api NAME``: a vision API from the shell.

    export AZURE_VISION_ENDPOINT=https://<resource>.cognitiveservices.azure.com
    export AZURE_VISION_KEY=<key>
    smoothapi certify --api azure photos/ --sigma 0.25 --n 500 --max-cost 5 --journal run.sqlite

Money first: the provider's adapter is built (SDK and credentials checked, nothing sent),
every image is read, the denoiser chosen (by default the shipped natural-photo denoiser
for ``--sigma``), and the plan is printed: images, queries at most, the estimated cost
with the price's source and date, and the largest radius ``n`` samples can certify. The
run starts only if the estimate is under ``--max-cost`` (then also a hard cap) or ``--yes``
is given (with no known price: ``--price``, ``--max-queries`` or ``--yes``). Rows are
written as the local-model commands write them, then the API's own answer on the clean
image (``clean``, one more query per image) and ``differs``; ``--radius R`` certifies one
radius sequentially and adds the test's ``outcome`` column. Unless ``--batch-size`` is
given, the batch is sized to the free memory; ``--max-side N`` shrinks the images first.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from .._checkpoint import as_module_input
from .._images import PEAK_FLOATS_PER_PIXEL, fit_batch_size, fit_side, load_image
from ..adapters import PROVIDERS, create_adapter
from ..adapters.base import Adapter
from ..adapters.remote import import_optional
from ..certification import check_count, check_radius, max_certifiable_radius
from ..decisions import Decision
from ..denoisers import default_denoiser, load_denoiser
from ..denoisers.noise_level import takes_noise_level
from ..errors import AuthenticationError, Interrupted, InvalidInputError
from ..pricing import PRICES
from ..recording import Recording
from ..runs import (
    CERTIFY_COLUMNS,
    CLEAN_COLUMNS,
    PREDICT_COLUMNS,
    RADIUS_COLUMNS,
    LogWriter,
    certify_many,
    predict_many,
    write_log,
)
from ..smoothing import DEFAULT_BATCH_SIZE, RateLimits, SmoothedClassifier
from .questions import decision_from_args, describe

__all__ = ["API_NAMES", "EXIT_NOT_RUN", "add_api_options", "auto_batch_size", "resized_note",
           "resolve_counts", "run_api"]

API_NAMES = ("azure", "google", "aws", "clarifai", "http")
EXIT_NOT_RUN = 1  # the plan was shown and nothing was sent: the estimate needs --yes
EXIT_PARTIAL = 1  # some images could not be read; the others were processed
#: Sample sizes when not given: (n0, n) for a local model, and for a paid API.
LOCAL_COUNTS, API_COUNTS = (100, 10_000), (20, 500)

#: Provider flag -> {provider: adapter keyword}; a flag given for another provider is refused.
FLAGS: dict[str, dict[str, str]] = {
    "endpoint": {"azure": "endpoint", "google": "endpoint", "aws": "endpoint_url",
                 "clarifai": "target"},
    "api_version": {"azure": "api"},
    "region": {"aws": "region_name"},
    "model_id": {"azure": "model_version", "google": "model", "clarifai": "model_id"},
    "user_id": {"clarifai": "user_id"},
    "app_id": {"clarifai": "app_id"},
    "insecure": {"clarifai": "insecure", "google": "insecure"},
    "url": {"http": "url"},
    "send": {"http": "send"},
    "field": {"http": "field"},
    "labels_path": {"http": "labels_path"},
    "batch_path": {"http": "batch_path"},
    "max_batch": {"http": "max_batch"},
}  # fmt: skip


# --- the options ---------------------------------------------------------------------------


def add_api_options(parser: argparse.ArgumentParser, certify: bool) -> None:
    """The ``--api`` provider flags and the run options (caps, journal, recording)."""
    _add_provider_options(parser)
    _add_paid_run_options(parser, certify)


def _add_provider_options(parser: argparse.ArgumentParser) -> None:
    """The "vision API" group: ``--api``, each provider's flags, the rate and the price."""
    api = parser.add_argument_group(
        "vision API (instead of --model; credentials come from the environment, as the "
        "adapters read them)")
    api.add_argument("--api", metavar="NAME", help=f"certify a vision API: {', '.join(API_NAMES)}")
    api.add_argument("--endpoint", help="azure: endpoint URL (default AZURE_VISION_ENDPOINT); "
                     "google, clarifai: host:port; aws: endpoint URL")
    api.add_argument("--api-version", help="azure: v3.2 (default) or 4.0")
    api.add_argument("--region", help="aws: region (default AWS_REGION / AWS_DEFAULT_REGION)")
    api.add_argument("--model-id", help="clarifai: model id; google: feature model "
                     "(e.g. builtin/latest); azure: model version")
    api.add_argument("--user-id", help="clarifai: the model owner's user id (default clarifai)")
    api.add_argument("--app-id", help="clarifai: the model's app id (default main)")
    api.add_argument("--insecure", action="store_true", default=None,
                     help="google, clarifai: plaintext gRPC, for an emulator or a local test "
                          "server only")
    api.add_argument("--url", help="http: the classification endpoint")
    api.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                     help="http: a request header (repeatable; secrets: prefer --header-env)")
    api.add_argument("--header-env", action="append", default=[], metavar="NAME=VAR",
                     help="http: a header whose value is read from environment variable VAR")
    api.add_argument("--query", action="append", default=[], metavar="NAME=VALUE",
                     help="http: a query parameter (repeatable; shown and part of the run key; "
                          "secrets: use --query-env)")
    api.add_argument("--query-env", action="append", default=[], metavar="NAME=VAR",
                     help="http: a query parameter whose value is read from environment "
                          "variable VAR (never shown)")
    api.add_argument("--send", choices=("raw", "multipart", "json"), help="http: the body")
    api.add_argument("--field", help="http: the form or JSON field of the image(s)")
    api.add_argument("--labels-path", help="http: where the labels are in the answer")
    api.add_argument("--batch-path", help="http: where the per-image answers are (batches)")
    api.add_argument("--max-batch", type=int, help="http: images per request (needs json)")
    api.add_argument("--rate", type=float, metavar="RPS",
                     help="requests per second (default: the provider's documented rate)")
    api.add_argument("--in-flight", type=int, metavar="K",
                     help="requests outstanding at once (default: the adapter's)")
    api.add_argument("--price", type=float, metavar="USD",
                     help="USD per 1,000 images, instead of smoothapi.pricing's figure")


def _add_paid_run_options(parser: argparse.ArgumentParser, certify: bool) -> None:
    """The "paid runs" group: ``--radius`` and ``--selection`` (``certify`` only), the caps,
    ``--yes``, ``--progress``, and ``--record`` or ``--replay``."""
    run = parser.add_argument_group("paid runs")
    if certify:
        run.add_argument("--radius", type=float, default=None, metavar="R",
                         help="certify radius R sequentially, stopping as soon as it is decided "
                              "(n is then each image's budget); adds an outcome column")
        run.add_argument("--selection", choices=("samples", "clean"), default="clean",
                         help="with --radius: the candidate from ONE query on the clean image "
                              "(default: it certified as many photos as n0 noisy samples at a "
                              "tenth of the queries, benchmarks/bench_selection.py) or from "
                              "n0 noisy samples")
    run.add_argument("--max-cost", type=float, default=None, metavar="USD",
                     help="run when the estimate is under USD, and stop before passing it")
    run.add_argument("--max-queries", type=int, default=None,
                     help="stop before an image that could take the run past this many queries")
    run.add_argument("--yes", action="store_true", help="run whatever the estimate")
    run.add_argument("--progress", action="store_true",
                     help="a progress bar on stderr that moves with each batch of answers: "
                          "answers, queries per second, cost and an ETA")
    record = run.add_mutually_exclusive_group()
    record.add_argument("--record", metavar="FILE", help="save every response to FILE (JSONL)")
    record.add_argument("--replay", metavar="FILE",
                        help="answer from FILE only, recorded with --record: nothing is sent")


def resolve_counts(args: argparse.Namespace, certify: bool) -> None:
    """Fill ``--n0`` / ``--n`` left out: the paper's local sizes, or an API's smaller ones."""
    n0, n = API_COUNTS if getattr(args, "api", None) else LOCAL_COUNTS
    if certify and args.n0 is None:
        args.n0 = n0
    if args.n is None:
        args.n = n if certify else min(n, 1_000)


def check_local_options(args: argparse.Namespace) -> None:
    """Refuse the options that only mean something for a paid API when ``--model`` is used."""
    given = [f"--{flag.replace('_', '-')}" for flag in (*FLAGS, "price", "max_cost", "record",
                                                         "replay", "header", "header_env", "query",
                                                         "query_env")
             if getattr(args, flag, None)]  # fmt: skip
    if given:
        raise InvalidInputError(f"{', '.join(given)} only apply with --api NAME")


# --- the adapter ---------------------------------------------------------------------------


def _adapter_options(args: argparse.Namespace) -> dict[str, Any]:
    name, options = args.api, {}
    for flag, by_provider in FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if name not in by_provider:
            applies = ", ".join(by_provider)
            raise InvalidInputError(f"--{flag.replace('_', '-')} applies to {applies}, not {name}")
        options[by_provider[name]] = value
    if name == "azure" and "api" in options:
        options["api"] = {"3.2": "v3.2", "v4.0": "4.0"}.get(options["api"], options["api"])
    if (args.header or args.header_env) and name != "http":
        raise InvalidInputError(f"--header and --header-env apply to http, not {name}")
    if (args.query or args.query_env) and name != "http":
        raise InvalidInputError(f"--query and --query-env apply to http, not {name}")
    if name == "aws" and "region_name" not in options and os.environ.get("AWS_REGION"):
        options["region_name"] = os.environ["AWS_REGION"]  # boto3 reads AWS_DEFAULT_REGION only
    if name == "http":
        if not args.url:
            raise InvalidInputError("--api http needs --url URL (your model server's endpoint)")
        options["headers"] = dict(_pair(h, ":", "--header 'NAME: VALUE'") for h in args.header)
        options["header_env"] = dict(_pair(h, "=", "--header-env NAME=VAR")
                                     for h in args.header_env)  # fmt: skip
        if args.query:
            options["query"] = dict(_pair(q, "=", "--query NAME=VALUE") for q in args.query)
        if args.query_env:
            options["query_env"] = dict(_pair(q, "=", "--query-env NAME=VAR")
                                        for q in args.query_env)  # fmt: skip
    return options


def _pair(text: str, sep: str, form: str) -> tuple[str, str]:
    name, found, value = text.partition(sep)
    if not found or not name.strip() or not value.strip():
        raise InvalidInputError(f"expected {form}, got {text.split(sep)[0]!r}...")
    return name.strip(), value.strip()


def build_adapter(args: argparse.Namespace) -> Adapter:
    """The provider's adapter, with its SDK and credentials checked before any query."""
    if args.api not in API_NAMES:
        raise InvalidInputError(f"unknown API {args.api!r}; known: {', '.join(API_NAMES)}")
    options = _adapter_options(args)
    module, cls, _ = PROVIDERS[args.api]
    if "insecure" in options and "insecure" not in _parameters(module, cls):
        raise InvalidInputError(f"--insecure is not supported by the {args.api} adapter here")
    recording = None
    if args.record or args.replay:
        recording = Recording(args.record or args.replay, "record" if args.record else "replay",
                              how_to_record="--record FILE")
    adapter = create_adapter(args.api, recording=recording, **options)
    if recording is None or recording.mode != "replay":
        _check_credentials(args.api, options)
    return adapter


def _parameters(module: str, cls: str) -> Sequence[str]:
    import importlib

    return list(inspect.signature(getattr(importlib.import_module(module), cls)).parameters)


def _check_credentials(name: str, options: dict[str, Any]) -> None:
    """Fail now, in one line, where the adapter would only find out at the first request."""
    if name == "google" and not os.environ.get("GOOGLE_API_KEY"):
        auth = import_optional("google.auth", "google", "google-auth")
        try:
            auth.default()
        except auth.exceptions.DefaultCredentialsError:
            raise AuthenticationError(
                "no Google credentials: set GOOGLE_API_KEY or GOOGLE_APPLICATION_CREDENTIALS "
                "(or run 'gcloud auth application-default login')", provider=name) from None
    if name == "aws":
        boto3 = import_optional("boto3", "aws")
        session = boto3.Session(region_name=options.get("region_name"))
        if session.get_credentials() is None:
            raise AuthenticationError(
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE", provider=name)  # fmt: skip
        if not session.region_name:
            raise InvalidInputError("no AWS region: give --region or set AWS_REGION")


# --- denoiser and images -------------------------------------------------------------------


def choose_denoiser(spec: str | None, sigma: float, device: torch.device,
                    dtype: str | None = None) -> tuple[torch.nn.Module | None, str]:  # fmt: skip
    """The denoiser ``--denoiser`` names (a shipped name, a file, or ``none``), and a line
    saying which; by default the shipped natural-photo denoiser for ``sigma``, if any."""
    if spec is None:
        spec = default_denoiser(sigma)
        if spec is None:
            return None, (f"denoiser: none (no shipped photo denoiser for sigma={sigma:g} in "
                          "this install; give --denoiser NAME|PATH)")
    if spec.lower() == "none":
        return None, "denoiser: none (--denoiser none)"
    denoiser = load_denoiser(spec, device=device, dtype=dtype)
    meta = getattr(denoiser, "checkpoint_metadata", None) or {}
    trained, span = meta.get("sigma"), meta.get("sigma_range")
    note = ""
    if takes_noise_level(denoiser) and span is not None:  # one network for a range of sigma
        if not span[0] - 1e-9 <= sigma <= span[1] + 1e-9:
            note = f"; it was trained for sigma in [{span[0]:g}, {span[1]:g}], not {sigma:g}"
    elif trained is not None and abs(float(trained) - sigma) > 1e-9:
        note = f"; it was trained for sigma={float(trained):g}, not {sigma:g}"
    return denoiser, f"denoiser: {spec}{note}"


def _channels(denoiser: torch.nn.Module | None) -> int | None:
    if denoiser is None:
        return None
    kwargs = (getattr(denoiser, "arch_config", None) or {}).get("kwargs", {})
    return kwargs.get("in_channels")


class ApiImages(Sequence):
    """The images, each read when the run reaches it, grey ones made RGB for an RGB denoiser."""

    def __init__(self, paths: Sequence[Any], channels: int | None,
                 max_side: int | None = None) -> None:  # fmt: skip
        self.paths, self.channels, self.max_side = list(paths), channels, max_side
        self.shapes: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]  # no slices
        image = fit_side(load_image(self.paths[index]), self.max_side)
        if self.channels == 3 and image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
        if self.channels is not None and image.shape[0] != self.channels:
            raise InvalidInputError(
                f"{self.paths[index]} has {image.shape[0]} channels; the denoiser takes "
                f"{self.channels}")
        return image

    def check(self) -> dict[int, str]:
        """Read every image now, so that a bad one is known before anything is paid for;
        returns why each unreadable one cannot be used, by index (empty: all are fine)."""
        reasons = {}
        for index in range(len(self)):
            try:
                self.shapes[index] = tuple(self[index].shape)
            except InvalidInputError as exc:
                reason = str(exc)
                path = str(self.paths[index])
                reasons[index] = reason if path in reason else f"cannot read {path}: {reason}"
        return reasons


# --- batch size and image size --------------------------------------------------------------


def auto_batch_size(given: int | None, shapes: Sequence[tuple[int, ...]], device: torch.device,
                    floats_per_pixel: int) -> tuple[int, str]:  # fmt: skip
    """``--batch-size``, or when not given the default sized down to the free memory of
    ``device`` for the largest image; and a line saying which."""
    if given is not None:
        return given, f"batch size {given} (--batch-size)"
    size = fit_batch_size(list(shapes), DEFAULT_BATCH_SIZE, device,
                          floats_per_pixel=floats_per_pixel)  # fmt: skip
    if size == DEFAULT_BATCH_SIZE:
        return size, f"batch size {size}"
    return size, (f"batch size {size}, fit to the free memory of {device} (the batch size "
                  f"decides the noise: give --batch-size {size} to resume elsewhere)")


def time_estimate(denoiser: torch.nn.Module | None, shape: tuple[int, ...] | None,
                  batch_size: int, device: torch.device, queries: int, requests_per_second:
                  float | None, per_request: int, passes: int = 3) -> str | None:  # fmt: skip
    """A line estimating the run's time: the denoiser's rate measured on a short warm-up
    (``passes`` small batches, the first not timed, of a crop of at most 128x128 pixels of an
    image of ``shape``, scaled to its pixels: a denoiser is convolutional), and the
    provider's request rate; ``None`` when neither is known."""
    parts, seconds = [], 0.0
    if denoiser is not None and shape is not None and queries:
        size = max(1, min(batch_size, 4))
        channels, height, width = shape
        crop = (channels, min(height, 128), min(width, 128))
        batch = torch.rand((size, *crop), device=device)
        timed = 0.0
        with torch.inference_mode():
            for index in range(passes):
                started = time.perf_counter()
                denoiser(as_module_input(denoiser, batch))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if index:
                    timed += time.perf_counter() - started
        per_sample = timed / max(passes - 1, 1) / size * (height * width) / (crop[1] * crop[2])
        seconds = max(seconds, per_sample * queries)
        parts.append(f"the denoiser takes {per_sample * 1000:.1f} ms a sample here "
                     f"(measured on {passes - 1} warm-up batches of {size})")
    if requests_per_second:
        sending = queries / max(per_request, 1) / requests_per_second
        seconds = max(seconds, sending)
        parts.append(f"{requests_per_second:g} requests/s")
    if not parts:
        return None
    hint = "; --max-side N shrinks large images first" if seconds > 600 and denoiser else ""
    return f"time: about {_duration(seconds)} ({'; '.join(parts)}){hint}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def resized_note(max_side: int) -> str:
    """What ``--max-side`` does to the certificates."""
    return (f"--max-side {max_side}: images are shrunk to at most {max_side} px a side before "
            "the noise; every radius is in the resized image's pixel space, not the original's")


# --- the plan ------------------------------------------------------------------------------


def _price(args: argparse.Namespace) -> tuple[float | None, str]:
    if args.replay:
        return 0.0, f"nothing is sent: every answer is replayed from {args.replay}"
    if args.price is not None:
        if args.price < 0:
            raise InvalidInputError(f"--price must be >= 0, got {args.price}")
        return args.price, f"at ${args.price:g} per 1,000 images (--price)"
    price = PRICES.get(args.api)
    if price is None:
        return None, f"cost unknown: no price for {args.api} (give --price USD per 1,000)"
    checked = "checked" if price.verified else "unverified, noted"
    return price.per_1000, (f"at ${price.per_1000:.2f} per 1,000 images ({price.source}; "
                            f"{checked} {price.checked})")


def queries_left(args: argparse.Namespace, images: int, certify: bool,
                 paid: int = 0) -> tuple[int, int, int, int]:  # fmt: skip
    """Queries per image at most, in all, already answered in the journal, and left to send."""
    radius_mode = certify and args.radius is not None
    selection = 1 if radius_mode and args.selection == "clean" else (args.n0 if certify else 0)
    per_image = selection + args.n + 1  # and one query on the clean image: the API's own answer
    queries = images * per_image
    paid = min(paid, queries)
    left = queries - paid
    if args.max_queries is not None:
        left = min(left, check_count("max-queries", args.max_queries))
    return per_image, queries, paid, left


def plan(args: argparse.Namespace, images: int, certify: bool,
         paid: int = 0) -> tuple[list[str], float | None]:  # fmt: skip
    """The lines shown before the first paid query, and the estimated cost (None: unknown)
    of what is left to send: ``paid`` answers of this run are in the journal already."""
    radius_mode = certify and args.radius is not None
    per_image, queries, paid, left = queries_left(args, images, certify, paid)
    price, source = _price(args)
    best = max_certifiable_radius(args.n, args.alpha, args.sigma)
    lines = [f"plan: {images} image(s) x at most {per_image:,} queries = at most {queries:,} "
             f"queries to {args.api}"]
    if paid:
        lines[0] += (f"; {paid:,} already answered in {args.journal} (not paid again): at most "
                     f"{left:,} left to send")
    elif args.max_queries is not None and left < queries:
        lines[0] += f"; at most {left:,} sent (--max-queries)"
    cost = None if price is None else left * price / 1000
    lines.append(source if cost is None else f"estimated cost ${cost:,.2f} {source}")
    lines.append(f"largest certifiable radius with n={args.n}, alpha={args.alpha:g}, "
                 f"sigma={args.sigma:g}: {best:.3f}"
                 + ("" if best > 0 else " (n is too small: every image will abstain)"))
    if radius_mode:
        check_radius(args.radius)
        if best < args.radius:
            raise InvalidInputError(
                f"--radius {args.radius:g} can never be certified with n={args.n} (at most "
                f"{best:.3f}): raise --n or --sigma")
    return lines, cost


def approved(args: argparse.Namespace, cost: float | None) -> str | None:
    """``None`` when the run may start, else why not (the refusal line)."""
    if args.max_cost is not None and args.max_cost < 0:
        raise InvalidInputError(f"--max-cost must be >= 0, got {args.max_cost}")
    if cost is None and args.max_cost is not None:
        raise InvalidInputError(f"--max-cost needs a price for {args.api}: give --price")
    if args.yes or cost == 0:
        return None
    if cost is None:
        if args.max_queries is not None:
            return None
        return (f"not run: the cost is unknown (no price for {args.api}); give --price USD "
                "per 1,000 images, --max-queries N to cap the run, or --yes")
    if args.max_cost is not None and cost <= args.max_cost:
        return None
    if args.max_cost is None:
        return (f"not run: add --yes to spend up to about ${cost:,.2f}, or --max-cost USD "
                "to run only when the estimate is under USD")
    return (f"not run: the estimate ${cost:,.2f} is above --max-cost ${args.max_cost:g}; "
            "add --yes, or lower --n or the number of images")


# --- the run -------------------------------------------------------------------------------


def run_api(args: argparse.Namespace, certify: bool, entries: Sequence[Any], device: torch.device,
            out_file: Any) -> int:  # fmt: skip
    """Certify (or predict) ``entries`` through ``--api``; ``out_file`` opens the log."""
    decision = decision_from_args(args)  # a bad --decision fails before the adapter is built
    adapter = build_adapter(args)
    denoiser, which = choose_denoiser(args.denoiser, args.sigma, device, args.denoiser_dtype)
    say = _stderr
    images = ApiImages([e.path for e in entries], _channels(denoiser), args.max_side)
    unreadable = images.check()
    shapes = sorted(set(images.shapes.values()))
    indices = _readable_indices(args, len(entries), unreadable)
    if unreadable:
        entries = [entries[i] for i in indices]
        images = ApiImages([e.path for e in entries], images.channels, args.max_side)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(7), "big")
    floats = PEAK_FLOATS_PER_PIXEL if denoiser is not None else 0
    args.batch_size_given = args.batch_size is not None
    args.batch_size, batch_line = auto_batch_size(args.batch_size, shapes, device, floats)
    batch_size = _batch_size(args, adapter, certify)
    settings: dict[str, Any] = dict(batch_size=batch_size, device=device, seed=seed,
                                    limits=_limits(args), decision=decision)
    paid = _journaled(args.journal, SmoothedClassifier(adapter, args.sigma, denoiser, **settings))
    lines, cost = plan(args, len(images), certify, paid)
    _show_plan(args, which, decision, lines, batch_line, batch_size)
    largest = max(shapes, key=lambda shape: math.prod(shape)) if shapes else None
    left = queries_left(args, len(images), certify, paid)[3]
    estimate = time_estimate(denoiser, largest, batch_size, device, left,
                             args.rate or adapter.requests_per_second, adapter.max_batch or 1)
    if estimate is not None:
        say(estimate)
    refusal = approved(args, cost)
    if refusal is not None:
        say(refusal)
        return EXIT_NOT_RUN
    smoothed = SmoothedClassifier(adapter, args.sigma, denoiser, journal=args.journal, **settings)
    say(_seed_line(args.journal, seed))
    with smoothed, out_file(args.output) as out:
        try:
            _write_rows(args, certify, smoothed, images, entries, indices, out, cost)
        except KeyboardInterrupt:  # the one line the command prints for it says how to resume
            raise Interrupted(_interrupted(args, smoothed, seed, certify), smoothed.stats) from None
    say(_spent(smoothed, args))
    if args.max_side is not None:
        say(resized_note(args.max_side))
    if unreadable:
        say(f"{len(unreadable)} image(s) could not be read (listed above); the other "
            f"{len(entries)} were processed")
        return EXIT_PARTIAL
    return 0


def _readable_indices(args: argparse.Namespace, count: int,
                      unreadable: dict[int, str]) -> list[int]:  # fmt: skip
    """The indices of the readable images among ``count`` (``unreadable``: why each other one
    cannot be used, by index). Each unreadable one is reported on stderr; with ``--strict``,
    or when no image can be read, the run is refused instead."""
    if unreadable and (len(unreadable) == count or getattr(args, "strict", False)):
        why = "--strict: " if len(unreadable) < count else "no image could be read: "
        raise InvalidInputError(f"{why}{len(unreadable)} unreadable image(s): "
                                f"{'; '.join(unreadable.values())}")  # fmt: skip
    for reason in unreadable.values():
        _stderr(reason)
    return [i for i in range(count) if i not in unreadable]


def _show_plan(args: argparse.Namespace, which: str, decision: Decision | None,
               lines: list[str], batch_line: str, batch_size: int) -> None:  # fmt: skip
    """Print the plan on stderr before any query: which denoiser, the question (unless the
    default top label), the plan's ``lines``, the batch size, and what ``--max-side`` does."""
    _stderr(which)
    if decision is not None:  # the default question (top label) adds no line
        _stderr(f"question: {describe(decision)}")
    for line in lines:
        _stderr(line)
    _stderr(batch_line if batch_size == args.batch_size else f"batch size {batch_size} (a "
            "round of requests: the sequential test's stop is seen before the next is paid for)")
    if args.max_side is not None:
        _stderr(resized_note(args.max_side))


def _seed_line(journal: str | None, seed: int) -> str:
    """The run's seed, and with a journal how to resume the run after an interruption."""
    if journal:
        return (f"seed {seed}, journal {journal}: to resume after an interruption, rerun "
                f"with --seed {seed}; answers already journaled are not sent again")
    return f"seed {seed}"


def _journaled(journal: str | None, smoothed: SmoothedClassifier) -> int:
    """How many answers of ``smoothed``'s run the journal at ``journal`` holds already (0 when
    there is none): a resumed run does not pay for them again. Read only; ``smoothed`` (built
    only for its run key) is closed."""
    with smoothed:
        key = smoothed.run_key
    if not journal or not os.path.isfile(journal):
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT COUNT(*) FROM samples WHERE run = ?", (key,)).fetchone()
    except sqlite3.Error:  # not a journal, or damaged: the run itself says so
        return 0
    return int(row[0])


def _limits(args: argparse.Namespace) -> RateLimits:
    if args.rate is not None and args.rate <= 0:
        raise InvalidInputError(f"--rate must be positive, got {args.rate}")
    in_flight = None if args.in_flight is None else check_count("in-flight", args.in_flight)
    return RateLimits(requests_per_second=args.rate, max_in_flight=in_flight)


def _batch_size(args: argparse.Namespace, adapter: Adapter, certify: bool) -> int:
    """``--batch-size``; in the sequential mode, unless given, what one round of requests
    carries, so that the test's stop is seen before the next round is paid for."""
    if not (certify and args.radius is not None) or getattr(args, "batch_size_given", True):
        return args.batch_size
    round_trip = (adapter.max_batch or 1) * (args.in_flight or adapter.max_in_flight)
    return max(1, min(args.batch_size, round_trip))


def _write_rows(args, certify, smoothed, images, entries, indices, out, cost) -> None:
    options: dict[str, Any] = dict(max_queries=args.max_queries, progress=args.progress,
                                   shard=False, show_plan=False, clean=True)
    if args.max_cost is not None and cost:
        options.update(max_cost=args.max_cost, price_per_1000=_price(args)[0])
    if certify:
        radius = args.radius
        if radius is not None:
            options.update(radius=radius, selection=args.selection, target_radius=radius)
        columns: tuple[str, ...] = CERTIFY_COLUMNS if radius is None else RADIUS_COLUMNS
        outcomes = certify_many(smoothed, images, args.n0, args.n, args.alpha, **options)
    else:
        columns = PREDICT_COLUMNS
        outcomes = predict_many(smoothed, images, args.n, args.alpha, **options)
    columns += CLEAN_COLUMNS
    write_log(outcomes, LogWriter(out, args.format, columns), sigma=smoothed.sigma,
              labels=[e.label for e in entries], files=[e.name for e in entries],
              indices=indices)


def _spent(smoothed: SmoothedClassifier, args: argparse.Namespace) -> str:
    price, _ = _price(args)
    sent = smoothed.stats.images
    if args.replay:
        return f"replayed {sent:,} answers from {args.replay}; none sent to {args.api}"
    money = "" if not price else f", about ${sent * price / 1000:,.2f}"
    return f"sent {sent:,} queries to {args.api}{money}"


def _interrupted(args, smoothed: SmoothedClassifier, seed: int, certify: bool) -> str:
    spent = _spent(smoothed, args)
    if not args.journal:
        return (f"interrupted: {spent}; the answers were not kept (give --journal FILE "
                "to be able to resume)")
    command = "certify" if certify else "predict"
    return (f"interrupted: {spent}; every answer is in {args.journal}: rerun `smoothapi "
            f"{command} --api {args.api} ... --journal {args.journal} --seed {seed}` to "
            "resume without paying for them again")


def _stderr(line: str) -> None:
    print(f"smoothapi: {line}", file=sys.stderr, flush=True)
