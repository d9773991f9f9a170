"""``--decision SPEC``, ``certify --from-journal`` and the questions ``analyze --journal`` counts
(issue 26): a live run against the loopback API asks one question and journals the ranked
answers; another is certified offline from them with no query (the adapter is never built,
the server is gone), and ``analyze`` then counts k = 2 questions of the same samples."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothapi import LocalModelAdapter
from smoothapi.certification import max_certifiable_radius
from smoothapi.cli import api as api_cli
from smoothapi.cli import commands, main
from smoothapi.cli.questions import describe, parse_decision
from smoothapi.decisions import Ancestor, Flag, Vocabulary
from smoothapi.errors import InvalidInputError
from smoothapi.journal import Journal
from smoothapi.testing import LoopbackProvider

from ..loopback import brightness

SIGMA = "0.25"
COUNTS = ("--n0", "8", "--n", "40", "--alpha", "0.001")


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(tsv: str) -> list[dict[str, str]]:
    header, *lines = tsv.splitlines()
    columns = header.split("\t")
    return [dict(zip(columns, line.split("\t"), strict=True)) for line in lines]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("smoothapi: error: "), err
    return lines[-1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("questions")
    for label, value in (("bright", 230), ("dark", 20)):
        (root / "images" / label).mkdir(parents=True)
        Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(
            root / "images" / label / f"{value}.png")  # fmt: skip
    (root / "vocab.txt").write_text("# light or not\nlight: bright, shiny\n\n  shadow : dark\n")
    (root / "flag.txt").write_text("# moderation\nDark\n")
    (root / "comments.txt").write_text("# nothing but a comment\n\n")
    return root


def _live(files: Path, journal: Path, *extra) -> tuple[str, str]:
    """``certify --api http`` against a loopback server that lives for this call only."""
    out, err = io.StringIO(), io.StringIO()
    with LoopbackProvider(brightness) as server, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):  # fmt: skip
        code = main([str(a) for a in ("certify", "--api", "http", "--url", server.url("generic"),
                                      files / "images", "--sigma", SIGMA, *COUNTS, "--denoiser",
                                      "none", "--yes", "--journal", journal, *extra)])  # fmt: skip
        assert code == 0, err.getvalue()
        assert server.stats.images == 2 * (8 + 40 + 1)  # the plan's queries, all sent
    return out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def live_journal(files, tmp_path_factory):
    """A live run that asked the vocabulary question: its journal, rows and stderr."""
    journal = tmp_path_factory.mktemp("live") / "run.sqlite"
    out, err = _live(files, journal, "--decision", f"vocabulary:{files / 'vocab.txt'}",
                     "--seed", "0")  # fmt: skip
    return journal, out, err


@pytest.fixture
def journal(live_journal, tmp_path) -> Path:
    """A copy of the live run's journal, for a test to ask its own questions of."""
    copy = tmp_path / "copy.sqlite"
    shutil.copy(live_journal[0], copy)
    return copy


def _refuse_adapters(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an adapter was built")

    monkeypatch.setattr(api_cli, "build_adapter", refuse)
    monkeypatch.setattr(commands.LocalModelAdapter, "from_checkpoint", refuse)


@pytest.fixture
def no_queries(monkeypatch):
    """Building any adapter fails the test: --from-journal must build none (and no server
    runs while it answers: each live run's loopback server is closed with it)."""
    _refuse_adapters(monkeypatch)


# --- spec parsing --------------------------------------------------------------------------


def test_top_or_no_spec_is_the_adapters_top_label():
    assert parse_decision(None) is None and parse_decision("top") is None
    assert parse_decision(" TOP ") is None
    assert describe(None) == "top label"


def test_vocabulary_file_with_synonyms_comments_and_other(files):
    decision = parse_decision(f"vocabulary:{files / 'vocab.txt'}", other="other")
    assert isinstance(decision, Vocabulary)
    assert decision.classes == {"light": ["bright", "light", "shiny"],
                                "shadow": ["dark", "shadow"]}  # fmt: skip
    assert decision([("Shiny", 0.9), ("dark", 0.1)]) == "light"
    assert decision([("cat", 0.9)]) == "other"
    assert parse_decision(f"vocabulary:{files / 'vocab.txt'}")([("cat", 0.9)]) is None
    assert describe(decision) == 'vocabulary (2 classes, other="other")'


def test_flag_file_and_threshold(files):
    decision = parse_decision(f"flag:{files / 'flag.txt'}", flag_threshold=0.8)
    assert isinstance(decision, Flag) and decision.labels == ["dark"]
    assert decision([("bright", 0.3), ("DARK", 0.7)]) == "not flagged"
    assert decision([("DARK", 0.85)]) == "flagged"
    assert parse_decision(f"flag:{files / 'flag.txt'}").threshold == 0.5
    assert describe(decision) == 'flag (1 label(s) at score >= 0.8: "flagged" / "not flagged")'


def test_ancestor_targets():
    decision = parse_decision("ancestor: cat, dog ,", other="else")
    assert isinstance(decision, Ancestor) and decision.targets == ["cat", "dog"]
    assert decision([("Egyptian cat", 0.9)]) == "cat"
    assert decision([("tabby", 0.2), ("golden retriever", 0.9)]) == "cat"  # the top one first
    assert describe(decision) == 'ancestor (cat, dog; other="else")'


@pytest.mark.parametrize(
    ("spec", "options", "fragment"),
    [
        ("colour", {}, "unknown --decision 'colour': give top, vocabulary:FILE"),
        ("vocabulary", {}, "--decision vocabulary needs FILE"),
        ("vocabulary:{root}/missing.txt", {}, "file not found"),
        ("flag:{root}/comments.txt", {}, "names no label"),
        ("vocabulary:{root}/comments.txt", {}, "names no class"),
        ("ancestor:cat,unicorn", {}, "not in ImageNet's WordNet hierarchy: 'unicorn'"),
        ("ancestor:", {}, "needs NAME,NAME"),
        ("top:x", {}, "top takes nothing"),
        ("flag:{root}/flag.txt", {"other": "x"}, "--other applies to"),
        ("vocabulary:{root}/vocab.txt", {"flag_threshold": 0.3}, "--flag-threshold applies"),
        ("flag:{root}/flag.txt", {"flag_threshold": float("nan")}, "finite"),
    ],
)
def test_bad_specs_are_one_clear_error(files, spec, options, fragment):
    with pytest.raises(InvalidInputError) as caught:
        parse_decision(spec.format(root=files), **options)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_decision_fails_in_one_line_before_the_model_is_loaded(capsys, files, no_queries):
    code, out, err = _run(capsys, "certify", "--model", files / "none.safetensors",
                          files / "images", "--sigma", SIGMA, "--decision", "ancestor:unicorn")
    assert code == 2 and out == ""
    assert "'unicorn'" in _one_error_line(err)
    code, _, err = _run(capsys, "predict", "--api", "http", "--url", "http://127.0.0.1:9",
                        files / "images", "--sigma", SIGMA, "--decision",
                        f"flag:{files / 'missing.txt'}")  # fmt: skip
    assert code == 2 and "file not found" in _one_error_line(err)


# --- live, then offline --------------------------------------------------------------------


def test_a_live_api_run_certifies_the_question_asked(live_journal):
    journal, out, err = live_journal
    rows = _rows(out)
    assert [(r["file"], r["predict"]) for r in rows] == [("bright/230.png", "light"),
                                                         ("dark/20.png", "shadow")]
    assert [r["clean"] for r in rows] == ["light", "shadow"]  # the clean answer, decided too
    assert "smoothapi: question: vocabulary (2 classes, other=none)" in err
    with Journal(journal) as opened:
        (config,) = opened.runs().values()
    assert config["decision"]["decision"] == "vocabulary"


def test_from_journal_asks_another_question_without_any_query(capsys, journal, files,
                                                              no_queries):  # fmt: skip
    code, out, err = _run(capsys, "certify", "--from-journal", journal, "--decision",
                          f"flag:{files / 'flag.txt'}")  # fmt: skip
    assert code == 0, err
    rows = _rows(out)
    assert list(rows[0]) == ["idx", "image", "predict", "radius", "n0", "n", "questions"]
    assert [r["predict"] for r in rows] == ["not flagged", "flagged"]
    best = max_certifiable_radius(40, 0.001, 0.25)
    assert all(float(r["radius"]) == pytest.approx(best) for r in rows)
    assert [(r["n0"], r["n"], r["questions"]) for r in rows] == [("8", "40", "2")] * 2
    assert all(len(r["image"]) == 12 for r in rows)
    assert "no query is sent" in err and "the run certified vocabulary" in err
    assert "each certificate holds at alpha=0.001" in err
    assert "holds jointly at 2 x 0.001 = 0.002" in err.splitlines()[-1]
    # the run's own question again: not another question, k stays 2
    code, out, err = _run(capsys, "certify", "--from-journal", journal, "--format", "json")
    assert code == 0, err
    assert [(r["predict"], r["questions"]) for r in map(json.loads, out.splitlines())] == \
        [("light", 2), ("shadow", 2)]  # fmt: skip
    # analyze counts both questions
    code, out, err = _run(capsys, "analyze", "--journal", journal)
    assert code == 0, err
    (line,) = [x for x in out.splitlines() if "questions:" in x]
    assert "its own, vocabulary (2 classes, other=none)" in line
    assert 'asked offline: flag (1 label(s) at score >= 0.5: "flagged" / "not flagged") of 2 ' \
           "attempt(s)" in line  # fmt: skip
    assert "k = 2 questions" in line and "2 x 0.001 = 0.002" in line


def test_analyze_says_k_is_1_before_any_offline_question(capsys, journal):
    code, out, _ = _run(capsys, "analyze", "--journal", journal)
    assert code == 0
    assert "none other asked offline (k = 1)" in out


def test_from_journal_text_and_output_file(capsys, journal, files, tmp_path, no_queries):
    target = tmp_path / "offline.txt"
    code, out, err = _run(capsys, "certify", "--from-journal", journal, "--format", "text",
                          "-o", target, "--decision", "top")
    assert code == 0 and out == "", err
    lines = target.read_text().splitlines()
    assert lines[0].split() == ["idx", "image", "predict", "radius", "n0", "n", "questions"]
    # the adapter's top label of a run that asked the vocabulary: a second question
    assert [line.split()[2:4] for line in lines[1:]] == [["bright", "0.250"], ["dark", "0.250"]]
    assert "question: top label (the run certified vocabulary" in err


@pytest.mark.filterwarnings("ignore::smoothapi.journal.RepeatedAttemptWarning")
def test_several_runs_need_run_with_a_unique_prefix(capsys, journal, files, monkeypatch):
    _live(files, journal, "--seed", "1")  # the top label, another seed: another run
    _refuse_adapters(monkeypatch)
    with Journal(journal) as opened:
        keys = list(opened.runs())
    assert len(keys) == 2
    code, out, err = _run(capsys, "certify", "--from-journal", journal)
    line = _one_error_line(err)
    assert code == 2 and out == "" and "holds 2 runs: give --run KEY_PREFIX" in line
    assert all(key[:12] in line for key in keys)
    assert "seed 0" in line and "seed 1" in line and "question: vocabulary" in line
    code, out, err = _run(capsys, "certify", "--from-journal", journal, "--run", keys[1][:6])
    assert code == 0, err
    assert [r["predict"] for r in _rows(out)] == ["bright", "dark"]
    assert "tried 2 times in the journal: the best of 2 tries holds at 2 x 0.001" in err
    code, _, err = _run(capsys, "certify", "--from-journal", journal, "--run", "zzz")
    assert code == 2 and "--run zzz: no run" in _one_error_line(err)


def test_a_journal_without_ranked_answers_says_so_and_exits_1(capsys, journal, files):
    with sqlite3.connect(journal) as db:  # as a smoothapi before ranked answers wrote it
        db.execute("UPDATE samples SET ranked = NULL")
    code, out, err = _run(capsys, "certify", "--from-journal", journal, "--decision",
                          f"flag:{files / 'flag.txt'}")  # fmt: skip
    assert code == 1 and out == ""
    assert "own question only" in _one_error_line(err)
    code, out, _ = _run(capsys, "certify", "--from-journal", journal)  # its own: still fine
    assert code == 0 and [r["predict"] for r in _rows(out)] == ["light", "shadow"]


def test_from_journal_refuses_images_and_live_options(capsys, journal, files, no_queries):
    code, _, err = _run(capsys, "certify", "--from-journal", journal, files / "images")
    assert code == 2 and "give no IMAGES" in _one_error_line(err)
    code, _, err = _run(capsys, "certify", "--from-journal", journal, "--sigma", SIGMA,
                        "--api", "http")
    assert code == 2 and "--api, --sigma do(es) not apply with --from-journal" in \
        _one_error_line(err)  # fmt: skip
    code, _, err = _run(capsys, "certify", "--from-journal", journal.with_name("none.sqlite"))
    assert code == 2 and "journal not found" in _one_error_line(err)
    assert not journal.with_name("none.sqlite").exists()  # not created by looking


def test_live_runs_still_require_images_and_sigma(capsys, files):
    code, _, err = _run(capsys, "certify", "--model", "m.safetensors", files / "images")
    assert code == 2 and "the following arguments are required: --sigma" in err
    assert err.startswith("usage: smoothapi certify")
    code, _, err = _run(capsys, "predict", "--model", "m.safetensors", "--sigma", SIGMA)
    assert code == 2 and "the following arguments are required: IMAGES" in err
    code, _, err = _run(capsys, "certify", "--model", "m.safetensors", files / "images",
                        "--sigma", SIGMA, "--run", "abc")
    assert code == 2 and "--run applies with --from-journal only" in _one_error_line(err)


def test_a_local_model_takes_a_decision_and_journals_it(capsys, files, tmp_path):
    from smoothapi.training import create_classifier

    torch.manual_seed(1)
    model = create_classifier("small_cnn", in_channels=3, num_classes=2, width=4)
    with torch.no_grad():  # answers "a" whatever the input
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.tensor([10.0, 0.0]))
    LocalModelAdapter(model, class_names=["a", "b"]).save(tmp_path / "m.safetensors")
    (tmp_path / "v.txt").write_text("first: a\n")
    journal = tmp_path / "local.sqlite"
    code, out, err = _run(capsys, "predict", "--model", tmp_path / "m.safetensors",
                          files / "images", "--sigma", SIGMA, "--n", "30", "--seed", "0",
                          "--device", "cpu", "--journal", journal, "--decision",
                          f"vocabulary:{tmp_path / 'v.txt'}", "--other", "rest")  # fmt: skip
    assert code == 0, err
    assert [r["predict"] for r in _rows(out)] == ["first", "first"]
    assert 'smoothapi: question: vocabulary (1 classes, other="rest")' in err
    with Journal(journal) as opened:
        (config,) = opened.runs().values()
    assert config["decision"] == {"decision": "vocabulary", "classes": {"first": ["a", "first"]},
                                  "other": "rest", "min_score": 0.0}  # fmt: skip
    # predict attempts are not CERTIFY attempts: nothing to certify again
    code, _, err = _run(capsys, "certify", "--from-journal", journal)
    assert code == 2 and "has no CERTIFY attempt" in _one_error_line(err)
