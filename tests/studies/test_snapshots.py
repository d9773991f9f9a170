"""Journal snapshots carry an unfinished certification to another machine and resume it."""

from __future__ import annotations

import pytest
import torch

from smoothapi import SmoothedClassifier
from smoothapi.journal import Journal
from smoothapi.studies.snapshots import restore, snapshot_journals

from ..adapters.fake import Crash, CrashingAdapter

IMAGE = torch.full((1, 12, 12), 0.7)


def _certify(adapter, journal):
    smoothed = SmoothedClassifier(adapter, 0.3, batch_size=16, device="cpu", seed=3,
                                  journal=journal)  # fmt: skip
    return smoothed.certify(IMAGE, n0=16, n=80, alpha=0.01)


def test_a_snapshot_taken_while_the_writer_holds_the_journal_resumes_elsewhere(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    journal = here / "journals" / "none@0.25.sqlite"
    crashed = CrashingAdapter(budget=3)  # a few requests answered, then a crash
    with pytest.raises(Crash):
        _certify(crashed, journal)
    held = Journal(journal)  # a writer still has it open, in WAL mode
    [packed] = snapshot_journals(here)
    held.close()
    assert packed == here / "snapshots" / "none@0.25.sqlite.gz"
    # Another machine: only the committed snapshot travels.
    (there / "snapshots").mkdir(parents=True)
    (there / "snapshots" / packed.name).write_bytes(packed.read_bytes())
    moved = there / "journals" / "none@0.25.sqlite"
    assert restore(moved) and moved.exists()
    assert not restore(moved)  # never over a journal that exists
    resumed = CrashingAdapter()
    assert _certify(resumed, moved) == _certify(CrashingAdapter(), None)
    paid = sum(map(len, crashed.requests))
    assert 0 < paid < 96 and sum(map(len, resumed.requests)) == 96 - paid  # none twice


def test_finished_stages_lose_their_snapshots_and_get_none(tmp_path):
    for stem in ("none@0.25", "mse@0.25"):
        _certify(CrashingAdapter(), tmp_path / "journals" / f"{stem}.sqlite")
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "mse@0.25.sqlite.gz").write_bytes(b"old")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "mse@0.25.tsv").write_text("idx\tlabel\n")  # finished
    (tmp_path / "logs" / "none@0.25.part").write_text("idx\tlabel\n")  # still running
    written = snapshot_journals(tmp_path)
    assert [p.name for p in written] == ["none@0.25.sqlite.gz"]
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["none@0.25.sqlite.gz"]
    assert not restore(tmp_path / "journals" / "mse@0.25.sqlite")  # nothing to restore


def test_the_snapshot_command_skips_certifications_whose_log_is_written(tmp_path, capsys):
    from smoothapi.cli import main

    for stem in ("none@0.25", "mse@0.25"):
        _certify(CrashingAdapter(), tmp_path / "journals" / f"{stem}.sqlite")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "mse@0.25.tsv").write_text("idx\tlabel\n")
    assert main(["experiment", "natural-photos", "--out", str(tmp_path), "--snapshot"]) == 0
    assert "none@0.25.sqlite.gz" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["none@0.25.sqlite.gz"]
