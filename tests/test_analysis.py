"""Certification-log analysis on small synthetic logs with hand-computed answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from smoothapi.analysis import (
    CertificationLog,
    accuracy_gain,
    average_certified_radius,
    best_sigma_table,
    certified_accuracy,
    common_images,
    format_table,
    gap_closed,
    plot_curves,
    read_log,
)
from smoothapi.cli import main
from smoothapi.errors import InvalidInputError

# Cohen et al.'s format: 5 images; abstain is predict -1, correct 0.
COHEN = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t3\t3\t0.6\t1\t0:00:01.0
1\t8\t8\t0.2\t1\t0:00:01.0
2\t8\t1\t0.9\t0\t0:00:01.0
3\t0\t-1\t0.0\t0\t0:00:01.0
4\t6\t6\t0.3\t1\t0:00:01.0
"""


@pytest.fixture
def cohen_log(tmp_path):
    path = tmp_path / "noise_0.25.tsv"
    path.write_text(COHEN)
    return path


def test_certified_accuracy_and_acr_by_hand(cohen_log):
    log = read_log(cohen_log)
    assert log.name == "noise_0.25" and len(log) == 5
    # correct radii: 0.6, 0.2, 0.3 -> at r=0: 3/5; 0.25: 2/5; 0.5: 1/5; 0.75: 0.
    assert certified_accuracy(log, [0, 0.25, 0.5, 0.75]).tolist() == [0.6, 0.4, 0.2, 0.0]
    assert average_certified_radius(log) == pytest.approx((0.6 + 0.2 + 0.3) / 5)


def test_json_lines_from_our_cli(tmp_path):
    path = tmp_path / "ours.jsonl"
    rows = [{"idx": 0, "radius": 0.5, "correct": 1}, {"idx": 1, "radius": 0.0, "correct": None},
            {"idx": 2, "radius": 0.1, "correct": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert certified_accuracy(read_log(path), [0, 0.5, 0.6]).tolist() == pytest.approx(
        [1 / 3, 1 / 3, 0])


def _log(name, correct, radius, index=None):
    return CertificationLog(name, np.array(correct, dtype=bool), np.array(radius, dtype=float),
                            None if index is None else np.array(index))


def test_best_sigma_envelope_and_paper_format():
    small = _log("a", [1, 1, 1, 0], [0.1, 0.2, 0.3, 0])  # sigma 0.12: std 75%
    large = _log("b", [1, 1, 0, 0], [0.6, 0.8, 0, 0])  # sigma 0.5: std 50%
    table = best_sigma_table({"MSE": {0.12: small, 0.5: large}}, radii=[0.0, 0.25, 0.5])
    assert table["MSE"] == [(0.75, 0.75, 0.12), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)]
    markdown = format_table(table, [0.0, 0.25, 0.5])
    assert "| MSE | (75)75 | (50)50 | (50)50 |" in markdown
    latex = format_table(table, [0.0, 0.25, 0.5], style="latex", caption="x")
    assert r"\begin{tabular}{lccc}" in latex and r"MSE & (75)75 & (50)50 & (50)50 \\" in latex


def test_curves_are_written_as_png(tmp_path):
    path = plot_curves([_log("a", [1, 1, 0], [0.2, 0.5, 0])], tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_cli_analyze(cohen_log, tmp_path, capsys):
    other = tmp_path / "other.tsv"
    other.write_text(COHEN.replace("\t0.6\t1", "\t1.2\t1"))
    code = main(["analyze", f"cohen@0.25={cohen_log}", f"cohen@0.5={other}", "--radii", "0",
                 "0.5", "1.0", "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert code == 0
    assert "| cohen@0.25 | 5 | 0.220 | 0.600 | 0.200 | 0.000 |" in out
    assert "| cohen | (60)60 | (60)20 | (60)20 |" in out
    assert (tmp_path / "c.png").exists()


def test_cli_analyze_says_when_the_best_sigma_table_uses_shared_images(cohen_log, tmp_path,
                                                                         capsys):
    subset = tmp_path / "subset.tsv"  # images 0 (certified at 1.2) and 1 (wrong) only
    subset.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                      "0\t3\t3\t1.2\t1\t0:00:01.0\n1\t8\t2\t0.5\t0\t0:00:01.0\n")
    assert main(["analyze", f"m@0.25={cohen_log}", f"m@0.5={subset}", "--radii", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "best sigma per radius, on the 2 images (idx) in every log" in out
    # r = 0: sigma 0.25 certifies both of images {0, 1} (3 of all 5 would give 60); r = 1:
    # only sigma 0.5 certifies image 0.
    assert "| m | (100)100 | (50)50 |" in out


def test_bad_logs(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(InvalidInputError, match="correct"):
        read_log(bad)
    with pytest.raises(InvalidInputError, match="not found"):
        read_log(tmp_path / "none.tsv")


def test_gap_closed_by_hand_with_a_paired_bootstrap_interval():
    # 8 images; at r = 0.25: baseline certifies 1, reference 5, the denoiser 4 -> 3/4.
    baseline = _log("none", [1, 1, 0, 0, 0, 0, 0, 0], [0.3, 0.1, 0, 0, 0, 0, 0, 0])
    reference = _log("white", [1, 1, 1, 1, 1, 0, 0, 0], [0.3, 0.4, 0.5, 0.6, 0.7, 0, 0, 0])
    denoised = _log("mse", [1, 1, 1, 1, 0, 0, 0, 0], [0.3, 0.4, 0.5, 0.6, 0, 0, 0, 0])
    at_25, at_5 = gap_closed(denoised, baseline, reference, (0.25, 0.5), resamples=2_000)
    assert at_25.radius == 0.25 and at_25.share == pytest.approx(3 / 4)
    assert at_5.share == pytest.approx(2 / 3)  # baseline 0, reference 3, denoiser 2
    assert (at_25.gap, at_5.gap) == (pytest.approx(4 / 8), pytest.approx(3 / 8))
    assert 0 <= at_25.low <= at_25.share <= at_25.high <= 1
    assert at_25.high - at_25.low > 0.1  # 8 images leave a wide interval
    (same,) = gap_closed(reference, baseline, reference, (0.25,), resamples=500)
    assert (same.share, same.low, same.high) == (1.0, 1.0, 1.0)  # every resample closes it all


def test_gap_closed_without_a_gap_or_with_different_images():
    log = _log("a", [1, 0], [0.3, 0])
    (none,) = gap_closed(log, log, log, (0.25,))
    assert none.share is None and none.low is None and none.gap == 0
    with pytest.raises(InvalidInputError, match="same images"):
        gap_closed(log, log, _log("b", [1], [0.3]))


def test_analyze_accounts_for_repeated_tries_from_the_journal(tmp_path, capsys):
    """Issue 15: the journal records every attempt, and analyze shows the repeated ones."""
    import warnings

    import torch

    from smoothapi import SmoothedClassifier
    from smoothapi.cli import main
    from smoothapi.journal import RepeatedAttemptWarning

    from .conftest import linear_adapter

    journal = tmp_path / "j.sqlite"
    image, other = torch.full((1, 12, 12), 0.7), torch.full((1, 12, 12), 0.2)
    adapter = linear_adapter(image, 0.5)
    with SmoothedClassifier(adapter, 0.25, seed=0, device="cpu", journal=journal) as smoothed:
        smoothed.certify(image, n0=8, n=32, alpha=0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RepeatedAttemptWarning)
            smoothed.certify(image, n0=8, n=64, alpha=0.01)  # a second try, more samples
        smoothed.certify(other, n0=8, n=32, alpha=0.01)
    assert main(["analyze", "--journal", str(journal)]) == 0
    out = capsys.readouterr().out
    assert "certify: 2 image(s), 3 attempt(s), 1 image(s) tried more than once" in out
    assert "best of 2 tries holds at 2 x 0.01" in out


def test_accuracy_gain_by_hand_with_a_paired_bootstrap_interval():
    # 8 images; at r = 0.25 the baseline certifies 1 (image 0), the denoiser 4 (0-3): +3/8.
    baseline = _log("none", [1, 1, 0, 0, 0, 0, 0, 0], [0.3, 0.1, 0, 0, 0, 0, 0, 0])
    denoised = _log("mse", [1, 1, 1, 1, 0, 0, 0, 0], [0.3, 0.4, 0.5, 0.6, 0, 0, 0, 0])
    at_25, at_5 = accuracy_gain(denoised, baseline, (0.25, 0.5), resamples=2_000)
    assert at_25.radius == 0.25 and at_25.gain == pytest.approx(3 / 8)
    assert at_5.gain == pytest.approx(2 / 8)  # images 2 and 3 against none
    assert 0 <= at_25.low <= at_25.gain <= at_25.high <= 1
    assert at_25.high - at_25.low > 0.1  # 8 images leave a wide interval
    (worse,) = accuracy_gain(baseline, denoised, (0.25,), resamples=500)
    assert worse.gain == pytest.approx(-3 / 8) and worse.high <= 0  # never gains anywhere
    (same,) = accuracy_gain(denoised, denoised, (0.25,), resamples=500)
    assert (same.gain, same.low, same.high) == (0.0, 0.0, 0.0)  # paired: no spread
    with pytest.raises(InvalidInputError, match="same images"):
        accuracy_gain(denoised, _log("b", [1], [0.3]))


def test_best_sigma_compares_sigmas_on_the_images_certified_at_every_sigma():
    """A sigma certified on a subset (the photo study: 42 of 126 crops) is never compared
    with another sigma's full set: the table keeps the images every log has."""
    full = _log("a", [1, 0, 1, 0, 0, 0], [0.3, 0, 0.3, 0, 0, 0])  # idx 0..5: 2 of 6
    subset = _log("b", [1, 0, 0], [0.3, 0, 0], index=[0, 2, 4])  # 1/3 of {0, 2, 4}
    assert common_images([full, subset]).tolist() == [0, 2, 4]
    (cells,) = best_sigma_table({"m": {0.25: full, 0.5: subset}}, radii=[0.25]).values()
    # On {0, 2, 4}: sigma 0.25 certifies 2 of 3, sigma 0.5 1 of 3 (2 of all 6 is not used).
    assert cells == [(pytest.approx(2 / 3), pytest.approx(2 / 3), 0.25)]
    with pytest.raises(InvalidInputError, match="no test image"):
        best_sigma_table({"m": {0.25: _log("c", [1], [0.3], [7]), 0.5: subset}}, radii=[0.25])


def test_logs_keep_their_image_index_and_paired_statistics_check_it(cohen_log, tmp_path):
    log = read_log(cohen_log)
    assert log.images().tolist() == [0, 1, 2, 3, 4]
    shuffled = tmp_path / "shuffled.tsv"  # same length, other images: not paired
    shuffled.write_text(COHEN.replace("\n4\t", "\n9\t"))
    other = read_log(shuffled)
    assert other.images().tolist() == [0, 1, 2, 3, 9]
    with pytest.raises(InvalidInputError, match="same images in the same order"):
        accuracy_gain(log, other)
    (gain,) = accuracy_gain(log.only([0, 1, 2, 3]), other.only([0, 1, 2, 3]), (0.25,),
                            resamples=100)
    assert gain.gain == 0.0
