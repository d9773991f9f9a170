"""``smoothapi certify --api NAME`` and ``predict --api NAME``: a vision API from the shell.

    export AZURE_VISION_ENDPOINT=https://<resource>.cognitiveservices.azure.com
    export AZURE_VISION_KEY=<key>
    smoothapi certify --api azure photos/ --sigma 0.25 --n 500 --max-cost 5 --journal run.sqlite

Money first: the provider's adapter is built (SDK and credentials checked, nothing sent),
every image is read, the denoiser chosen (by default the shipped natural-photo denoiser
for ``--sigma``), and the plan is printed: images, queries at most, the estimated cost
with the price's source and date, and the largest radius ``n`` samples can certify. The
run starts only if the estimate is under ``--max-cost`` (then also a hard cap) or ``--yes``
is given. Rows are written as the local-model commands write them; ``--radius R`` certifies
one radius sequentially and adds the test's ``outcome`` column.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .._images import load_image
from ..adapters import PROVIDERS, create_adapter
from ..adapters.base import Adapter
from ..adapters.remote import import_optional
from ..certification import check_count, check_radius, max_certifiable_radius
from ..denoisers import default_denoiser, load_denoiser
from ..errors import AuthenticationError, Interrupted, InvalidInputError
from ..pricing import PRICES
from ..recording import Recording
from ..runs import (
    CERTIFY_COLUMNS,
    PREDICT_COLUMNS,
    RADIUS_COLUMNS,
    LogWriter,
    certify_many,
    predict_many,
    write_log,
)
from ..smoothing import DEFAULT_BATCH_SIZE, RateLimits, SmoothedClassifier

__all__ = ["API_NAMES", "EXIT_NOT_RUN", "add_api_options", "resolve_counts", "run_api"]

API_NAMES = ("azure", "google", "aws", "clarifai", "http")
EXIT_NOT_RUN = 1  # the plan was shown and nothing was sent: the estimate needs --yes
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
                     help="clarifai: plaintext gRPC, for a local test server only")
    api.add_argument("--url", help="http: the classification endpoint")
    api.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                     help="http: a request header (repeatable; secrets: prefer --header-env)")
    api.add_argument("--header-env", action="append", default=[], metavar="NAME=VAR",
                     help="http: a header whose value is read from environment variable VAR")
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
    run = parser.add_argument_group("paid runs")
    if certify:
        run.add_argument("--radius", type=float, default=None, metavar="R",
                         help="certify radius R sequentially, stopping as soon as it is decided "
                              "(n is then each image's budget); adds an outcome column")
        run.add_argument("--selection", choices=("samples", "clean"), default="samples",
                         help="with --radius: the candidate from n0 noisy samples (default) "
                              "or from ONE query on the clean image")
    run.add_argument("--max-cost", type=float, default=None, metavar="USD",
                     help="run when the estimate is under USD, and stop before passing it")
    run.add_argument("--max-queries", type=int, default=None,
                     help="stop before an image that could take the run past this many queries")
    run.add_argument("--yes", action="store_true", help="run whatever the estimate")
    run.add_argument("--progress", action="store_true",
                     help="a progress bar with queries, cost and rate on stderr")
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
                                                         "replay", "header", "header_env")
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
    if name == "http":
        if not args.url:
            raise InvalidInputError("--api http needs --url URL (your model server's endpoint)")
        options["headers"] = dict(_pair(h, ":", "--header 'NAME: VALUE'") for h in args.header)
        options["header_env"] = dict(_pair(h, "=", "--header-env NAME=VAR")
                                     for h in args.header_env)  # fmt: skip
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
        recording = Recording(args.record or args.replay, "record" if args.record else "replay")
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
    trained = (getattr(denoiser, "checkpoint_metadata", None) or {}).get("sigma")
    note = ""
    if trained is not None and abs(float(trained) - sigma) > 1e-9:
        note = f"; it was trained for sigma={float(trained):g}, not {sigma:g}"
    return denoiser, f"denoiser: {spec}{note}"


def _channels(denoiser: torch.nn.Module | None) -> int | None:
    if denoiser is None:
        return None
    kwargs = (getattr(denoiser, "arch_config", None) or {}).get("kwargs", {})
    return kwargs.get("in_channels")


class ApiImages(Sequence):
    """The images, each read when the run reaches it, grey ones made RGB for an RGB denoiser."""

    def __init__(self, paths: Sequence[Any], channels: int | None) -> None:
        self.paths, self.channels = list(paths), channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]  # no slices
        image = load_image(self.paths[index])
        if self.channels == 3 and image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
        if self.channels is not None and image.shape[0] != self.channels:
            raise InvalidInputError(
                f"{self.paths[index]} has {image.shape[0]} channels; the denoiser takes "
                f"{self.channels}")
        return image

    def check(self) -> None:
        """Read every image now, so that a bad one fails before anything is paid for."""
        for index in range(len(self)):
            self[index]


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


def plan(args: argparse.Namespace, images: int, certify: bool) -> tuple[list[str], float | None]:
    """The lines shown before the first paid query, and the estimated cost (None: unknown)."""
    radius_mode = certify and args.radius is not None
    selection = 1 if radius_mode and args.selection == "clean" else (args.n0 if certify else 0)
    per_image = selection + args.n
    queries = images * per_image
    if args.max_queries is not None:
        queries = min(queries, check_count("max-queries", args.max_queries))
    price, source = _price(args)
    best = max_certifiable_radius(args.n, args.alpha, args.sigma)
    lines = [f"plan: {images} image(s) x at most {per_image:,} queries = at most {queries:,} "
             f"queries to {args.api}"]
    cost = None if price is None else queries * price / 1000
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
    if args.yes or cost is None or cost == 0:
        return None
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
    adapter = build_adapter(args)
    denoiser, which = choose_denoiser(args.denoiser, args.sigma, device, args.denoiser_dtype)
    images = ApiImages([e.path for e in entries], _channels(denoiser))
    images.check()
    lines, cost = plan(args, len(images), certify)
    say = _stderr
    say(which)
    for line in lines:
        say(line)
    refusal = approved(args, cost)
    if refusal is not None:
        say(refusal)
        return EXIT_NOT_RUN
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(7), "big")
    smoothed = SmoothedClassifier(
        adapter, args.sigma, denoiser, batch_size=_batch_size(args, adapter, certify),
        device=device, seed=seed, journal=args.journal, limits=_limits(args),
    )  # fmt: skip
    if args.journal:
        say(f"seed {seed}, journal {args.journal}: to resume after an interruption, rerun "
            f"with --seed {seed}; answers already journaled are not sent again")
    else:
        say(f"seed {seed}")
    with smoothed, out_file(args.output) as out:
        try:
            _write_rows(args, certify, smoothed, images, entries, out, cost)
        except KeyboardInterrupt:  # the one line the command prints for it says how to resume
            raise Interrupted(_interrupted(args, smoothed, seed, certify), smoothed.stats) from None
    say(_spent(smoothed, args))
    return 0


def _limits(args: argparse.Namespace) -> RateLimits:
    if args.rate is not None and args.rate <= 0:
        raise InvalidInputError(f"--rate must be positive, got {args.rate}")
    in_flight = None if args.in_flight is None else check_count("in-flight", args.in_flight)
    return RateLimits(requests_per_second=args.rate, max_in_flight=in_flight)


def _batch_size(args: argparse.Namespace, adapter: Adapter, certify: bool) -> int:
    """``--batch-size``; in the sequential mode, unless given, what one round of requests
    carries, so that the test's stop is seen before the next round is paid for."""
    if not (certify and args.radius is not None) or args.batch_size != DEFAULT_BATCH_SIZE:
        return args.batch_size
    round_trip = (adapter.max_batch or 1) * (args.in_flight or adapter.max_in_flight)
    return max(1, min(args.batch_size, round_trip))


def _write_rows(args, certify, smoothed, images, entries, out, cost) -> None:
    options: dict[str, Any] = dict(max_queries=args.max_queries, progress=args.progress,
                                   shard=False)
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
    write_log(outcomes, LogWriter(out, args.format, columns), sigma=smoothed.sigma,
              labels=[e.label for e in entries], files=[e.name for e in entries])


def _spent(smoothed: SmoothedClassifier, args: argparse.Namespace) -> str:
    price, _ = _price(args)
    sent = smoothed.stats.images
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
