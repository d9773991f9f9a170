"""The study end to end at the tiny scale (digits), and its resumption."""

from __future__ import annotations

import json

from PIL import Image

from smoothapi.cli import main
from smoothapi.studies.study import METHODS


def test_tiny_study_writes_every_output_and_a_rerun_skips_finished_stages(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["experiment", "digits", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 50 and summary["images"] == 4
    assert set(summary["methods"]) == set(METHODS)
    for by_sigma in summary["methods"].values():
        cells = by_sigma["0.25"]["certified_accuracy"]
        assert list(cells) == ["0", "0.25", "0.5", "0.75", "1", "1.25", "1.5"]
        assert all(0 <= v <= 1 for v in cells.values())
        values = list(cells.values())
        assert values == sorted(values, reverse=True)  # certified accuracy falls with radius
    assert list(summary["gap_closed"]) == ["0.25"]
    for by_radius in summary["gap_closed"]["0.25"].values():
        assert list(by_radius) == ["0.25"]  # n = 50 certifies up to 0.34: no r = 0.5
        for gap in by_radius.values():  # None where white-box does not beat no denoiser
            assert gap["share"] is None or gap["ci95"][0] <= gap["share"] <= gap["ci95"][1]
    readme = (out / "README.md").read_text()
    assert "n = 50, 4 images" in readme and "| stab+mse-query |" in readme
    for png in ("curves_sigma0.25.png", "denoising_examples_sigma0.25.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG"
    checkpoint = out / "denoisers" / "mse@0.25" / "denoiser.safetensors"
    stamp = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["experiment", "digits", "--out", str(out)]) == 0
    assert "..." not in capsys.readouterr().out  # every stage was skipped
    assert checkpoint.stat().st_mtime_ns == stamp


def test_target_lines_say_met_missed_or_why_not():
    from types import SimpleNamespace

    from smoothapi.studies.study import Study, _target_lines

    study = SimpleNamespace(scale=SimpleNamespace(extras_sigma=0.25), targets=Study.targets,
                            targets_source="x")  # fmt: skip
    cell = {"ci95": [0.0, 1.0], "gap": 0.1}
    gaps = {"0.25": {"stab+mse-full": {"0.25": {**cell, "share": 0.95},
                                       "0.5": {**cell, "share": 0.85}},
                     "stab+mse-query": {"0.25": {**cell, "share": None}}}}  # fmt: skip
    title, _, full, query, _ = _target_lines(study, gaps)
    assert title.startswith("Targets at sigma 0.25, share of the gap closed at r = 0.25 and 0.5")
    assert full == "- stab+mse-full >= 90%: r=0.25: 95%, met, r=0.5: 85%, missed"
    assert query == ("- stab+mse-query >= 75%: r=0.25: cannot be told (the white box certifies "
                     "no more than no denoiser), r=0.5: not certified yet")


def test_gap_lines_say_why_a_share_is_missing():
    from smoothapi.studies.study import _gap_lines

    gaps = {"0.25": {"mse": {"0.25": {"share": 0.5, "ci95": [0.25, 0.75], "gap": 0.048},
                             "0.5": {"share": None, "ci95": [None, None], "gap": -0.008}}}}
    [title, _, line, _] = _gap_lines(gaps)
    assert title == ("Share of the white-box minus no-denoiser gap closed at sigma 0.25 (the "
                     "gap: +4.8 points at r=0.25, -0.8 points at r=0.5):")
    assert "r=0.25: 50% (95% CI 25% to 75%)" in line
    assert "r=0.5: none (the white box certifies no more than no denoiser)" in line
