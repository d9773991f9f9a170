"""The ``smoothapi`` command line: certify or predict a folder of images, or run the demo.

    smoothapi certify --model CKPT IMAGES --sigma 0.25 [--n0 100] [--n 10000] [--alpha 0.001]
    smoothapi predict --model CKPT IMAGES --sigma 0.25 [--n 1000] [--alpha 0.001]
    smoothapi certify --api azure IMAGES --sigma 0.25 [--n 500] [--max-cost 5] [--journal J]
    smoothapi certify --from-journal J [--decision SPEC] [--alpha A] [--run KEY_PREFIX]
    smoothapi demo [--n0 100] [--n 1000] [--seed 0] [--photos [--out PNG]]

IMAGES is one image file or a folder. A folder with subfolders is read in ImageFolder
layout: each subfolder's name is the true label of the images in it (searched
recursively); images directly in a folder have no known label. Output is one row per
image, written and flushed as it is produced: TSV with Cohen et al.'s column names, or
JSON Lines with ``--format json``. ``--api NAME`` certifies a vision API instead of a
local model: see :mod:`smoothapi.cli.api`. ``--decision SPEC`` certifies another question
than the top label, and ``--from-journal`` asks one offline: see :mod:`smoothapi.cli.questions`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from .. import __version__
from .._checkpoint import as_module_input
from .._image_files import ImageFile, natural_key, scan_images
from .._image_files import _candidates as image_candidates
from .._images import (
    IMAGE_EXTENSIONS,
    PEAK_FLOATS_PER_PIXEL,
    ImageWarning,
    check_batch_memory,
    fit_side,
    load_image,
)
from ..adapters.local import LocalModelAdapter
from ..analysis import (
    DEFAULT_RADII,
    attempts_summary,
    average_certified_radius,
    best_sigma_table,
    certified_accuracy,
    format_table,
    images_compared,
    plot_curves,
    read_log,
)
from ..certification import check_alpha, check_count, check_sigma
from ..decisions import Decision
from ..denoisers import load_denoiser
from ..errors import Interrupted, InvalidInputError, SmoothAPIError
from ..journal import Journal
from ..runs import (
    CERTIFY_COLUMNS,
    PREDICT_COLUMNS,
    RADIUS_COLUMNS,
    LogWriter,
    Shard,
    certify_many,
    predict_many,
    write_log,
)
from ..smoothing import DEFAULT_BATCH_SIZE, SmoothedClassifier
from .api import (
    add_api_options,
    auto_batch_size,
    check_local_options,
    resized_note,
    resolve_counts,
    run_api,
)
from .demo import run_demo, run_denoised_demo
from .loopback import add_loopback_command
from .questions import (
    add_decision_options,
    decision_from_args,
    describe,
    questions_summary,
    run_from_journal,
)
from .training import add_training_commands

__all__ = ["IMAGE_EXTENSIONS", "ImageEntry", "find_images", "main"]

PROG = "smoothapi"
EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2  # 1: some images could not be read


# --- finding the images ------------------------------------------------------------------


class ImageEntry:
    """One image to process: where it is, how to name it in the output, its true label if known."""

    __slots__ = ("path", "name", "label")

    def __init__(self, path: Path, name: str, label: str | None) -> None:
        self.path, self.name, self.label = path, name, label

    def __repr__(self) -> str:
        return f"ImageEntry({self.name!r}, label={self.label!r})"


def find_images(root: str | Path) -> list[ImageEntry]:
    """The files named like images under ``root`` (a file or a folder), sorted, with their
    true labels, without reading them (:func:`~smoothapi._image_files.scan_images` reads).

    A single file is taken as one image with no label. In a folder, images directly
    in it have no label, and images anywhere under a subfolder take that subfolder's
    name as their label (ImageFolder layout). Hidden files and folders are skipped.
    """
    root = Path(root)
    if not root.exists():
        raise InvalidInputError(f"images path not found: {root}")
    if root.is_file():
        return [ImageEntry(root, root.name, None)]
    if not root.is_dir():
        raise InvalidInputError(f"images path is neither a file nor a folder: {root}")
    found = image_candidates(root, IMAGE_EXTENSIONS)
    if not found:
        raise InvalidInputError(
            f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return [ImageEntry(*c) for c in sorted(found, key=lambda c: natural_key(c[1]))]


def _readable_images(root: str, strict: bool) -> tuple[list[ImageFile], list[int], int]:
    """Read every image under ``root`` once. Each unreadable one is reported on stderr (with
    ``strict`` the run is refused instead); warnings from reading are reported beside their
    image. Returns the readable images, their indices among all files, and how many failed."""
    scan = scan_images(root)
    reasons = [bad.reason if str(bad.path) in bad.reason else f"cannot read {bad.path}: "
               f"{bad.reason}" for bad in scan.unreadable]  # fmt: skip
    if reasons and (strict or not scan.readable):
        why = "--strict: " if scan.readable else "no image could be read: "
        raise InvalidInputError(f"{why}{len(reasons)} unreadable image(s): {'; '.join(reasons)}")
    for reason in reasons:
        print(f"{PROG}: {reason}", file=sys.stderr, flush=True)
    for image in scan.readable:
        for note in image.warnings:
            print(f"{PROG}: {image.name}: {note}", file=sys.stderr, flush=True)
    names = sorted([i.name for i in scan.readable] + [b.name for b in scan.unreadable],
                   key=natural_key)  # fmt: skip
    order = {name: index for index, name in enumerate(names)}
    return scan.readable, [order[image.name] for image in scan.readable], len(scan.unreadable)


# --- the subcommands ----------------------------------------------------------------------------


def _validate_common(args: argparse.Namespace) -> None:
    check_sigma(args.sigma)
    check_alpha(args.alpha)
    check_count("n", args.n)
    if getattr(args, "n0", None) is not None:
        check_count("n0", args.n0)
    if args.batch_size is not None:
        check_count("batch-size", args.batch_size)
    if getattr(args, "max_side", None) is not None:
        check_count("max-side", args.max_side)
    if args.seed is not None and args.seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {args.seed}")


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InvalidInputError(f"invalid device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {name!r} requested but CUDA is not available")
    return device


def _check_images(
    images: list[ImageFile],
    adapter: LocalModelAdapter,
    denoiser: torch.nn.Module | None,
    batch_size: int,
    device: torch.device,
    max_side: int | None = None,
) -> None:
    """Fail before any output: for each image shape, a batch must fit in memory, and the
    denoiser (if any) and the model must take an image of that shape."""
    tried: set[tuple[int, ...]] = set()
    for entry in images:
        shape = _fitted_shape(entry.shape, max_side)
        if shape in tried:
            continue
        tried.add(shape)
        channels, height, width = shape
        what = f"{entry.path} (a {channels}-channel {height}x{width} image)"
        check_batch_memory(shape, batch_size, device)
        batch = fit_side(_load(entry.path), max_side).unsqueeze(0).to(device)
        if denoiser is not None:
            try:
                with torch.inference_mode():
                    batch = denoiser(as_module_input(denoiser, batch)).float()
            except RuntimeError as exc:
                reason = _first_line(exc)
                raise InvalidInputError(f"the denoiser cannot take {what}: {reason}") from exc
        try:
            adapter.top_labels(batch)
        except (RuntimeError, IndexError, ValueError) as exc:
            reason = _first_line(exc)
            raise InvalidInputError(f"the model cannot classify {what}: {reason}") from exc


def _fitted_shape(shape: tuple[int, ...], max_side: int | None) -> tuple[int, ...]:
    """The shape :func:`~smoothapi._images.fit_side` gives an image of ``shape``."""
    return tuple(fit_side(torch.empty(shape), max_side).shape)


def _first_line(exc: BaseException) -> str:
    """The first line of torch's reason (the cause, when the package wrapped it already)."""
    exc = exc.__cause__ or exc
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def _load(path: Path) -> torch.Tensor:
    """An image the scan read already: its warnings were reported then."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageWarning)
        return load_image(path)


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """stdout, or the file ``path`` (``-`` is stdout too)."""
    if path is None or path == "-":
        yield sys.stdout
        return
    try:
        out = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InvalidInputError(f"cannot write output file {path}: {exc.strerror}") from None
    with out:
        yield out


class _LazyImages(Sequence):
    """The images of ``entries``, each loaded when the runner reaches it."""

    def __init__(self, entries: list[ImageFile], max_side: int | None = None) -> None:
        self.entries, self.max_side = entries, max_side

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]  # no slices
        return fit_side(_load(self.entries[index].path), self.max_side)


def _has_required(args: argparse.Namespace) -> bool:
    """Whether a live run has IMAGES and --sigma; if not, says so as argparse would (neither
    is required with --from-journal, so argparse cannot)."""
    missing = [name for name, value in (("IMAGES", args.images), ("--sigma", args.sigma))
               if value is None]  # fmt: skip
    if missing:
        args.subparser.print_usage(sys.stderr)
        print(f"{args.subparser.prog}: error: the following arguments are required: "
              f"{', '.join(missing)}", file=sys.stderr)  # fmt: skip
    return not missing


def _run_images(args: argparse.Namespace, certify: bool) -> int:
    """``certify`` or ``predict``: from a journal, through ``--api``, or with the local model
    ``--model``, writing one row per image; returns the exit status."""
    if getattr(args, "from_journal", None) is not None:
        return run_from_journal(args, _output)
    if not _has_required(args):
        return EXIT_ERROR
    if getattr(args, "run", None) is not None:
        raise InvalidInputError("--run applies with --from-journal only")
    resolve_counts(args, certify)
    _validate_common(args)
    if args.api is not None:
        if args.model is not None:
            raise InvalidInputError("give --model CKPT or --api NAME, not both")
        device = _device(args.device)
        return run_api(args, certify, find_images(args.images), device, _output)
    if args.model is None:
        raise InvalidInputError("give --model CKPT (a local classifier) or --api NAME "
                                "(a vision API: azure, google, aws, clarifai, http)")
    check_local_options(args)
    decision = decision_from_args(args)
    device = _device(args.device)
    adapter = LocalModelAdapter.from_checkpoint(args.model, device=device)
    use = args.denoiser is not None and args.denoiser.lower() != "none"
    denoiser = load_denoiser(args.denoiser, device, args.denoiser_dtype) if use else None
    entries, indices, unreadable = _readable_images(args.images, args.strict)
    samples = max(args.n, getattr(args, "n0", None) or 1)
    shapes = {_fitted_shape(entry.shape, args.max_side) for entry in entries}
    args.batch_size, batch_line = auto_batch_size(args.batch_size, sorted(shapes), device,
                                                  PEAK_FLOATS_PER_PIXEL)  # fmt: skip
    _check_images(entries, adapter, denoiser, min(args.batch_size, samples), device,
                  args.max_side)
    shard = Shard.from_env()
    _check_shard(args, shard)
    smoothed = SmoothedClassifier(
        adapter, args.sigma, denoiser, batch_size=args.batch_size, device=device, seed=args.seed,
        journal=args.journal, decision=decision,
    )
    options, columns = _run_options(args, certify, shard)
    with smoothed, _output(shard.output(args.output)) as out:
        _announce_local_run(args, certify, smoothed.seed, len(entries), shard, device, batch_line,
                            decision)  # fmt: skip
        images = _LazyImages(entries, args.max_side)
        if certify:
            outcomes = certify_many(smoothed, images, args.n0, args.n, args.alpha, **options)
        else:
            outcomes = predict_many(smoothed, images, args.n, args.alpha, **options)
        write_log(outcomes, LogWriter(out, args.format, columns), sigma=smoothed.sigma,
                  labels=[e.label for e in entries], files=[e.name for e in entries],
                  indices=indices)
    shard.merge(args.output, args.format, columns)
    if args.max_side is not None:
        print(f"{PROG}: {resized_note(args.max_side)}", file=sys.stderr, flush=True)
    if unreadable:
        print(f"{PROG}: {unreadable} image(s) could not be read (listed above); the other "
              f"{len(entries)} were processed", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _check_shard(args: argparse.Namespace, shard: Shard) -> None:
    """Under torchrun (more than one process), refuse a run the processes cannot share: each
    needs ``--output`` to write its share, a format merged by idx, and the same ``--seed``."""
    if shard.world > 1 and (args.output is None or args.output == "-"):
        raise InvalidInputError("under torchrun, give --output: each process writes its "
                                "share and the first one merges them there")
    if shard.world > 1 and args.format == "text":
        raise InvalidInputError("under torchrun, give --format tsv or json (merged by idx)")
    if shard.world > 1 and args.seed is None:
        raise InvalidInputError("under torchrun, give --seed so that all processes agree")


def _run_options(args: argparse.Namespace, certify: bool,
                 shard: Shard) -> tuple[dict[str, Any], tuple[str, ...]]:  # fmt: skip
    """The options of :func:`~smoothapi.runs.certify_many` (or ``predict_many``) for a local
    run, ``--radius`` included, and the log's columns."""
    radius = getattr(args, "radius", None)
    options: dict[str, Any] = dict(shard=shard, max_queries=args.max_queries,
                                   progress=args.progress)  # fmt: skip
    if radius is not None:
        options.update(radius=radius, selection=args.selection, target_radius=radius)
    columns = (PREDICT_COLUMNS if not certify else
               CERTIFY_COLUMNS if radius is None else RADIUS_COLUMNS)  # fmt: skip
    return options, columns


def _announce_local_run(args: argparse.Namespace, certify: bool, seed: int, count: int,
                        shard: Shard, device: torch.device, batch_line: str,
                        decision: Decision | None) -> None:  # fmt: skip
    """Print on stderr what the run does: the command's settings and ``seed`` for ``count``
    images (with this process's share under torchrun), the device and the batch size; then
    the question, unless the default top label, and what ``--max-side`` does."""
    what = f"certify n0={args.n0} n={args.n}" if certify else f"predict n={args.n}"
    share = f" (process {shard.rank} of {shard.world})" if shard.world > 1 else ""
    print(f"{PROG}: {what} alpha={args.alpha} sigma={args.sigma} seed={seed} "
          f"on {count} image(s){share}, device {device}, {batch_line}",
          file=sys.stderr, flush=True)  # fmt: skip
    if decision is not None:  # the default question (top label) adds no line
        print(f"{PROG}: question: {describe(decision)}", file=sys.stderr, flush=True)
    if args.max_side is not None:
        print(f"{PROG}: {resized_note(args.max_side)}", file=sys.stderr, flush=True)


def _cmd_certify(args: argparse.Namespace) -> int:
    return _run_images(args, certify=True)


def _cmd_predict(args: argparse.Namespace) -> int:
    return _run_images(args, certify=False)


def _cmd_demo(args: argparse.Namespace) -> int:
    photo = args.photos
    n0 = args.n0 if args.n0 is not None else 20 if photo else 100
    n = args.n if args.n is not None else 100 if photo else 1_000
    check_count("n0", n0)
    check_count("n", n)
    if args.seed is not None and args.seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {args.seed}")
    if photo:
        from .photo_demo import run_photo_demo  # loads the ImageNet zoo: only when asked

        if args.white_box:
            raise InvalidInputError("--photos and --white-box are two different demos")
        run_photo_demo(args.out, count=check_count("count", args.count), n0=n0, n=n,
                       seed=args.seed, denoiser=args.denoiser)
        return EXIT_OK
    if args.denoiser is not None:
        raise InvalidInputError("--denoiser applies to the --photos demo")
    args.n0, args.n = n0, n
    if args.white_box:
        run_demo(n0=args.n0, n=args.n, seed=args.seed)
    else:
        run_denoised_demo(n0=args.n0, n=args.n, seed=args.seed)
    return EXIT_OK


def _cmd_analyze(args: argparse.Namespace) -> int:
    if not args.logs and not args.journal:
        raise InvalidInputError("give certification logs, --journal FILE, or both")
    if args.journal:
        print(f"attempts in {args.journal}:")
        for line in (attempts_summary(args.journal) + _tries_by_pixels(args.journal)
                     + questions_summary(args.journal)):
            print(f"  {line}")
        if not args.logs:
            return EXIT_OK
        print()
    logs = []
    for spec in args.logs:
        name, sep, path = spec.rpartition("=")
        logs.append(read_log(path, name if sep else None))
    radii = args.radii
    header = ["log", "n", "ACR"] + [f"{r:g}" for r in radii]
    rows = [[log.name, str(len(log)), f"{average_certified_radius(log):.3f}"]
            + [f"{a:.3f}" for a in certified_accuracy(log, radii)] for log in logs]
    if args.format == "latex":
        print(" & ".join(header) + r" \\")
        print("\n".join(" & ".join(row) + r" \\" for row in rows))
    else:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        print("\n".join("| " + " | ".join(row) + " |" for row in rows))
    grouped: dict[str, dict[float, Any]] = {}
    for log in logs:
        method, at, sigma = log.name.rpartition("@")
        if at:
            try:
                grouped.setdefault(method, {})[float(sigma)] = log
            except ValueError:
                raise InvalidInputError(f"{log.name}: expected METHOD@SIGMA") from None
    if grouped:
        shared = images_compared([log for by_sigma in grouped.values()
                                  for log in by_sigma.values()])
        caption = "certified accuracy (standard accuracy), best sigma per radius"
        if shared is not None:
            caption += f", on the {shared} images (idx) in every log"
        print()
        print(format_table(best_sigma_table(grouped, radii), radii,
                           style="latex" if args.format == "latex" else "markdown",
                           caption=caption))
    if args.plot:
        print(f"\nsaved {plot_curves(logs, args.plot)}")
    return EXIT_OK


def _tries_by_pixels(journal: str) -> list[str]:
    """Repeated tries across the journal's runs, an image known by its pixels: under another
    seed (another run) or another image_id it is still the same image, and the best of its
    k tries holds at k x alpha."""
    with Journal(journal) as opened:
        tries, attempts = opened.tries(), opened.attempts()
    lines = []
    for method, per_image in tries.items():
        repeated = [k for k in per_image.values() if k > 1]
        line = (f"all runs, by the images' pixels (any seed or image_id): {method}: "
                f"{len(per_image)} image(s), {sum(per_image.values())} attempt(s), "
                f"{len(repeated)} image(s) tried more than once")
        if repeated:
            k = max(repeated)
            alpha = max((a.settings["alpha"] for a in attempts
                         if a.method == method and "alpha" in a.settings), default=None)
            alpha_text = "alpha" if alpha is None else f"{alpha:g}"
            line += (f" (up to {k} times: the best of {k} tries holds at {k} x {alpha_text}, "
                     f"not {alpha_text})")
        lines.append(line)
    return lines


# --- the parser ----------------------------------------------------------------------------


def _add_image_options(parser: argparse.ArgumentParser, certify: bool) -> None:
    # IMAGES and --sigma are checked in _run_images: certify --from-journal takes neither
    parser.add_argument("images", metavar="IMAGES", nargs="?", default=None,
                        help="an image file, or a folder of images (subfolders = true labels)")
    parser.add_argument("--model", metavar="CKPT",
                        help="classifier checkpoint (.safetensors) saved by LocalModelAdapter.save")
    parser.add_argument("--denoiser", default=None, metavar="NAME|PATH|none",
                        help="denoiser run before the classifier: a shipped name (e.g. "
                             "photo-mse), a .safetensors file, or none (default: none "
                             "with --model; with --api the shipped photo denoiser for --sigma)")
    parser.add_argument("--denoiser-dtype", default=None, choices=("float32", "bfloat16", "auto"),
                        help="run the denoiser in this precision (default: float32; bfloat16 "
                             "is several times faster on CPUs with bfloat16 instructions and "
                             "slower on others; auto: bfloat16 only where it is fast)")
    parser.add_argument("--sigma", type=float, default=None,
                        help="noise level, an l2 distance in [0,1] pixel space (required"
                             + ("; not with --from-journal)" if certify else ")"))
    if certify:
        parser.add_argument("--n0", type=int, default=None,
                            help="selection samples (default: 100; 20 with --api)")
    parser.add_argument("--n", "--num-samples", dest="n", type=int, default=None,
                        help=f"{'estimation ' if certify else ''}samples "
                             f"(default: {10_000 if certify else 1_000}; 500 with --api)")
    parser.add_argument("--alpha", type=float, default=0.001,
                        help="failure probability (default: 0.001)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"noisy samples per forward pass (default: {DEFAULT_BATCH_SIZE}, or "
                             "the largest power of two whose batch fits in half the free "
                             "memory, for large images)")
    parser.add_argument("--max-side", type=int, default=None, metavar="N",
                        help="shrink each image so that its longer side is at most N pixels "
                             "(aspect ratio kept) before the noise; radii are then in the "
                             "resized image's pixel space")
    parser.add_argument("--seed", type=int, default=None,
                        help="noise seed, for a reproducible run "
                             "(default: random, printed to stderr)")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu or cuda (default: cuda if available)")
    parser.add_argument("--output", "-o", default=None, metavar="FILE",
                        help="write rows here instead of stdout (required under torchrun, "
                             "where each process takes every WORLD_SIZE-th image)")
    parser.add_argument("--journal", default=None, metavar="FILE",
                        help="SQLite journal of every answer: rerunning the same command "
                             "with the same --seed resumes without repeating work")
    parser.add_argument("--format", choices=("tsv", "json", "text"), default="tsv",
                        help="tsv (default), json (JSON Lines, with counts and bounds), or "
                             "text (an aligned table to read: radii to 3 decimals, rows whose "
                             "certificate differs from the API's clean answer marked *)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse the run if any image cannot be read (default: process "
                             "the readable ones, list the others, exit 1)")
    add_api_options(parser, certify)
    add_decision_options(parser, certify)
    parser.set_defaults(subparser=parser)


def _add_demo_command(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="certify the bundled Fashion-MNIST images, with and without denoisers",
        description="Certify 20 bundled Fashion-MNIST test images at sigma=0.25 with a "
                    "standard-trained small CNN: alone, behind the full-access denoiser, and "
                    "behind the query-access denoiser with the CNN served as a vision API on "
                    "loopback HTTP. --white-box certifies a noise-trained CNN instead. "
                    "--photos: an ImageNet classifier as a vision API on held-out photos, "
                    "without and with the shipped photo denoiser, drawn in a PNG grid.",
    )
    demo.add_argument("--white-box", action="store_true",
                      help="the noise-trained classifier (Cohen et al.) without denoisers")
    demo.add_argument("--n0", type=int, default=None,
                      help="selection samples (default: 100; 20 with --photos)")
    demo.add_argument("--n", type=int, default=None,
                      help="estimation samples (default: 1000; 100 with --photos)")
    demo.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    demo.add_argument("--photos", action="store_true",
                      help="EfficientNet-Lite2 (ImageNet) served as a vision API on loopback "
                           "certifies held-out photos without and with the shipped photo "
                           "denoiser, and draws them in a PNG grid")
    demo.add_argument("--out", default="photo_demo.png", metavar="PNG",
                      help="with --photos: where the grid goes (default: photo_demo.png)")
    demo.add_argument("--count", type=int, default=6,
                      help="with --photos: how many photos (default: 6)")
    demo.add_argument("--denoiser", default=None, metavar="NAME|PATH",
                      help="with --photos: another photo denoiser than the shipped one")
    demo.set_defaults(handler=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Certified l2 robustness of image classifiers by randomized smoothing.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    certify = commands.add_parser(
        "certify", help="certify a class and an l2 radius for each image (CERTIFY)",
        description="CERTIFY (Cohen et al. 2019): for each image, a class and an l2 radius "
                    "(in [0,1] pixel space) within which the smoothed classifier cannot change, "
                    "with probability at least 1 - alpha. Columns: "
                    + ", ".join(CERTIFY_COLUMNS) + ".",
    )
    _add_image_options(certify, certify=True)
    certify.set_defaults(handler=_cmd_certify)

    predict = commands.add_parser(
        "predict", help="predict the smoothed classifier's class for each image (PREDICT)",
        description="PREDICT (Cohen et al. 2019): the smoothed classifier's class for each "
                    "image, or -1 (abstain); wrong with probability at most alpha.",
    )
    _add_image_options(predict, certify=False)
    predict.set_defaults(handler=_cmd_predict)

    _add_demo_command(commands)
    add_loopback_command(commands)

    analyze = commands.add_parser(
        "analyze", help="certified accuracy, average radius and best-sigma tables from logs",
        description="Read certification logs (smoothapi certify's TSV or JSON Lines, or Cohen "
                    "et al.'s TSV) and print certified accuracy at the given radii and the "
                    "average certified radius. Name logs METHOD@SIGMA=PATH to also get the "
                    "paper's table: per method and radius the best sigma's certified accuracy "
                    "with its standard accuracy in parentheses.",
    )
    analyze.add_argument("logs", nargs="*", metavar="[NAME=]LOG")
    analyze.add_argument("--journal", default=None, metavar="FILE",
                         help="also account for repeated tries: the attempts recorded in a "
                              "journal, per run (the best of k tries holds at k x alpha)")
    analyze.add_argument("--radii", type=float, nargs="+",
                         default=list(DEFAULT_RADII),
                         help="radii of the table (default: 0 0.25 ... 1.5)")
    analyze.add_argument("--format", choices=("markdown", "latex"), default="markdown")
    analyze.add_argument("--plot", default=None, metavar="PNG",
                         help="also save certified-accuracy curves here")
    analyze.set_defaults(handler=_cmd_analyze)

    add_training_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 on a usage or input error,
    130 after Ctrl-C)."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error argparse printed
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_ERROR
        return args.handler(args)
    except SmoothAPIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:  # one line; Interrupted says what was spent
        print(f"{PROG}: {exc if isinstance(exc, Interrupted) else 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`smoothapi certify ... | head`): stop quietly, and point
        # stdout at /dev/null so that Python's final flush does not complain again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
