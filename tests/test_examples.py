"""The demo and the numbered examples run to completion against the simulator."""

import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
#: The three flows aiofranka is for, each a torch policy beside the running controller.
POLICY_EXAMPLES = ("06_asyncify_policy.py", "07_cuda_inference_thread.py", "08_mpify_policy.py")
AMPLITUDE = 0.15  # rad: the reference's sine on joint 1 in those examples


def test_there_are_examples():
    assert EXAMPLES
    assert set(POLICY_EXAMPLES) <= {path.name for path in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path):
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    if path.name in POLICY_EXAMPLES:
        found = re.search(r"(\d+) policy calls at 30 Hz .*joint 1 within ([0-9.]+) rad", result.stdout)
        assert found, result.stdout[-2000:]
        calls, worst = int(found[1]), float(found[2])
        assert calls >= 60  # 30 Hz for 3 s of robot time (90 ticks), a third skipped at worst on a slow host
        # The target swings +-0.15 rad: an arm that did not follow it would be that far off.
        assert worst < 0.5 * AMPLITUDE
        assert "lost cycles" in result.stdout  # the loop's figures


def test_demo_runs_and_prints_the_figures():
    result = subprocess.run([sys.executable, "-m", "aiofranka.cli", "demo", "--duration", "4"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "loop figures" in result.stdout
    assert "lost cycles" in result.stdout
