"""Stages that resume: markers, the clock across kills, what a stage's marker keeps."""

from __future__ import annotations

import json

from smoothapi.studies.stages import StageClock, Stages


def test_a_killed_stage_counts_the_time_of_every_run(tmp_path):
    """A stage interrupted (Ctrl-C here) and resumed records both runs' seconds."""
    import time

    import pytest

    study = Stages(tmp_path)
    running = tmp_path / "stages" / "certify:x_at_0.25.running"

    def killed():
        time.sleep(0.3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study.stage("certify:x@0.25", killed)
    first = json.loads(running.read_text())
    assert first["runs"] == 1 and 0.3 <= first["seconds"] < 5
    study.stage("certify:x@0.25", lambda: time.sleep(0.2))
    marker = json.loads((tmp_path / "stages" / "certify:x_at_0.25.json").read_text())
    assert marker["runs"] == 2 and marker["seconds"] >= first["seconds"] + 0.2
    assert not running.exists() and study.times["certify:x@0.25"] == marker["seconds"]
    # While a stage runs its clock file is rewritten, so a kill -9 loses at most `every`.
    clock = StageClock(tmp_path / "live.running", every=0.05)
    with clock:
        time.sleep(0.3)
        assert json.loads((tmp_path / "live.running").read_text())["seconds"] >= 0.1
    assert not (tmp_path / "live.running").exists()



def test_a_finished_stage_is_skipped_and_keeps_what_it_returned_only_when_asked(tmp_path):
    stages, calls = Stages(tmp_path), []

    def work():
        calls.append(1)
        return {"psnr": 27.5}

    first = stages.stage("bakeoff:a@0.25", work, keep=True)
    again = Stages(tmp_path).stage("bakeoff:a@0.25", work, keep=True)
    assert calls == [1] and first == again and first["psnr"] == 27.5
    assert (tmp_path / "stages" / "bakeoff:a_at_0.25.json").exists()
    plain = stages.stage("diagnose:b", work)
    assert "psnr" not in plain and calls == [1, 1]
    stages.only = ("certify",)
    assert stages.stage("train:c", work) is None and calls == [1, 1]
    fresh = Stages(tmp_path)
    fresh.only = ("certify",)
    fresh.stage("train:c", work)
    assert "--only left train:c for later" in fresh.closing_line()
    fresh.only = None
    fresh.stage("bakeoff:a@0.25", work)  # finished before: skipped
    assert "--only left" in fresh.closing_line()  # what this run could not do is said
