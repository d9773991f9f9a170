"""One training loop for denoisers and classifiers.

:func:`fit` reads top to bottom: set up (DDP when launched by ``torchrun``), resume,
then per epoch set the learning rate, run the batches, evaluate, log, checkpoint.

* **Exact resume.** Data order comes from ``DistributedSampler(seed, epoch)`` and the
  noise of each step from a generator seeded by ``(seed, epoch, step, rank)``; the
  learning rate is a pure function of the epoch and the finished epochs' records
  (:func:`lr_at`). With model and
  optimizer state saved after every epoch, an interrupted run resumed from
  ``out_dir`` ends with the same weights as an uninterrupted one.
* **No pickle.** Training state is a safetensors file (model and optimizer tensors)
  whose JSON metadata holds the epoch, the optimizer's scalars and the log.
* **Scale.** ``torchrun --nproc_per_node N`` (or several nodes) gives data-parallel
  training with DDP (NCCL on GPUs, gloo on CPUs); on CUDA, bfloat16 autocast (float16
  with a gradient scaler where bf16 is missing) and channels_last memory format; on a
  CPU, bfloat16 autocast when ``cpu_bfloat16`` is set and the CPU has bfloat16 instructions
  (:func:`smoothapi._precision.bfloat16_is_fast`; float32 elsewhere, where bfloat16 is
  emulated and a step ran 10x slower).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .._precision import bfloat16_is_fast
from ..errors import InvalidInputError

__all__ = [
    "OPTIMIZERS",
    "TrainConfig",
    "fit",
    "lr_at",
    "plateaus",
    "stopped_early",
    "training_device",
]

OPTIMIZERS = ("adam", "sgd", "adam-then-sgd")

#: (model, images, labels, noise generator, global step) -> scalar loss
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator, int], torch.Tensor]

STATE_FILE = "state.safetensors"
LOG_FILE = "log.jsonl"
_META_KEY = "smoothapi-training"
# Settings that change the result: a resumed run must use the same ones. The schedule's
# settings may change if they give the finished epochs the rates they had (_check_schedule).
_MUST_MATCH = (
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "adam_epochs",
    "sgd_lr",
    "seed",
)


@dataclass
class TrainConfig:
    """Optimisation settings (appendix A.1 of the paper for the denoisers).

    ``optimizer`` is ``"adam"``, ``"sgd"`` or ``"adam-then-sgd"`` (Adam at ``lr`` for
    ``adam_epochs`` epochs, then SGD from ``sgd_lr``). The rate drops by ``lr_gamma``
    every ``lr_step`` epochs (of the SGD phase for adam-then-sgd); ``lr_step = 0``
    keeps it constant.

    With ``plateau_metric`` (a key of the evaluation's record, higher is better) the
    rate also drops by ``lr_gamma`` whenever that figure has not beaten its best for
    ``plateau_patience`` epochs since the last drop, and training stops at the plateau
    after ``plateau_drops`` drops (reduce-on-plateau with early stopping, decided from the
    logged records only, so a resumed run still ends where an uninterrupted one does).
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 0
    lr_gamma: float = 0.1
    adam_epochs: int = 50
    sgd_lr: float = 1e-4
    plateau_metric: str | None = None
    plateau_patience: int = 2
    plateau_drops: int = 3
    seed: int = 0
    device: str | None = None
    amp: bool = True
    cpu_bfloat16: bool = False  # bfloat16 autocast on a CPU too, if it has bfloat16 instructions
    channels_last: bool = True
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInputError(
                f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}"
            )
        for name in ("epochs", "batch_size", "plateau_patience"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive")


def plateaus(config: TrainConfig, history: list[dict]) -> int:
    """How many times ``config.plateau_metric`` stalled in ``history`` (0 without one).

    A stall is ``plateau_patience`` records in a row, counted from the best so far or
    the last stall, none of which beats the best.
    """
    if config.plateau_metric is None:
        return 0
    best, waited, stalls = -math.inf, 0, 0
    for record in history:
        value = record.get(config.plateau_metric, -math.inf)
        if value > best:
            best, waited = value, 0
            continue
        waited += 1
        if waited >= config.plateau_patience:
            stalls, waited = stalls + 1, 0
    return stalls


def lr_at(config: TrainConfig, epoch: int, history: list[dict] | None = None) -> tuple[str, float]:
    """The optimizer kind and learning rate of ``epoch`` (0-based).

    ``history`` holds the records of the epochs before it (needed with a
    ``plateau_metric`` only).
    """
    drops = plateaus(config, (history or [])[:epoch])
    if config.optimizer == "adam-then-sgd" and epoch < config.adam_epochs:
        return "adam", config.lr * config.lr_gamma**drops
    if config.optimizer == "adam-then-sgd":
        kind, base, since = "sgd", config.sgd_lr, epoch - config.adam_epochs
    else:
        kind, base, since = config.optimizer, config.lr, epoch
    steps = since // config.lr_step if config.lr_step else 0
    return kind, base * config.lr_gamma ** (steps + drops)


def stopped_early(config: TrainConfig, history: list[dict]) -> bool:
    """Whether the metric stalled once more after ``plateau_drops`` drops of the rate."""
    return config.plateau_metric is not None and plateaus(config, history) > config.plateau_drops


def _new_optimizer(kind: str, params, config: TrainConfig) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.sgd_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _step_seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


# --- distributed set-up ---------------------------------------------------------------


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world


def training_device(config: TrainConfig) -> torch.device:
    """``config.device``, else this process's GPU (``LOCAL_RANK`` under torchrun), else the CPU."""
    if config.device:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# --- training state without pickle ---------------------------------------------------


def _save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    kind: str,
    epoch: int,
    history: list[dict],
    config: TrainConfig,
) -> None:
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
    }
    opt = optimizer.state_dict()
    scalars = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{index}.{key}"] = value
    meta = {
        "epoch": epoch,
        "optimizer": kind,
        "param_groups": opt["param_groups"],
        "scalars": scalars,
        "history": history,
        "config": asdict(config),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    os.replace(tmp, path)  # atomic: a crash leaves the previous epoch's state


def _load_state(path: Path, model: nn.Module, config: TrainConfig) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[_META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    saved = meta["config"]
    changed = [k for k in _MUST_MATCH if saved.get(k) != getattr(config, k)]
    if changed:
        raise InvalidInputError(
            f"{path} was written with other settings ({', '.join(changed)}); "
            "resume with the same settings or use a new output folder"
        )
    _check_schedule(path, meta["history"], config)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for group in meta["param_groups"]:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    meta["optimizer_state"] = {"state": state, "param_groups": meta["param_groups"]}
    return meta


def _check_schedule(path: Path, history: list[dict], config: TrainConfig) -> None:
    """A changed schedule resumes only if it gives every finished epoch the rate it had."""
    for index, record in enumerate(history):
        kind, lr = lr_at(config, index, history)
        if kind != record.get("optimizer", kind) or not math.isclose(lr, record["lr"]):
            raise InvalidInputError(
                f"{path} was trained at another learning rate in epoch {index + 1} "
                f"({record['lr']:g}, this schedule gives {lr:g}); resume with the same "
                "schedule or use a new output folder"
            )


def _write_log(path: Path, history: list[dict]) -> None:
    """Rewrite the JSONL log from the saved history, so it never holds an unsaved epoch."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in history), encoding="utf-8")
    os.replace(tmp, path)


# --- the loop --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Precision:
    """How steps run on this machine: device, memory format, mixed precision."""

    device: torch.device
    memory_format: torch.memory_format
    amp_dtype: torch.dtype
    use_amp: bool

    @classmethod
    def of(cls, config: TrainConfig) -> _Precision:
        device = training_device(config)
        cuda = device.type == "cuda"
        fmt = torch.channels_last if cuda and config.channels_last else torch.preserve_format
        if not cuda:  # bfloat16 only on a CPU that computes it natively: 10x slower elsewhere
            fast = config.amp and config.cpu_bfloat16 and bfloat16_is_fast(device)
            return cls(device, fmt, torch.bfloat16, fast)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, fmt, dtype, config.amp)


def fit(
    model: nn.Module,
    train_set: Dataset,
    loss_fn: LossFn,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    on_epoch_end: Callable[[nn.Module, int, dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` on ``train_set`` (items ``(image, label)``) to ``config.epochs`` epochs.

    Resumes from ``out_dir/state.safetensors`` when it exists. After every epoch rank 0
    runs ``evaluate(model)``, appends the epoch's record (epoch, lr, train_loss,
    seconds, and the evaluation) to ``out_dir/log.jsonl``, calls
    ``on_epoch_end(model, epoch, record)`` (to write the user-facing checkpoint) and
    saves the training state. Returns the records of all epochs, resumed ones included.
    """
    rank, world = _distributed()
    precision = _Precision.of(config)
    device, cuda = precision.device, precision.device.type == "cuda"
    model.to(device)
    model.to(memory_format=precision.memory_format)
    fp16 = precision.use_amp and precision.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE

    start_epoch, history, optimizer, kind = _resume(state_path, model, config)
    trained = model
    if world > 1:
        trained = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    sampler, loader = _loader(train_set, config, rank, world, cuda)
    for epoch in range(start_epoch, config.epochs):
        if _agreed(stopped_early(config, history), world):
            break
        optimizer, kind, lr = _epoch_optimizer(epoch, optimizer, kind, model, config, history)
        sampler.set_epoch(epoch)
        model.train()
        started = time.perf_counter()
        epoch_run = (trained, loader, loss_fn, optimizer, scaler, precision)
        loss_sum = _train_epoch(*epoch_run, config, epoch, rank)
        if world > 1:
            dist.all_reduce(loss_sum)
        if rank == 0:
            loss, seconds = (loss_sum[0] / loss_sum[1]).item(), time.perf_counter() - started
            record = {"epoch": epoch + 1, "optimizer": kind, "lr": lr, "train_loss": loss,
                      "seconds": round(seconds, 3)}  # fmt: skip
            history.append(_evaluated(model, record, evaluate))
            if on_epoch_end is not None:
                on_epoch_end(model, epoch + 1, record)
            _save_state(state_path, model, optimizer, kind, epoch + 1, history, config)
            _write_log(out_dir / LOG_FILE, history)
        if world > 1:
            dist.barrier()
    model.eval()
    return history


def _loader(
    train_set: Dataset, config: TrainConfig, rank: int, world: int, cuda: bool
) -> tuple[DistributedSampler[int], DataLoader]:
    """This rank's sampler (its share of the data, reshuffled per epoch) and loader."""
    sampler: DistributedSampler[int] = DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed
    )
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                        num_workers=config.num_workers, pin_memory=cuda)  # fmt: skip
    return sampler, loader


def _epoch_optimizer(
    epoch: int,
    optimizer: torch.optim.Optimizer | None,
    kind: str | None,
    model: nn.Module,
    config: TrainConfig,
    history: list[dict],
) -> tuple[torch.optim.Optimizer, str, float]:
    """The optimizer for ``epoch`` (a new one when the schedule switches kind), at its lr."""
    epoch_kind, lr = lr_at(config, epoch, history)
    if config.plateau_metric is not None and dist.is_initialized():
        lr = _from_rank0(lr)  # only rank 0 evaluates and keeps the records
    if optimizer is None or epoch_kind != kind:
        optimizer, kind = _new_optimizer(epoch_kind, model.parameters(), config), epoch_kind
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer, epoch_kind, lr


def _from_rank0(value: float) -> float:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")  # fmt: skip
    box = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(box, src=0)
    return float(box.item())


def _agreed(stop: bool, world: int) -> bool:
    """Rank 0's decision (the only rank with the evaluated records) on every rank."""
    return bool(_from_rank0(float(stop))) if world > 1 else stop


def _evaluated(
    model: nn.Module, record: dict, evaluate: Callable[[nn.Module], dict[str, float]] | None
) -> dict:
    """``record`` with the evaluation of ``model`` (in eval mode, without gradients) added."""
    if evaluate is not None:
        model.eval()
        with torch.no_grad():
            record.update(evaluate(model))
    return record


def _resume(
    state_path: Path, model: nn.Module, config: TrainConfig
) -> tuple[int, list[dict], torch.optim.Optimizer | None, str | None]:
    """Where training stands: (epochs done, their records, optimizer, its kind)."""
    if not state_path.exists():
        return 0, [], None, None
    meta = _load_state(state_path, model, config)
    optimizer = _new_optimizer(meta["optimizer"], model.parameters(), config)
    optimizer.load_state_dict(meta["optimizer_state"])
    return meta["epoch"], meta["history"], optimizer, meta["optimizer"]


def _train_epoch(
    trained: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: _Precision,
    config: TrainConfig,
    epoch: int,
    rank: int,
) -> torch.Tensor:
    """One pass over ``loader``; returns ``[sum of loss x batch size, images]`` on the device."""
    device = precision.device
    loss_sum = torch.zeros(2, device=device)
    batches = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        leave=False,
        disable=not (config.progress and rank == 0),
    )
    for step, (images, labels) in enumerate(batches):
        images = images.to(device, non_blocking=True).contiguous(
            memory_format=precision.memory_format
        )
        labels = labels.to(device, non_blocking=True)
        generator = torch.Generator(device).manual_seed(_step_seed(config.seed, epoch, step, rank))
        with torch.autocast(device.type, dtype=precision.amp_dtype, enabled=precision.use_amp):
            loss = loss_fn(trained, images, labels, generator, epoch * len(loader) + step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += torch.stack(
            [loss.detach().float() * len(images), torch.tensor(float(len(images)), device=device)]
        )
        if step % 20 == 0:
            batches.set_postfix(loss=f"{loss.item():.4f}")
    return loss_sum
