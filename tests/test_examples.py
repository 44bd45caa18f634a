"""The demo and the numbered examples run to completion against the simulator."""

import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path):
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_demo_runs_and_prints_the_figures():
    result = subprocess.run([sys.executable, "-m", "aiofranka.cli", "demo", "--duration", "4"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "loop figures" in result.stdout
    assert "lost cycles" in result.stdout
