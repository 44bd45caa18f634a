"""benchmarks/versus.py: its arguments and its plan (no simulator is started)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "versus.py")


def run_versus(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


def test_the_full_run_is_planned_within_30_minutes():
    done = run_versus("--dry-run", "--contenders", "ours,ours-uvloop,bare")
    assert done.returncode == 0, done.stderr
    plan = re.search(r"(\d+) runs \(3 rounds x 5 loads x 3 contenders\) of 15 s: expected about (\d+) min",
                     done.stdout)
    assert plan, done.stdout
    assert int(plan.group(1)) == 45
    # With aiofranka 0.9, franka-rs and our loop-served variant beside them, still within 30 minutes.
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import versus
    finally:
        sys.path.pop(0)
    runs = [(c, load) for _ in range(3) for load in versus.LOADS for c in versus.DEFAULT_CONTENDERS
            if (c, load) not in versus.UNSUPPORTED]
    assert len(runs) == 84 and versus.expected_seconds(runs, 15.0, 3.0) <= 30 * 60


def test_an_absent_peer_is_said_so_and_left_out():
    done = run_versus("--dry-run", "--contenders", "ours,legacy,franka-rs", "--loads", "L0")
    assert done.returncode == 0, done.stderr
    assert "legacy: not measured (no --legacy-venv)" in done.stdout
    assert "franka-rs: not measured (no --franka-rs-venv)" in done.stdout
    assert "1 runs (3 rounds x 1 loads x 1 contenders)" not in done.stdout
    assert "3 runs (3 rounds x 1 loads x 1 contenders)" in done.stdout


def test_bad_filters_name_the_option():
    done = run_versus("--loads", "L0,L9")
    assert done.returncode == 2 and "--loads must be a comma-separated subset of L0,L1,L2,L3,L4" in done.stderr
    done = run_versus("--contenders", "theirs")
    assert done.returncode == 2 and "--contenders must be" in done.stderr
    done = run_versus("--rounds", "0")
    assert done.returncode == 2 and "--rounds must be at least 1" in done.stderr
