"""The runnable examples run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_certify_local_model_example_prints_a_plan_and_a_certificate():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "certify_local_model.py"), "--n", "300", "--seed", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("n=300 samples can certify at most R=0.")
    assert "needs n>=301" in lines[1]  # samples_needed(0.5, 0.25, 0.001, p_a=0.999)
    assert lines[2] == "seed=1"
    assert lines[3].startswith(("certified", "abstain"))
