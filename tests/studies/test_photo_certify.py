"""The whole-photo section of the natural-photo report, from logs written by hand."""

from __future__ import annotations

from smoothapi.runs import CERTIFY_COLUMNS, CLEAN_COLUMNS
from smoothapi.studies.photo_certify import whole_lines, whole_log_path


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = (*CERTIFY_COLUMNS, *CLEAN_COLUMNS)
    lines = ["\t".join(columns)]
    for i, (predict, radius, clean) in enumerate(rows):
        row = {"idx": i, "label": clean, "predict": predict, "radius": radius,
               "correct": int(predict == clean), "time": 1.0, "file": "", "clean": clean,
               "differs": int(predict != clean)}  # fmt: skip
        lines.append("\t".join(str(row[c]) for c in columns))
    path.write_text("\n".join(lines) + "\n")


META = {224: [{"photo": "cat", "size": (224, 300), "answer": "tabby", "probability": 0.9},
              {"photo": "cup", "size": (224, 224), "answer": "espresso", "probability": 0.2},
              {"photo": "sea", "size": (300, 224), "answer": "sandbar", "probability": 0.6}]}


def test_certified_accuracy_counts_only_the_clean_answer_and_splits_the_confident(tmp_path):
    _write(whole_log_path(tmp_path, "none", 0.25, 224),
           [("tabby", 0.1, "tabby"), ("-1", 0.0, "espresso"), ("jellyfish", 0.4, "sandbar")])
    _write(whole_log_path(tmp_path, "photo-mse", 0.25, 224),
           [("tabby", 0.3, "tabby"), ("espresso", 0.6, "espresso"), ("sandbar", 0.2, "sandbar")])
    lines = whole_lines(tmp_path, META, 0.25, ("none", "photo-mse"), 100, 500, 0.001)
    text = "\n".join(lines)
    # Each certificate beside the clean answer; one that is another label is marked.
    assert "| cat | 224 | tabby (0.90) | tabby r=0.10 | tabby r=0.30 |" in text
    assert "| cup | 224 | espresso (0.20) | abstain | espresso r=0.60 |" in text
    assert "| sea | 224 | sandbar (0.60) | jellyfish r=0.40 ✗ | sandbar r=0.20 |" in text
    # r = 0, 0.12, 0.25, 0.5: a wrong label never counts, whatever its radius.
    assert "| 224 | all (3) | none | 33 | 0 | 0 | 0 |" in text
    assert "| 224 | all (3) | photo-mse | 100 | 100 | 67 | 33 |" in text
    assert "| 224 | confident (2) | none | 50 | 0 | 0 | 0 |" in text
    assert "| 224 | confident (2) | photo-mse | 100 | 100 | 50 | 0 |" in text


def test_nothing_is_reported_before_a_log_exists(tmp_path):
    assert whole_lines(tmp_path, META, 0.25, ("none",), 100, 500, 0.001) == []
