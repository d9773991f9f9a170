"""The `smoothapi train-classifier` and `smoothapi train-denoiser` commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from ..adapters.local import LocalModelAdapter
from ..classifiers import create_classifier, list_classifiers
from ..denoisers import create_denoiser, list_denoisers, load_denoiser
from ..errors import InvalidInputError
from ..studies.fashion_mnist import run_experiment
from ..training.data import DATASET_NAMES, load_dataset
from ..training.loop import OPTIMIZERS, TrainConfig
from ..training.objectives import GUIDANCE_MODES, OBJECTIVES
from ..training.train import train_classifier, train_denoiser

__all__ = ["add_training_commands"]


def _arch_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        default="fashion-mnist",
        help="training data (default: fashion-mnist, from Debian's dataset-fashion-mnist package)",
    )
    group.add_argument(
        "--data-root",
        default=None,
        help="folder holding the dataset's files (required for cifar10 and "
        "imagefolder; fashion-mnist defaults to /usr/share/datasets/fashion-mnist)",
    )
    group.add_argument(
        "--eval-size",
        type=int,
        default=1000,
        help="held-out test images evaluated after every epoch (default: 1000)",
    )


def _add_optim_options(parser: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    group = parser.add_argument_group("optimisation (appendix A.1 of the paper)")
    group.add_argument(
        "--epochs",
        type=int,
        default=epochs,
        help=f"total epochs; rerunning with more resumes (default: {epochs})",
    )
    group.add_argument("--batch-size", type=int, default=128, help="per process (default: 128)")
    group.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adam",
        help="adam, sgd, or adam-then-sgd: Adam for --adam-epochs, then SGD "
        "from --sgd-lr (default: adam)",
    )
    group.add_argument("--lr", type=float, default=lr, help=f"learning rate (default: {lr:g})")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument("--weight-decay", type=float, default=0.0, help="(default: 0)")
    group.add_argument(
        "--lr-step",
        type=int,
        default=0,
        help="multiply the rate by --lr-gamma every this many epochs (of the SGD "
        "phase for adam-then-sgd); 0 keeps it constant (default: 0)",
    )
    group.add_argument("--lr-gamma", type=float, default=0.1, help="(default: 0.1)")
    group.add_argument(
        "--adam-epochs",
        type=int,
        default=50,
        help="Adam epochs before SGD in adam-then-sgd (default: 50)",
    )
    group.add_argument(
        "--sgd-lr", type=float, default=1e-4, help="first SGD rate in adam-then-sgd (default: 1e-4)"
    )
    group.add_argument("--seed", type=int, default=0, help="data order, noise, init (default: 0)")
    group.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: this process's GPU, else CPU)",
    )
    group.add_argument("--workers", type=int, default=0, help="data-loader workers (default: 0)")
    group.add_argument(
        "--no-amp", action="store_true", help="disable bfloat16/float16 autocast on GPUs"
    )
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_step=args.lr_step,
        lr_gamma=args.lr_gamma,
        adam_epochs=args.adam_epochs,
        sgd_lr=args.sgd_lr,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        num_workers=args.workers,
        progress=not args.no_progress,
    )


def _datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    return (
        load_dataset(args.dataset, "train", args.data_root),
        load_dataset(args.dataset, "test", args.data_root),
    )


def _classes(dataset: Dataset) -> list[str] | None:
    classes = getattr(dataset, "classes", None) or getattr(
        getattr(dataset, "dataset", None), "classes", None
    )
    return None if classes is None else list(classes)


def _channel_stats(dataset: Dataset, limit: int = 10_000) -> tuple[list[float], list[float]]:
    count = min(limit, len(cast(Sized, dataset)))  # every dataset here has a length
    images = torch.stack([dataset[i][0] for i in range(count)])
    return images.mean(dim=(0, 2, 3)).tolist(), images.std(dim=(0, 2, 3)).tolist()


def _checkpoints(spec: str | None) -> dict[str, LocalModelAdapter]:
    adapters = {}
    for path in filter(None, (spec or "").split(",")):
        adapters[Path(path).stem] = LocalModelAdapter.from_checkpoint(path)
    return adapters


def _report(history: list[dict], out: Path, filename: str) -> int:
    if history:
        last = history[-1]
        print(
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()
            )
        )
    print(f"saved {out / filename} (log: {out / 'log.jsonl'})")
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    train, test = _datasets(args)
    channels = train[0][0].shape[0]
    classes = _classes(train)
    model = create_classifier(
        args.arch,
        in_channels=channels,
        num_classes=len(classes) if classes else args.num_classes,
        **dict(args.arch_arg),
    )
    mean, std = _channel_stats(train)
    history = train_classifier(
        model,
        train,
        out_dir=args.out,
        mean=mean,
        std=std,
        class_names=classes,
        noise_sigma=args.noise_sigma,
        flip=args.flip,
        test_set=test,
        eval_sigma=args.eval_sigma,
        eval_size=args.eval_size,
        config=_config(args),
        metadata={"dataset": args.dataset, "input_size": list(train[0][0].shape[-2:])},
    )
    return _report(history, Path(args.out), "classifier.safetensors")


def _cmd_train_denoiser(args: argparse.Namespace) -> int:
    train, test = _datasets(args)
    channels = train[0][0].shape[0]
    if args.objective.endswith("+mse") and not args.pretrained:
        raise InvalidInputError(
            f"--objective {args.objective} fine-tunes an MSE denoiser: give it with --pretrained"
        )
    if args.pretrained:
        denoiser = load_denoiser(args.pretrained)
        if args.arch_arg or args.arch not in (None, getattr(denoiser, "arch_config", {})["arch"]):
            raise InvalidInputError("--pretrained sets the architecture; drop --arch/--arch-arg")
    else:
        arch = args.arch or "dncnn"
        denoiser = create_denoiser(arch, in_channels=channels, **dict(args.arch_arg))
    history = train_denoiser(
        denoiser,
        train,
        sigma=args.sigma,
        out_dir=args.out,
        objective=args.objective,
        classifiers=_checkpoints(args.surrogates),
        guidance=args.guidance,
        test_set=test,
        eval_classifiers=_checkpoints(args.eval_classifiers),
        eval_size=args.eval_size,
        config=_config(args),
        metadata={"dataset": args.dataset, "pretrained": args.pretrained},
    )
    return _report(history, Path(args.out), "denoiser.safetensors")


def _add_model_options(
    parser: argparse.ArgumentParser, choices: list[str], default: str | None, example: str
) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--arch",
        choices=choices,
        default=default,
        help=f"architecture (default: {default or 'dncnn, or that of --pretrained'})",
    )
    parser.add_argument(
        "--arch-arg",
        type=_arch_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"architecture argument, e.g. {example} (repeat)",
    )


EXPERIMENTS = {"fashion-mnist": "small", "digits": "tiny", "cifar10": "paper",
               "natural-photos": "small", "photo-mse": "small", "photo-stab": "small",
               "decisions": "small"}  # fmt: skip
#: Scales each study knows (checked by the study itself).
SCALE_NAMES = ("gpu", "paper", "small", "tiny")


def _cmd_experiment(args: argparse.Namespace) -> int:
    out = args.out or f"results/{args.study}"
    scale = args.scale or EXPERIMENTS[args.study]
    if args.snapshot:
        from ..studies.snapshots import snapshot_journals

        for path in snapshot_journals(Path(out)):
            print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    options = {"device": args.device, "only": args.only, "fresh": args.fresh}
    if args.study == "natural-photos":
        from ..studies.natural_photos import run_photo_study

        run_photo_study(scale, out, **options)
    elif args.study == "photo-mse":
        from ..studies.photo_mse import run_photo_mse

        run_photo_mse(scale, out, **options)
    elif args.study == "photo-stab":
        from ..studies.photo_stab import run_photo_stab

        start = args.start or "results/photo-mse/photo-mse.safetensors"
        run_photo_stab(scale, out, start=start, **options)
    elif args.study == "decisions":
        from ..studies.decisions import run_decisions_study

        run_decisions_study(scale, out, **options)
    else:
        run_experiment(scale, out, data_root=args.data_root, **options)
    return 0


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``train-classifier``, ``train-denoiser`` and ``experiment`` to ``smoothapi``."""
    _add_experiment_command(commands)
    _add_train_classifier_command(commands)
    _add_train_denoiser_command(commands)


def _add_experiment_command(commands: argparse._SubParsersAction) -> None:
    exp = commands.add_parser(
        "experiment",
        help="the paper's study end to end: classifiers, denoisers, certification, report",
        description="Train the target, surrogates and white-box classifiers, the MSE, "
        "STAB+MSE (full and query access), STAB and CLF+MSE denoisers, certify every "
        "configuration and write tables, curves and summary.json to --out. Finished stages "
        "are skipped on a rerun. fashion-mnist runs the 'small' scale (2 CPU cores, about "
        "3 hours), digits the 'tiny' one (a minute), cifar10 the 'paper' one (GPUs). "
        "natural-photos is the ImageNet / vision-API setting on real photos (EfficientNet-Lite "
        "target and surrogates; scales small, tiny and paper; run `make photos` first); "
        "photo-mse trains the noise-level-aware photo MSE denoiser for hours (small, gpu, "
        "tiny); photo-stab fine-tunes it with STAB+MSE per access and sigma (--start: the "
        "MSE checkpoint; small, gpu, tiny). decisions pays once per denoiser setting "
        "through a loopback vision API and certifies six questions of the same answers "
        "offline (small, tiny). A rerun into a "
        "finished --out only rewrites the report; --fresh with a new --out runs from scratch.",
    )
    exp.add_argument("study", choices=sorted(EXPERIMENTS))
    exp.add_argument("--out", default=None, help="output folder (default: results/STUDY)")
    exp.add_argument("--scale", choices=SCALE_NAMES, default=None,
                     help="override the study's default scale (fashion-mnist: small, tiny, "
                          "paper; natural-photos: small, tiny, paper; photo-mse: small, gpu, "
                          "tiny; photo-stab: small, gpu, tiny; decisions: small, tiny)")
    exp.add_argument("--start", default=None, metavar="SAFETENSORS",
                     help="photo-stab: the MSE denoiser to fine-tune (default: "
                          "results/photo-mse/photo-mse.safetensors)")
    exp.add_argument("--fresh", action="store_true",
                     help="a run from scratch: refuse an --out folder that holds finished "
                          "stages (a run there would skip them and only rewrite the report)")
    exp.add_argument("--data-root", default=None, help="dataset folder (cifar10 needs it)")
    exp.add_argument("--device", default=None, help="cpu, cuda ... (default: auto)")
    exp.add_argument("--only", default=None, metavar="PART[,PART...]",
                     type=lambda text: tuple(p for p in text.split(",") if p),
                     help="run only the stages whose names contain one of these (e.g. "
                          "lever,diagnose), leaving the rest for a later run; with a "
                          "second process, give it other stages than the first runs")
    exp.add_argument("--snapshot", action="store_true",
                     help="write gzipped copies of unfinished certifications' journals to "
                          "OUT/snapshots (commit them; a later run on another machine "
                          "resumes from them) and exit; safe while the study runs")
    exp.set_defaults(handler=_cmd_experiment)


def _add_train_classifier_command(commands: argparse._SubParsersAction) -> None:
    clf = commands.add_parser(
        "train-classifier",
        help="train a classifier (standard, or with Gaussian noise augmentation)",
        description="Train a small classifier to act as a target or surrogate in experiments. "
        "With --noise-sigma > 0 it is Cohen et al.'s noise-augmented (white-box) baseline. "
        "Writes OUT/classifier.safetensors, OUT/log.jsonl and OUT/state.safetensors; rerunning "
        "the same command resumes. Launch with `torchrun --nproc_per_node N` for DDP.",
    )
    _add_model_options(clf, list_classifiers(), "small_cnn", "width=16")
    clf.add_argument(
        "--num-classes",
        type=int,
        default=10,
        help="classes when the dataset does not name them (default: 10)",
    )
    clf.add_argument(
        "--noise-sigma",
        type=float,
        default=0.0,
        help="std of Gaussian noise added to training images in [0, 1] pixel "
        "space; 0 is standard training (default: 0)",
    )
    clf.add_argument("--flip", action="store_true", help="random horizontal flips")
    clf.add_argument(
        "--eval-sigma",
        type=float,
        default=0.25,
        help="noise level of the per-epoch accuracy-under-noise (default: 0.25)",
    )
    _add_data_options(clf)
    _add_optim_options(clf, epochs=10, lr=1e-3)
    clf.set_defaults(handler=_cmd_train_classifier)


def _add_train_denoiser_command(commands: argparse._SubParsersAction) -> None:
    den = commands.add_parser(
        "train-denoiser",
        help="train a Gaussian denoiser (MSE, STAB, CLF, STAB+MSE, CLF+MSE)",
        description="Train a denoiser for noise level --sigma. MSE needs no classifier. STAB "
        "makes classifiers give D(x + noise) their own label on x; CLF the true label. For "
        "full access pass the target as --surrogates; for query access pass surrogate "
        "classifiers only, so the target is never used. The +mse objectives fine-tune the "
        "MSE denoiser given by --pretrained. Writes OUT/denoiser.safetensors; rerunning "
        "resumes. Launch with `torchrun --nproc_per_node N` for DDP.",
    )
    _add_model_options(den, list_denoisers(), None, "depth=7")
    den.add_argument("--objective", choices=OBJECTIVES, default="mse", help="(default: mse)")
    den.add_argument(
        "--sigma",
        type=float,
        required=True,
        help="noise level in [0, 1] pixel space, the one you will certify with",
    )
    den.add_argument(
        "--surrogates",
        default=None,
        metavar="A,B,...",
        help="comma-separated classifier checkpoints that guide STAB/CLF",
    )
    den.add_argument(
        "--guidance",
        choices=GUIDANCE_MODES,
        default="round-robin",
        help="several surrogates: one per batch in turn, or the mean loss (default: round-robin)",
    )
    den.add_argument(
        "--pretrained",
        default=None,
        help="denoiser checkpoint to start from (required for stab+mse, clf+mse)",
    )
    den.add_argument(
        "--eval-classifiers",
        default=None,
        metavar="A,B,...",
        help="classifier checkpoints only evaluated (accuracy under noise after "
        "the denoiser), never trained through",
    )
    _add_data_options(den)
    _add_optim_options(den, epochs=20, lr=1e-3)
    den.set_defaults(handler=_cmd_train_denoiser)
