"""The bundled demo: its model and images ship with the package; run_demo and the command."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import torch

from smoothapi import LocalModelAdapter, max_certifiable_radius
from smoothapi._checkpoint import load_checkpoint
from smoothapi._images import load_image
from smoothapi.cli import main
from smoothapi.cli.demo import demo_images, demo_images_dir, demo_model_path, run_demo
from smoothapi.training import FASHION_MNIST_CLASSES


@pytest.fixture(scope="module")
def adapter() -> LocalModelAdapter:
    return LocalModelAdapter.from_checkpoint(demo_model_path())


def test_bundled_model_is_a_small_safetensors_checkpoint():
    path = demo_model_path()
    assert path.suffix == ".safetensors"
    assert path.stat().st_size < 1_000_000
    _, meta = load_checkpoint(path, kind="classifier")
    assert meta["arch"] == "small_cnn"
    assert meta["kwargs"] == {"in_channels": 1, "num_classes": 10}
    assert meta["dataset"] == "fashion-mnist"
    assert meta["noise_sigma"] == 0.25 and meta["epochs"] >= 1
    assert meta["class_names"] == list(FASHION_MNIST_CLASSES)
    assert meta["mean"] == pytest.approx([0.2860]) and meta["std"] == pytest.approx([0.3530])
    last = meta["last_epoch"]  # measured on the whole test set by train_classifier
    assert last["accuracy_clean"] > 0.8 and last["accuracy_noise_0.25"] > 0.75


def test_bundled_images_two_per_class():
    images = demo_images()
    assert len(images) == 20
    # Class order (as in FASHION_MNIST_CLASSES), then test-index order.
    labels = [label for _, label in images]
    assert labels == [name for name in FASHION_MNIST_CLASSES for _ in (0, 1)]
    pairs = zip(images[::2], images[1::2], strict=True)
    assert all(int(a.stem) < int(b.stem) for (a, _), (b, _) in pairs)
    assert Counter(label for _, label in images) == {name: 2 for name in FASHION_MNIST_CLASSES}
    assert sorted(p.name for p in demo_images_dir().iterdir()) == sorted(FASHION_MNIST_CLASSES)
    for path, label in images:
        assert path.parent.name == label and path.stem.isdigit()
        image = load_image(path)
        assert image.shape == (1, 28, 28)
        assert 0.0 <= image.min() < image.max() <= 1.0  # a real picture, not a blank


def test_bundled_model_classifies_clean_bundled_images(adapter):
    images = demo_images()
    batch = torch.stack([load_image(path) for path, _ in images])
    predicted = adapter.top_labels(batch)
    correct = sum(p == label for p, (_, label) in zip(predicted, images, strict=True))
    assert correct >= 14, list(zip(predicted, [label for _, label in images], strict=True))


def test_run_demo_prints_a_row_per_image(adapter):
    out = io.StringIO()
    n = 200
    rows = run_demo(n0=50, n=n, seed=0, out=out)
    text = out.getvalue()
    assert len(rows) == 20
    assert "[0,1] pixel space" in text
    for row in rows:
        line = next(line for line in text.splitlines() if line.startswith(row.image + " "))
        assert row.true_label in line
        expected = "abstain" if row.certification.abstained else str(row.certification.label)
        assert line.split()[2] == expected
        assert row.certification.queries == 50 + n
    bound = max_certifiable_radius(n, 0.001, 0.25)
    assert all(0.0 <= r.certification.radius <= bound for r in rows)
    certified = [r for r in rows if r.correct and r.certification.radius > 0]
    assert len(certified) >= 12
    summary = text.strip().splitlines()[-2:]
    correct = sum(r.correct for r in rows)
    assert summary[0].startswith(f"certified accuracy at radius 0: {correct}/20")
    mean = sum(r.certification.radius for r in rows if r.correct) / 20
    assert f"mean certified radius {mean:.3f}" in summary[0]
    assert summary[1].startswith(f"max certifiable radius with n={n}, alpha=0.001: {bound:.3f}")


def test_run_demo_is_reproducible():
    first = run_demo(n0=20, n=50, seed=5, out=io.StringIO())
    second = run_demo(n0=20, n=50, seed=5, out=io.StringIO())
    assert [r.certification.counts for r in first] == [r.certification.counts for r in second]


def test_demo_command(capsys):
    assert main(["demo", "--white-box", "--n0", "20", "--n", "100", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "seed=1" in out and "n=100" in out
    for path, _ in demo_images():
        assert path.relative_to(demo_images_dir()).as_posix() in out
    assert main(["demo", "--n", "0"]) == 2
    assert capsys.readouterr().err.startswith("smoothapi: error: n must be a positive integer")


def test_certify_command_on_bundled_data(capsys):
    code = main(["certify", "--model", str(demo_model_path()), str(demo_images_dir()),
                 "--sigma", "0.25", "--n0", "20", "--n", "100", "--seed", "0"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tfile"
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == 20
    assert {row[1] for row in rows} == set(FASHION_MNIST_CLASSES)
    assert sum(row[4] == "1" for row in rows) >= 12


def test_denoised_demo_local_and_over_http():
    """The shipped denoisers lift a standard classifier's certificates, locally (full
    access) and through the loopback API (query access), on the bundled images."""
    from smoothapi.cli.demo import run_denoised_demo, shipped_path

    for name in ("target", "full", "query"):
        assert shipped_path(name).stat().st_size < 1_000_000
    out = io.StringIO()
    columns = run_denoised_demo(n0=20, n=100, seed=0, out=out)
    text = out.getvalue()
    truth = [label for _, label in demo_images()]
    assert list(columns) == ["no denoiser", "full access", "query access (API)"]
    assert all(len(certs) == 20 for certs in columns.values())

    def correct(certs):
        return sum(c.label == t for c, t in zip(certs, truth, strict=True))

    assert correct(columns["full access"]) > correct(columns["no denoiser"])
    assert correct(columns["query access (API)"]) > correct(columns["no denoiser"])
    assert all(c.queries == 120 for certs in columns.values() for c in certs)
    assert "certified accuracy at r=0.25" in text and "queries" in text


def test_shipped_weights_are_the_studys_and_carry_their_training_metadata():
    """What the package ships is what results/fashion-mnist trained and certified."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    from smoothapi.cli.demo import shipped_path

    study = Path(__file__).parents[2] / "results" / "fashion-mnist"
    trained = {
        "target": study / "classifiers" / "target" / "classifier.safetensors",
        "full": study / "denoisers" / "stab+mse-full@0.25" / "denoiser.safetensors",
        "query": study / "denoisers" / "stab+mse-query@0.25" / "denoiser.safetensors",
    }
    for name, path in trained.items():
        assert shipped_path(name).read_bytes() == path.read_bytes(), name
    for name, surrogates in (("full", ["target"]), ("query", ["lenet", "mobilenet", "vgg"])):
        with safe_open(shipped_path(name), "pt") as handle:
            meta = json.loads(handle.metadata()["smoothapi"])
        assert meta["sigma"] == 0.25 and meta["objective"] == "stab+mse"
        assert meta["surrogates"] == surrogates and meta["dataset"] == "fashion-mnist"
