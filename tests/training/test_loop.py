"""The training loop: exact resume, the learning-rate schedule, the log, and DDP with gloo."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from smoothapi import InvalidInputError
from smoothapi.training.loop import TrainConfig, fit, lr_at, plateaus, stopped_early


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 1, 3, padding=1),
    )


def _data(digit_images) -> TensorDataset:
    images = digit_images[:200]
    return TensorDataset(images, torch.zeros(len(images), dtype=torch.long))


def _denoise_loss(net, x, _labels, generator, _step):
    noise = torch.randn(x.shape, generator=generator)
    return torch.nn.functional.mse_loss(net(x + 0.25 * noise), x)


CONFIG = dict(
    batch_size=32,
    optimizer="adam-then-sgd",
    lr=1e-2,
    adam_epochs=2,
    sgd_lr=1e-2,
    lr_step=1,
    lr_gamma=0.5,
    progress=False,
)


def test_resuming_gives_the_same_weights_as_an_uninterrupted_run(digit_images, tmp_path):
    whole = _model()
    history = fit(
        whole,
        _data(digit_images),
        _denoise_loss,
        TrainConfig(epochs=4, **CONFIG),
        tmp_path / "whole",
    )
    resumed = _model()
    fit(
        resumed,
        _data(digit_images),
        _denoise_loss,
        TrainConfig(epochs=1, **CONFIG),
        tmp_path / "parts",
    )
    fit(
        resumed,
        _data(digit_images),
        _denoise_loss,
        TrainConfig(epochs=3, **CONFIG),
        tmp_path / "parts",
    )
    again = _model()  # a fresh process would start from a fresh model: the state wins
    resumed_history = fit(
        again,
        _data(digit_images),
        _denoise_loss,
        TrainConfig(epochs=4, **CONFIG),
        tmp_path / "parts",
    )
    for key, value in whole.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert [r["train_loss"] for r in resumed_history] == [r["train_loss"] for r in history]
    assert [r["optimizer"] for r in history] == ["adam", "adam", "sgd", "sgd"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    log = [json.loads(line) for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]


def test_resume_with_other_settings_is_refused(digit_images, tmp_path):
    fit(_model(), _data(digit_images), _denoise_loss, TrainConfig(epochs=1, **CONFIG), tmp_path)
    changed = {**CONFIG, "lr": 0.5}
    with pytest.raises(InvalidInputError, match="lr"):
        fit(
            _model(), _data(digit_images), _denoise_loss, TrainConfig(epochs=2, **changed), tmp_path
        )


def test_learning_rate_schedules():
    adam_then_sgd = TrainConfig(
        optimizer="adam-then-sgd", lr=1e-3, adam_epochs=50, sgd_lr=1e-2, lr_step=100, lr_gamma=0.1
    )
    assert lr_at(adam_then_sgd, 49) == ("adam", 1e-3)
    assert lr_at(adam_then_sgd, 50) == ("sgd", 1e-2)
    assert lr_at(adam_then_sgd, 150) == ("sgd", pytest.approx(1e-3))
    assert lr_at(TrainConfig(optimizer="sgd", lr=0.1, lr_step=30), 65) == (
        "sgd",
        pytest.approx(1e-3),
    )
    assert lr_at(TrainConfig(lr=3e-4), 1000) == ("adam", 3e-4)
    with pytest.raises(InvalidInputError, match="optimizer"):
        TrainConfig(optimizer="lion")


PLATEAU = dict(batch_size=64, lr=1e-2, lr_gamma=0.5, plateau_metric="score",
               plateau_patience=2, plateau_drops=1, progress=False)  # fmt: skip


def test_plateau_schedule_halves_the_rate_at_each_stall_and_stops_after_the_last():
    config = TrainConfig(**PLATEAU)
    scores = [1, 2, 2, 1.5, 3, 2, 2, 2]  # stalls after the 4th and the 7th record
    history = [{"score": v} for v in scores]
    assert [plateaus(config, history[:n]) for n in range(9)] == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert [lr_at(config, e, history)[1] for e in (3, 4, 6, 7)] == [1e-2, 5e-3, 5e-3, 2.5e-3]
    assert not stopped_early(config, history[:6]) and stopped_early(config, history[:7])
    assert lr_at(TrainConfig(lr=1e-2), 7, history) == ("adam", 1e-2)  # no metric: no drops


def _scripted(scores: list[float], start: int = 0):
    """An evaluation that reports ``scores`` one per epoch, from epoch ``start``."""
    epochs = iter(scores[start:])
    return lambda _model: {"score": next(epochs)}


def test_fit_halves_on_plateaus_stops_early_and_resumes_to_the_same_end(digit_images, tmp_path):
    scores = [1.0, 2.0, 2.0, 1.0, 3.0, 3.0, 2.0, 9.0, 9.0]
    whole = fit(_model(), _data(digit_images), _denoise_loss, TrainConfig(epochs=9, **PLATEAU),
                tmp_path / "whole", evaluate=_scripted(scores))  # fmt: skip
    assert [r["lr"] for r in whole] == [1e-2, 1e-2, 1e-2, 1e-2, 5e-3, 5e-3, 5e-3]
    assert len(whole) == 7  # the second stall (epochs 6-7) ends it before epoch 8
    fit(_model(), _data(digit_images), _denoise_loss, TrainConfig(epochs=5, **PLATEAU),
        tmp_path / "parts", evaluate=_scripted(scores))  # fmt: skip
    resumed = fit(_model(), _data(digit_images), _denoise_loss, TrainConfig(epochs=9, **PLATEAU),
                  tmp_path / "parts", evaluate=_scripted(scores, start=5))  # fmt: skip
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]


def test_a_changed_schedule_resumes_only_if_finished_epochs_keep_their_rates(
    digit_images, tmp_path
):
    step = {**CONFIG, "optimizer": "adam", "lr_step": 3}
    fit(_model(), _data(digit_images), _denoise_loss, TrainConfig(epochs=2, **step), tmp_path)
    later_decay = {**step, "lr_step": 2}  # epochs 1-2 at 1e-2 either way
    history = fit(_model(), _data(digit_images), _denoise_loss,
                  TrainConfig(epochs=3, **later_decay), tmp_path)  # fmt: skip
    assert [r["lr"] for r in history] == [1e-2, 1e-2, 5e-3]
    earlier_decay = {**step, "lr_step": 1}  # epoch 2 would have run at 5e-3
    with pytest.raises(InvalidInputError, match="epoch 2"):
        fit(_model(), _data(digit_images), _denoise_loss, TrainConfig(epochs=4, **earlier_decay),
            tmp_path)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp_ends_with_the_same_weights_on_both_ranks(tmp_path):
    worker = Path(__file__).with_name("_ddp_worker.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(worker),
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    torch.manual_seed(0)
    initial = torch.nn.Conv2d(1, 4, 3, padding=1).weight
    assert not torch.allclose(rank0["0.weight"], initial)  # it trained
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # only rank 0 writes the log
