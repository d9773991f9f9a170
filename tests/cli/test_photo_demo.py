"""``smoothapi demo --photos``: EfficientNet-Lite2 as a loopback vision API on held-out photos.

Run with a tiny RGB denoiser (the shipped photo denoisers are what the demo uses by
default; the timing in the README was taken with a DnCNN-8 of the shipped size).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from smoothapi.cli import main, photo_demo

pytest.importorskip("skimage.data")


def test_demo_photos_certifies_both_columns_and_draws_the_grid(capsys, tmp_path, tiny_denoiser):
    grid = tmp_path / "grid.png"
    code = main(["demo", "--photos", "--denoiser", str(tiny_denoiser), "--count", "2",
                 "--n0", "4", "--n", "16", "--out", str(grid)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("smoothapi demo --photos: EfficientNet-Lite2 (ImageNet) served")
    assert "n0=4, n=16" in lines[0]
    assert "no denoiser" in lines[1] and "photo denoiser" in lines[1]
    assert lines[2].startswith("astronaut") and lines[3].startswith("chelsea")
    assert "Egyptian cat" in lines[3]  # the API's own answer on the clean photo
    assert any(line.startswith("no denoiser: ") and "/2 certified" in line for line in lines)
    assert lines[-1] == f"picture: {grid.resolve()}"
    with Image.open(grid) as image:
        side = photo_demo.SIZE * 2  # each tile drawn twice its size
        assert image.width > 3 * side and image.height > 2 * side  # + a column of photo names
        grey = np.asarray(image.convert("L"))
    label_width = image.width - 3 * side
    assert (grey[:40] < 100).any()  # the title says sigma, n and what r means
    assert (grey[:, :label_width] < 100).sum(axis=0).any()  # each row's photo name


def test_demo_photos_without_a_shipped_denoiser_says_how_in_one_line(capsys, tmp_path,
                                                                     monkeypatch):
    from smoothapi.denoisers import pretrained

    monkeypatch.setattr(pretrained, "pretrained_denoisers", lambda: {})  # an install without it
    code = main(["demo", "--photos", "--count", "1", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no shipped denoiser 'photo-mse'" in err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--photos", "--white-box"], "two different demos"),
        (["--photos", "--count", "0"], "count"),
        (["--denoiser", "x.safetensors"], "--denoiser applies to the --photos demo"),
    ],
)
def test_demo_bad_options(capsys, argv, fragment):
    code = main(["demo", *argv])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1
