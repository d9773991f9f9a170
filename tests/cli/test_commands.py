"""The ``smoothapi`` command line: certify / predict on image folders, output formats, errors."""

from __future__ import annotations

import io
import json
import math
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import norm

from smoothapi import LocalModelAdapter, max_certifiable_radius
from smoothapi.cli import find_images, main
from smoothapi.runs import format_elapsed
from smoothapi.training import create_classifier

CLASSES = ["dark", "mid", "bright"]
# Pixel values of the generated 8x8 flat grey images in each class folder.
LEVELS = {"dark": (0, 40), "mid": (128, 140), "bright": (230, 255)}
CERTIFY_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tfile"
PREDICT_HEADER = "idx\tlabel\tpredict\tcorrect\ttime\tfile"
TIME = re.compile(r"^\d+:\d\d:\d\d\.\d{6}$")
SIGMA, ALPHA, N0, N = 0.25, 0.001, 20, 200


def _train_brightness_classifier() -> LocalModelAdapter:
    """A width-4 small_cnn taught, with noise, to tell dark / mid / bright flat 8x8 images apart."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = create_classifier("small_cnn", in_channels=1, num_classes=3, width=4)
    adapter = LocalModelAdapter(model, class_names=CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(120):
        y = torch.randint(0, 3, (32,), generator=generator)
        level = (0.1 + 0.4 * y.float() + 0.2 * torch.rand(32, generator=generator)).clamp(0, 1)
        x = level.view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
        x = x + SIGMA * torch.randn(x.shape, generator=generator)
        loss = F.cross_entropy(adapter.logits(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return adapter


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    _train_brightness_classifier().save(path, dataset="synthetic-brightness")
    return path


@pytest.fixture(scope="module")
def constant_model_path(tmp_path_factory) -> Path:
    """A classifier that answers "dark" for every input, noisy or not."""
    torch.manual_seed(1)
    model = create_classifier("small_cnn", in_channels=1, num_classes=3, width=4)
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    path = tmp_path_factory.mktemp("model") / "constant.safetensors"
    LocalModelAdapter(model, class_names=CLASSES).save(path)
    return path


def _write_image(path: Path, value: int, size: int = 8, mode: str = "L") -> None:
    """A flat grey (or RGB) image; the file format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """ImageFolder layout: ``<class>/<n>.png``, two flat images per class."""
    root = tmp_path_factory.mktemp("images")
    for name, values in LEVELS.items():
        for i, value in enumerate(values):
            _write_image(root / name / f"{i}.png", value)
    (root / "notes.txt").write_text("not an image, ignored")
    return root


EXPECTED_FILES = [f"{name}/{i}.png" for name in ("bright", "dark", "mid") for i in (0, 1)]


def _run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tsv(text: str) -> tuple[str, list[dict[str, str]]]:
    lines = text.splitlines()
    columns = lines[0].split("\t")
    return lines[0], [dict(zip(columns, line.split("\t"), strict=True)) for line in lines[1:]]


def _certify(capsys, model, images, *extra) -> tuple[int, str, str]:
    return _run(capsys, "certify", "--model", model, images, "--sigma", SIGMA,
                "--n0", N0, "--n", N, "--alpha", ALPHA, "--seed", 7, "--device", "cpu", *extra)


# --- certify -----------------------------------------------------------------------------------


def test_certify_tsv_header_and_rows(capsys, model_path, image_folder):
    code, out, err = _certify(capsys, model_path, image_folder)
    assert code == 0, err
    header, rows = _tsv(out)
    assert header == CERTIFY_HEADER
    assert [r["file"] for r in rows] == EXPECTED_FILES
    assert [r["idx"] for r in rows] == [str(i) for i in range(len(EXPECTED_FILES))]
    bound = max_certifiable_radius(N, ALPHA, SIGMA)
    for row in rows:
        assert row["label"] == row["file"].split("/")[0]
        radius = float(row["radius"])
        assert 0.0 <= radius <= bound
        assert (row["predict"] == "-1") == (radius == 0.0)
        assert row["predict"] in CLASSES + ["-1"]
        assert row["correct"] == str(int(row["predict"] == row["label"]))
        assert TIME.match(row["time"]), row["time"]
    by_file = {r["file"]: r for r in rows}
    # The darkest and brightest images are far from any decision boundary.
    for name in ("dark/0.png", "bright/1.png"):
        assert by_file[name]["correct"] == "1"
        assert float(by_file[name]["radius"]) > 0.5 * bound
    assert "seed=7" in err


def test_certify_unanimous_model_reaches_the_max_radius(capsys, constant_model_path, image_folder):
    code, out, _ = _certify(capsys, constant_model_path, image_folder)
    assert code == 0
    _, rows = _tsv(out)
    bound = max_certifiable_radius(N, ALPHA, SIGMA)
    assert {r["predict"] for r in rows} == {"dark"}
    assert all(float(r["radius"]) == pytest.approx(bound, rel=1e-12) for r in rows)
    assert [r["correct"] for r in rows] == ["1" if r["label"] == "dark" else "0" for r in rows]
    assert sum(r["correct"] == "1" for r in rows) == 2


def test_certify_abstains_when_n_is_too_small_to_certify(capsys, constant_model_path, image_folder):
    # alpha ** (1 / 5) < 1/2: even 5 unanimous samples cannot certify, so CERTIFY abstains.
    code, out, _ = _run(capsys, "certify", "--model", constant_model_path, image_folder,
                        "--sigma", SIGMA, "--n0", 5, "--n", 5, "--seed", 0)
    assert code == 0
    _, rows = _tsv(out)
    assert len(rows) == 6
    assert all(r["predict"] == "-1" and r["radius"] == "0.0" and r["correct"] == "0" for r in rows)


def test_json_lines_agree_with_tsv(capsys, model_path, image_folder):
    _, tsv_out, _ = _certify(capsys, model_path, image_folder)
    code, json_out, err = _certify(capsys, model_path, image_folder, "--format", "json")
    assert code == 0, err
    _, tsv_rows = _tsv(tsv_out)
    records = [json.loads(line) for line in json_out.splitlines()]
    assert len(records) == len(tsv_rows) == 6
    for record, row in zip(records, tsv_rows, strict=True):
        assert str(record["idx"]) == row["idx"]
        assert record["label"] == row["label"]
        assert str(record["predict"]) == row["predict"]
        assert record["radius"] == float(row["radius"])
        assert str(record["correct"]) == row["correct"]
        assert record["file"] == row["file"]
        assert TIME.match(record["time"])
        assert (record["n0"], record["n"]) == (N0, N)
        assert (record["alpha"], record["sigma"]) == (ALPHA, SIGMA)
        assert record["queries"] == N0 + N
        assert sum(record["counts"].values()) == N
        assert all(isinstance(k, str) for k in record["counts"])
        assert 0.0 <= record["p_a_lower"] <= 1.0
        if record["predict"] is not None:
            assert record["radius"] == pytest.approx(SIGMA * norm.ppf(record["p_a_lower"]))
            # The bound comes from the estimation counts of the certified class.
            assert record["counts"][record["predict"]] >= N / 2
        else:
            assert record["radius"] == 0.0


def test_same_seed_same_results_different_seed_different_counts(capsys, model_path, image_folder):
    def counts(seed):
        _, out, _ = _run(capsys, "certify", "--model", model_path, image_folder, "--sigma", 1.0,
                         "--n0", N0, "--n", N, "--seed", seed, "--format", "json")
        return [json.loads(line)["counts"] for line in out.splitlines()]

    first = counts(3)
    assert counts(3) == first
    assert counts(4) != first


def test_output_file(capsys, model_path, image_folder, tmp_path):
    target = tmp_path / "certify.tsv"
    code, out, _ = _certify(capsys, model_path, image_folder, "--output", target)
    assert code == 0
    assert out == ""
    header, rows = _tsv(target.read_text())
    assert header == CERTIFY_HEADER and len(rows) == 6


def test_batch_size_does_not_change_validity(capsys, constant_model_path, image_folder):
    code, out, _ = _certify(capsys, constant_model_path, image_folder, "--batch-size", 7)
    assert code == 0
    _, rows = _tsv(out)
    assert len(rows) == 6 and {r["predict"] for r in rows} == {"dark"}


# --- predict -----------------------------------------------------------------------------------


def test_predict_tsv(capsys, model_path, image_folder):
    code, out, err = _run(capsys, "predict", "--model", model_path, image_folder,
                          "--sigma", SIGMA, "--n", N, "--seed", 0)
    assert code == 0, err
    header, rows = _tsv(out)
    assert header == PREDICT_HEADER
    assert [r["file"] for r in rows] == EXPECTED_FILES
    for row in rows:
        assert row["predict"] in CLASSES + ["-1"]
        assert row["correct"] == str(int(row["predict"] == row["label"]))
        assert TIME.match(row["time"])
    by_file = {r["file"]: r for r in rows}
    assert by_file["dark/0.png"]["predict"] == "dark"
    assert by_file["bright/1.png"]["predict"] == "bright"


def test_predict_json(capsys, constant_model_path, image_folder):
    code, out, _ = _run(capsys, "predict", "--model", constant_model_path, image_folder,
                        "--sigma", SIGMA, "--n", 50, "--seed", 0, "--format", "json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 6
    for record in records:
        assert record["predict"] == "dark"
        assert record["counts"] == {"dark": 50}
        assert record["queries"] == record["n"] == 50
        assert record["p_value"] <= record["alpha"]
        assert "radius" not in record
        assert record["correct"] == int(record["label"] == "dark")


# --- image discovery ---------------------------------------------------------------------------


def test_flat_folder_has_unknown_labels(capsys, constant_model_path, tmp_path):
    for name in ("b.png", "a.jpg", "c.bmp"):
        _write_image(tmp_path / "flat" / name, 100)  # the format follows the suffix
    code, out, _ = _certify(capsys, constant_model_path, tmp_path / "flat")
    assert code == 0
    _, rows = _tsv(out)
    assert [r["file"] for r in rows] == ["a.jpg", "b.png", "c.bmp"]
    assert all(r["label"] == "" and r["correct"] == "" for r in rows)
    code, out, _ = _certify(capsys, constant_model_path, tmp_path / "flat", "--format", "json")
    records = [json.loads(line) for line in out.splitlines()]
    assert all(r["label"] is None and r["correct"] is None for r in records)


def test_single_image_file(capsys, constant_model_path, image_folder):
    code, out, _ = _certify(capsys, constant_model_path, image_folder / "mid" / "1.png")
    assert code == 0
    _, rows = _tsv(out)
    assert len(rows) == 1
    assert rows[0]["file"] == "1.png" and rows[0]["label"] == "" and rows[0]["predict"] == "dark"


def test_images_sorted_naturally_and_nested(tmp_path):
    for name in ("10.png", "2.png", "1.png"):
        _write_image(tmp_path / "cat" / name, 0)
    _write_image(tmp_path / "dog" / "sub" / "0.png", 0)
    _write_image(tmp_path / "loose.png", 0)
    _write_image(tmp_path / ".hidden" / "0.png", 0)
    entries = find_images(tmp_path)
    assert [(e.name, e.label) for e in entries] == [
        ("cat/1.png", "cat"), ("cat/2.png", "cat"), ("cat/10.png", "cat"),
        ("dog/sub/0.png", "dog"), ("loose.png", None),
    ]


def test_format_elapsed():
    assert format_elapsed(0.0) == "0:00:00.000000"
    assert format_elapsed(3.25) == "0:00:03.250000"
    assert format_elapsed(3725.000001) == "1:02:05.000001"
    assert format_elapsed(90000) == "25:00:00.000000"


# --- errors: exit 2, one clear line, no traceback, no rows ------------------------------------


def _assert_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("smoothapi: error: ")
    assert err.count("\n") == 1, err  # one line, no traceback
    for fragment in fragments:
        assert fragment in err, err


def test_missing_model(capsys, image_folder, tmp_path):
    missing = tmp_path / "nope.safetensors"
    code, out, err = _certify(capsys, missing, image_folder)
    _assert_error(code, out, err, "smoothapi: error:", "checkpoint not found", str(missing))


def test_model_file_that_is_not_a_checkpoint(capsys, image_folder, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not safetensors")
    code, out, err = _certify(capsys, bad, image_folder)
    _assert_error(code, out, err, "smoothapi: error:", str(bad))


def test_missing_images_path(capsys, model_path, tmp_path):
    missing = tmp_path / "no-such-folder"
    code, out, err = _certify(capsys, model_path, missing)
    _assert_error(code, out, err, "smoothapi: error:", "images path not found", str(missing))


def test_empty_folder(capsys, model_path, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = _certify(capsys, model_path, tmp_path / "empty")
    _assert_error(code, out, err, "smoothapi: error:", "no images found")


def _folder_with_unreadable_images(image_folder, tmp_path) -> tuple[Path, list[Path]]:
    root = tmp_path / "images"
    for path in image_folder.rglob("*.png"):
        _write_image(root / path.relative_to(image_folder), 0)
    broken = root / "mid" / "broken.png"
    broken.write_bytes(b"\x89PNG but truncated")
    dangling = root / "dark" / "link.png"
    dangling.symlink_to(tmp_path / "gone.png")
    return root, [dangling, broken]


def test_readable_images_are_certified_and_every_unreadable_one_is_listed(
    capsys, model_path, image_folder, tmp_path
):
    root, bad = _folder_with_unreadable_images(image_folder, tmp_path)
    for command in ("certify", "predict"):
        code, out, err = _run(capsys, command, "--model", model_path, root, "--sigma", SIGMA,
                              "--n", 10, "--seed", 0)  # fmt: skip
        assert code == 1 and "Traceback" not in err
        _, rows = _tsv(out)
        assert [r["file"] for r in rows] == EXPECTED_FILES
        assert [int(r["idx"]) for r in rows] == [0, 1, 2, 3, 5, 6]  # 4 is dark/link.png
        lines = err.splitlines()
        listed = [line for line in lines if "cannot read" in line]
        assert len(listed) == 2
        assert listed[0] == (f"smoothapi: cannot read {bad[0]}: broken symbolic link to "
                             f"{tmp_path / 'gone.png'}")  # fmt: skip
        assert listed[1].startswith(f"smoothapi: cannot read image {bad[1]}: ")
        assert lines[-1].startswith("smoothapi: 2 image(s) could not be read")


def test_strict_refuses_a_folder_with_unreadable_images_up_front(
    capsys, model_path, image_folder, tmp_path
):
    root, bad = _folder_with_unreadable_images(image_folder, tmp_path)
    code, out, err = _certify(capsys, model_path, root, "--strict")
    _assert_error(code, out, err, "--strict: 2 unreadable image(s)", "dark/link.png",
                  "mid/broken.png")  # fmt: skip


def _checkpoint_with(path: Path, metadata: str) -> Path:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(path), metadata={"smoothapi": metadata})
    return path


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ("{not json", "metadata is not JSON"),
        ("[1, 2]", "metadata is not a JSON object"),
        ('{"kind": "classifier"}', "no architecture name"),
        ('{"kind": "classifier", "arch": "small_cnn", "kwargs": {"nope": 1}}',
         "cannot rebuild classifier 'small_cnn'"),
        ('{"kind": "classifier", "arch": "small_cnn", "kwargs": [1]}', "malformed kwargs"),
    ],
)  # fmt: skip
def test_checkpoint_metadata_that_cannot_rebuild_a_model(capsys, image_folder, tmp_path,
                                                         metadata, fragment):  # fmt: skip
    model = _checkpoint_with(tmp_path / "odd.safetensors", metadata)
    code, out, err = _certify(capsys, model, image_folder)
    _assert_error(code, out, err, str(model), fragment)


def test_denoiser_that_cannot_take_the_images(capsys, model_path, image_folder, tmp_path):
    from smoothapi.denoisers import create_denoiser, save_denoiser

    path = tmp_path / "rgb.safetensors"
    save_denoiser(path, create_denoiser("dncnn", in_channels=3, depth=3, width=4),
                  sigma=SIGMA, objective="mse")  # fmt: skip
    code, out, err = _certify(capsys, model_path, image_folder, "--denoiser", path)
    _assert_error(code, out, err, "the denoiser cannot take", "1-channel 8x8 image")


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_it_is_built(
    capsys, model_path, image_folder
):
    huge = 10**9  # 10^9 noisy 8x8 images: about 30 TiB
    code, out, err = _certify(capsys, model_path, image_folder, "--batch-size", huge, "--n", huge)
    _assert_error(code, out, err, f"batch_size={huge} on a 8x8 image needs about")


def _not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    return path


def _damaged_journal(tmp_path: Path, model_path: Path, image_folder: Path) -> Path:
    path = tmp_path / "damaged.sqlite"
    assert main(["certify", "--model", str(model_path), str(image_folder), "--sigma", "0.25",
                 "--n0", "5", "--n", "20", "--seed", "0", "--journal", str(path),
                 "--output", str(tmp_path / "out.tsv")]) == 0  # fmt: skip
    data = bytearray(path.read_bytes())
    data[1024:] = b"\xff" * (len(data) - 1024)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp, model, images: tmp, "is a folder"),
        (lambda tmp, model, images: _not_sqlite(tmp) / "j.sqlite", "cannot use"),
        (lambda tmp, model, images: _not_sqlite(tmp), "not a database"),
        (_damaged_journal, "journal"),
    ],
)
def test_a_journal_that_cannot_be_used(capsys, model_path, image_folder, tmp_path, make, fragment):
    journal = make(tmp_path, model_path, image_folder)
    capsys.readouterr()
    code, out, err = _certify(capsys, model_path, image_folder, "--journal", journal)
    _assert_error(code, out.replace(CERTIFY_HEADER + "\n", ""), err, str(journal), fragment)


def test_image_the_model_cannot_take(capsys, model_path, tmp_path):
    _write_image(tmp_path / "rgb" / "x.png", 10, mode="RGB")  # 3 channels, the model wants 1
    code, out, err = _certify(capsys, model_path, tmp_path / "rgb")
    _assert_error(code, out, err, "smoothapi: error:", "cannot classify", "3-channel")


def test_unwritable_output(capsys, model_path, image_folder, tmp_path):
    code, out, err = _certify(capsys, model_path, image_folder,
                              "--output", tmp_path / "missing-dir" / "out.tsv")
    _assert_error(code, out, err, "smoothapi: error:", "cannot write output file")


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--sigma", "0", "sigma must be"),
        ("--sigma", "-0.5", "sigma must be"),
        ("--sigma", "nan", "sigma must be"),
        ("--alpha", "0", "alpha must lie strictly between 0 and 1"),
        ("--alpha", "1", "alpha must lie strictly between 0 and 1"),
        ("--alpha", "1.5", "alpha must lie strictly between 0 and 1"),
        ("--n0", "0", "n0 must be a positive integer"),
        ("--n0", "-3", "n0 must be a positive integer"),
        ("--n", "0", "n must be a positive integer"),
        ("--batch-size", "0", "batch-size must be a positive integer"),
        ("--seed", "-1", "seed must be a non-negative integer"),
    ],
)
def test_bad_numbers(capsys, model_path, image_folder, option, value, fragment):
    argv = {"--sigma": str(SIGMA), "--alpha": "0.001", "--n0": "10", "--n": "10"}
    argv[option] = value
    flat = [x for pair in argv.items() for x in pair]
    code, out, err = _run(capsys, "certify", "--model", model_path, image_folder, *flat)
    _assert_error(code, out, err, "smoothapi: error:", fragment)


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--n", "0", "n must be"), ("--alpha", "2", "alpha must"), ("--sigma", "0", "sigma must")],
)
def test_bad_numbers_predict(capsys, model_path, image_folder, option, value, fragment):
    argv = {"--sigma": str(SIGMA), "--alpha": "0.001", "--n": "10"}
    argv[option] = value
    flat = [x for pair in argv.items() for x in pair]
    code, out, err = _run(capsys, "predict", "--model", model_path, image_folder, *flat)
    _assert_error(code, out, err, fragment)


def test_usage_errors_exit_2(capsys, model_path, image_folder):
    code, out, err = _run(capsys, "certify", "--model", model_path, image_folder)  # no --sigma
    assert code == 2 and "--sigma" in err and "required" in err
    code, out, err = _run(capsys, "certify", "--model", model_path, image_folder,
                          "--sigma", "abc")
    assert code == 2 and "invalid float value" in err
    code, out, err = _run(capsys, "predict", "--model", model_path, image_folder,
                          "--sigma", "0.25", "--n0", "10")  # predict has no selection step
    assert code == 2 and "--n0" in err
    code, out, err = _run(capsys)
    assert code == 2 and "certify" in err


def test_help_exits_0(capsys):
    code, out, _ = _run(capsys, "certify", "--help")
    assert code == 0 and "--sigma" in out and "--denoiser" in out


def test_console_entry_point_exit_code_without_traceback(tmp_path):
    missing = tmp_path / "nothing.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "smoothapi.cli", "certify", "--model", str(missing), str(tmp_path),
         "--sigma", "0.25"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"smoothapi: error: checkpoint not found: {missing}"
    assert result.stdout == ""


def test_radius_column_round_trips_exactly(capsys, constant_model_path, image_folder):
    code, out, _ = _certify(capsys, constant_model_path, image_folder)
    _, rows = _tsv(out)
    bound = max_certifiable_radius(N, ALPHA, SIGMA)
    # Written with full precision, so the printed radius never exceeds the bound by rounding.
    assert all(math.isclose(float(r["radius"]), bound, rel_tol=0, abs_tol=1e-15) for r in rows)


def test_rows_are_flushed_as_they_are_produced(monkeypatch, constant_model_path, image_folder):
    class FlushLog(io.StringIO):
        def __init__(self):
            super().__init__()
            self.lines_at_flush: list[int] = []

        def flush(self):
            self.lines_at_flush.append(self.getvalue().count("\n"))
            super().flush()

    stdout = FlushLog()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["certify", "--model", str(constant_model_path), str(image_folder),
                 "--sigma", "0.25", "--n0", "5", "--n", "20", "--seed", "0"]) == 0
    # Header, then each of the 6 rows, each flushed as soon as it is written.
    assert sorted(set(stdout.lines_at_flush)) == list(range(1, 8))


def test_closed_pipe_stops_quietly(tmp_path, constant_model_path, image_folder):
    process = subprocess.Popen(
        [sys.executable, "-m", "smoothapi.cli", "certify", "--model", str(constant_model_path),
         str(image_folder), "--sigma", "0.25", "--n0", "10", "--n", "5000", "--seed", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout.readline().startswith("idx\tlabel")
    process.stdout.close()  # like `| head -1`
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_ctrl_c_prints_one_line_with_what_was_spent(tmp_path, constant_model_path, image_folder):
    process = subprocess.Popen(
        [sys.executable, "-m", "smoothapi.cli", "certify", "--model", str(constant_model_path),
         str(image_folder), "--sigma", "0.25", "--n0", "10", "--n", "2000000", "--seed", "0",
         "--journal", str(tmp_path / "j.sqlite"), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr.readline().startswith("smoothapi: certify")
    time.sleep(1.0)  # well into the first image's two million samples
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert out.startswith("idx\tlabel") and out.count("\n") == 1  # the header, no row
    assert err.startswith("smoothapi: interrupted: nothing was sent after Ctrl-C"), err
    assert err.count("\n") == 1 and "images) sent in all" in err, err


def test_denoiser_option_runs_the_denoiser_first(capsys, model_path, image_folder, tmp_path):
    from smoothapi.denoisers import create_denoiser, save_denoiser

    identity = create_denoiser("dncnn", in_channels=1, depth=3, width=4)
    with torch.no_grad():
        identity.body[-1].weight.zero_()  # DnCNN returns x - net(x): now exactly x
    path = tmp_path / "identity.safetensors"
    save_denoiser(path, identity, sigma=SIGMA, objective="mse")
    common = ["certify", "--model", model_path, image_folder, "--sigma", SIGMA, "--n0", "20",
              "--n", "100", "--seed", "3", "--format", "json"]
    _, plain, _ = _run(capsys, *common)
    code, denoised, _ = _run(capsys, *common, "--denoiser", path)
    assert code == 0
    strip = [{k: v for k, v in json.loads(line).items() if k != "time"}
             for line in plain.splitlines()]
    assert [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in denoised.splitlines()] == strip
    code, half, _ = _run(capsys, *common, "--denoiser", path, "--denoiser-dtype", "bfloat16")
    assert code == 0 and len(half.splitlines()) == len(plain.splitlines())
    code, _, err = _run(capsys, *common, "--denoiser", tmp_path / "missing.safetensors")
    assert code == 2 and "missing.safetensors" in err


def _rows_without_time(text: str) -> list[list[str]]:
    lines = text.splitlines()
    time_column = lines[0].split("\t").index("time")
    return [[c for i, c in enumerate(line.split("\t")) if i != time_column] for line in lines]


def test_torchrun_shards_the_images_and_merges_one_log(capsys, model_path, image_folder,
                                                       tmp_path):
    common = ["certify", "--model", str(model_path), str(image_folder), "--sigma", "0.5",
              "--n0", "10", "--num-samples", "50", "--seed", "9"]  # torchrun takes --n itself
    single = tmp_path / "single.tsv"
    assert main([*common, "--output", str(single)]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    merged = tmp_path / "merged.tsv"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "smoothapi.cli",
         *common, "--output", str(merged)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rows_without_time(merged.read_text()) == _rows_without_time(single.read_text())
    assert not list(tmp_path.glob("merged.tsv.rank*"))


def test_journal_option_resumes_without_work(capsys, model_path, image_folder, tmp_path):
    common = ["certify", "--model", model_path, image_folder, "--sigma", SIGMA, "--n0", "10",
              "--n", "40", "--seed", "5", "--journal", tmp_path / "j.sqlite"]
    code, first, _ = _run(capsys, *common)
    code_again, again, _ = _run(capsys, *common)
    assert code == code_again == 0
    assert _rows_without_time(again) == _rows_without_time(first)
    import sqlite3

    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 6 * 50


@pytest.mark.parametrize("seed, image_id", [(4, None), (3, "again"), (4, "again")],
                         ids=["other seed", "other image_id", "both"])
def test_analyze_journal_counts_the_same_pixels_tried_under_another_seed_or_id(
    capsys, tmp_path, seed, image_id
):
    import warnings

    from smoothapi import SmoothedClassifier
    from smoothapi.journal import RepeatedAttemptWarning

    from ..adapters.fake import FakeAdapter

    path = tmp_path / "j.sqlite"
    image = torch.full((1, 12, 12), 0.7)
    for seed_, id_ in [(3, None), (seed, image_id)]:
        with SmoothedClassifier(FakeAdapter(), 0.3, batch_size=16, device="cpu", seed=seed_,
                                journal=path) as smoothed, warnings.catch_warnings():
            warnings.simplefilter("ignore", RepeatedAttemptWarning)
            smoothed.certify(image, n0=8, n=32, alpha=0.01, image_id=id_)
    code, out, _ = _run(capsys, "analyze", "--journal", path)
    assert code == 0
    assert ("all runs, by the images' pixels (any seed or image_id): certify: 1 image(s), "
            "2 attempt(s), 1 image(s) tried more than once (up to 2 times: the best of 2 "
            "tries holds at 2 x 0.01, not 0.01)") in out, out


def test_ctrl_c_while_the_command_starts_prints_one_line_and_exits_130():
    # Ctrl-C in the first seconds (importing torch, scipy ...) printed a 44-line traceback
    # and the process died of SIGINT (-2).
    process = subprocess.Popen([sys.executable, "-m", "smoothapi.cli", "--version"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)  # well inside the imports, which take seconds
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    if process.returncode == 0:  # it had finished already: nothing to see
        pytest.skip("the command finished before the signal")
    assert process.returncode == 130, err
    assert err.count("\n") <= 2 and "Traceback" not in err, err
