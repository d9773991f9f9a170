"""`smoothapi train-classifier` and `smoothapi train-denoiser` on scikit-learn's digits."""

from __future__ import annotations

import json

import pytest

from smoothapi import LocalModelAdapter, load_denoiser
from smoothapi.cli import main

COMMON = ["--dataset", "digits", "--batch-size", "64", "--no-progress", "--eval-size", "100"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmd")
    assert (
        main(
            [
                "train-classifier",
                "--out",
                str(root / "clf"),
                "--arch",
                "small_cnn",
                "--arch-arg",
                "width=8",
                "--epochs",
                "2",
                "--lr",
                "3e-3",
                *COMMON,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train-denoiser",
                "--out",
                str(root / "mse"),
                "--sigma",
                "0.25",
                "--arch-arg",
                "depth=3",
                "--arch-arg",
                "width=8",
                "--epochs",
                "1",
                *COMMON,
            ]
        )
        == 0
    )
    return root


def test_train_classifier_writes_a_loadable_checkpoint_and_log(trained):
    adapter = LocalModelAdapter.from_checkpoint(trained / "clf" / "classifier.safetensors")
    assert adapter.class_names == [str(d) for d in range(10)]
    assert adapter.module.arch_config == {
        "arch": "small_cnn",
        "kwargs": {"in_channels": 1, "num_classes": 10, "width": 8},
    }
    log = [json.loads(line) for line in (trained / "clf" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and 0 <= log[-1]["accuracy_clean"] <= 1


def test_stab_mse_fine_tunes_the_pretrained_denoiser_through_surrogates(trained):
    out = trained / "stab"
    surrogate = trained / "clf" / "classifier.safetensors"
    assert (
        main(
            [
                "train-denoiser",
                "--out",
                str(out),
                "--sigma",
                "0.25",
                "--objective",
                "stab+mse",
                "--pretrained",
                str(trained / "mse" / "denoiser.safetensors"),
                "--surrogates",
                str(surrogate),
                "--epochs",
                "1",
                *COMMON,
            ]
        )
        == 0
    )
    meta = load_denoiser(out / "denoiser.safetensors").checkpoint_metadata
    assert meta["objective"] == "stab+mse" and meta["surrogates"] == ["classifier"]
    assert meta["kwargs"]["depth"] == 3 and meta["sigma"] == 0.25
    log = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert {"psnr_noisy", "psnr_denoised", "accuracy_classifier"} <= log.keys()


def test_fine_tuning_without_pretrained_is_refused(tmp_path, capsys):
    code = main(
        [
            "train-denoiser",
            "--out",
            str(tmp_path),
            "--sigma",
            "0.25",
            "--objective",
            "stab+mse",
            "--surrogates",
            "x.safetensors",
            *COMMON,
        ]
    )
    assert code == 2 and "--pretrained" in capsys.readouterr().err


def test_every_option_is_explained_in_help(capsys):
    for command in ("train-classifier", "train-denoiser"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        for option in ("--dataset", "--optimizer", "--lr-step", "--seed", "--out"):
            assert option in text
    assert "--surrogates" in text and "--guidance" in text and "round-robin" in text
