"""The README's Python quick start runs as written and prints what it promises."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_and_certifies():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    quick_start = blocks[0]
    assert len(quick_start.strip().splitlines()) <= 10
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(quick_start, "README.md", "exec"), {})
    label_line, ceiling_line = out.getvalue().splitlines()
    label, radius = label_line.rsplit(" ", 1)
    assert label in {"sneaker", "sandal", "ankle-boot", "ABSTAIN"}
    assert 0.0 <= float(radius) <= float(ceiling_line) + 5e-4  # the radius is printed rounded
    assert float(ceiling_line) == pytest_approx(0.7996)


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, abs=1e-4)


def test_readme_names_the_two_set_up_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_shipped_denoisers_block_runs_and_its_table_names_every_shipped_denoiser():
    from smoothapi.denoisers import pretrained_denoisers

    text = README.read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
               if "pretrained_denoisers()" in b]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    printed = [line.split()[0] for line in out.getvalue().splitlines()]
    assert printed == list(pretrained_denoisers())
    table = text.split("**Shipped denoisers.**", 1)[1].split("\n\n**", 1)[0]
    assert re.findall(r"^\| `([^`]+)` \|", table, flags=re.M) == printed
