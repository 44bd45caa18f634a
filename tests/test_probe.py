"""probe_wakeups, its C sleeper and `aiofranka check`."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from aiofranka import _kernel
from aiofranka.probe import WakeupReport, probe_wakeups
from aiofranka.stats import Summary

def test_probe_sleeps_each_period_and_reports_every_wake_up():
    t0 = time.monotonic()
    report = probe_wakeups(0.3, period=1e-3)
    elapsed = time.monotonic() - t0
    assert report.count == 300
    assert report.period_s == 1e-3 and report.priority is None
    assert elapsed >= 0.3  # it slept to the deadlines instead of returning at once
    assert 0.0 <= report.lateness.p50_us <= report.lateness.p99_us <= report.lateness.max_us
    assert report.late_period <= report.late_half_period <= report.count
    assert report.verdict.split(":")[0] in ("fit", "marginal", "not fit")
    assert report.to_dict()["lateness"]["count"] == 300
    assert "300 wake-ups every 1 ms (normal scheduling)" in str(report)


def test_wake_probe_measures_lateness_against_absolute_deadlines():
    # Deadlines that already passed are reported as late by how much they passed.
    out = np.zeros(5, dtype=np.int64)
    start = time.monotonic_ns() - 10_000_000  # the first deadline was 9 ms ago
    _kernel.wake_probe(out, start, 1_000_000)
    assert 8_900_000 <= out[0] < 60_000_000
    assert np.all(np.diff(out) < 0)  # each later deadline is less overdue (by about a period)
    assert np.all(np.abs(np.diff(out) + 1_000_000) < 500_000)
    with pytest.raises(TypeError, match="int64"):
        _kernel.wake_probe(np.zeros(3), start, 1_000_000)
    with pytest.raises(ValueError, match="period_ns"):
        _kernel.wake_probe(out, start, 0)


def test_wake_probe_releases_the_gil():
    out = np.zeros(300, dtype=np.int64)
    thread = threading.Thread(target=_kernel.wake_probe, args=(out, time.monotonic_ns(), 1_000_000))
    spins = 0
    thread.start()
    while thread.is_alive():
        spins += 1
    thread.join()
    # 0.3 s of pure Python: millions of turns when the probe leaves the GIL free,
    # next to none if it held it.
    assert spins > 10_000


def test_probe_arguments_are_validated_by_name():
    with pytest.raises(ValueError, match="duration"):
        probe_wakeups(0)
    with pytest.raises(TypeError, match="period"):
        probe_wakeups(1.0, period="fast")
    for bad in (0, 100, True, 2.5):
        with pytest.raises(ValueError, match="priority"):
            probe_wakeups(0.01, priority=bad)


def test_probe_at_a_real_time_priority():
    if os.geteuid() != 0:
        pytest.skip("SCHED_FIFO needs root; CI runs as root")
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    seen = []
    report = probe_wakeups(0.2, priority=80, progress=lambda elapsed, late: seen.append((elapsed, late)))
    assert report.priority == 80 and report.count == 200
    assert seen and seen[-1][0] == pytest.approx(0.2)
    assert "SCHED_FIFO 80" in str(report)
    # It ran in a thread of its own: the caller's scheduling is as it was.
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before


def test_verdict_follows_the_late_counts():
    def report(max_us, half, whole):
        return WakeupReport(1000, 1e-3, None, Summary(1000, 50.0, 90.0, max_us, 55.0), half, whole)

    assert report(120.0, 0, 0).verdict.startswith("fit")
    assert report(400.0, 0, 0).verdict.startswith("marginal")
    assert report(800.0, 3, 0).verdict.startswith("marginal")
    verdict = report(4200.0, 9, 4).verdict
    assert verdict.startswith("not fit") and "4 of 1000" in verdict and "4.2 ms" in verdict


def test_check_command_prints_the_report_and_strict_fails_an_unfit_machine():
    cmd = [sys.executable, "-m", "aiofranka.cli", "check", "--duration", "0.3", "--priority", "0"]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert "300 wake-ups every 1 ms" in plain.stdout
    assert "sleeping to 1 ms deadlines" in plain.stderr  # progress goes to stderr
    strict = subprocess.run(cmd + ["--strict"], capture_output=True, text=True, timeout=60)
    verdict = strict.stdout.strip().splitlines()[-1]
    assert strict.returncode == (1 if verdict.startswith("not fit") else 0), strict.stdout
    bad = subprocess.run([sys.executable, "-m", "aiofranka.cli", "check", "--duration", "-1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--duration" in bad.stderr
