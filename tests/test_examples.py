"""The example scripts run as a user runs them (in-process, a round or two)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_coordinator_example_runs_in_process(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "seed_s14_federated_rounds.py"),
                           "--rounds", "1"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Federated model: Average loss" in done.stdout
