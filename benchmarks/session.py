"""Session pacing: hybrid sleep + spin beside plain ``time.sleep``, at 50, 200 and 1000 Hz.

For each rate, in one run and one after another, a trivial loop (observe a
7-vector, a policy that scales it, an ``act`` that stores it) is paced by:

* ``sleep``: ``Pacer(rate, spin_s=0)``, i.e. one ``time.sleep(deadline - now)``
  per period to an absolute deadline, no spin (the plain baseline);
* ``hybrid``: ``Pacer(rate)``, the default: a coarse ``time.sleep`` to
  ``deadline - 1.2 ms``, then a spin on ``time.perf_counter`` to the deadline;
* ``session``: the same loop run by ``aiofranka.Session`` (hybrid pacing in a
  daemon thread, its coarse sleep an ``Event.wait`` so that ``stop()`` is
  prompt).

Each row gives the jitter (``|period - target|``) p50/p99/max in us over the
whole row (the window is sized to hold every period), the overruns, and the
CPU time the pacing thread used as a share of one core (what the spin costs).
Jitter on a loaded or virtualised machine is dominated by late wake-ups of
the coarse sleep; read the ``max`` column beside the ``cpu`` one.

Usage: ``python benchmarks/session.py [--seconds 3] [--rates 50 200 1000]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from aiofranka.pacing import Pacer
from aiofranka.stats import SessionStats
from aiofranka.sync.session import Session


class TrivialRobot:
    """observe/act/reset on preallocated arrays: the loop's own cost is negligible."""

    def __init__(self) -> None:
        self.q = np.zeros(7)
        self.last = np.zeros(7)

    def reset(self) -> None:
        self.q[:] = 0.0

    def observe(self) -> dict:
        return {"q": self.q}

    def act(self, action) -> None:
        self.last[:] = action


def policy(obs: dict) -> np.ndarray:
    return 0.5 * obs["q"]


def paced_loop(rate: float, seconds: float, spin_s: float) -> tuple[SessionStats, float]:
    robot = TrivialRobot()
    pacer = Pacer(rate, spin_s=spin_s, window=int(rate * seconds) + 100)
    cpu0 = time.thread_time()
    wall0 = time.perf_counter()
    end = wall0 + seconds
    pacer.reset()
    while time.perf_counter() < end:
        robot.act(policy(robot.observe()))
        pacer.wait()
    cpu = (time.thread_time() - cpu0) / (time.perf_counter() - wall0)
    return pacer.stats, cpu


def session_loop(rate: float, seconds: float) -> tuple[SessionStats, float]:
    """The Session runs the loop in its thread; the main thread waits (idle) in ``run()``,
    so the process's CPU time is, to a small error, the control thread's."""
    session = Session(TrivialRobot(), policy, rate, warmup_s=0.0, window=int(rate * seconds) + 100)
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    stats = session.run(seconds)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return stats, cpu


def row(rate: float, mode: str, stats: SessionStats, cpu: float) -> str:
    return (f"{rate:>6.0f} {mode:<8} {stats.iterations:>7} {stats.overruns:>8} "
            f"{stats.jitter.p50_us:>8.1f} {stats.jitter.p99_us:>8.1f} {stats.jitter.max_us:>9.1f} "
            f"{100 * cpu:>6.0f}%")


HEADER = f"{'Hz':>6} {'pacing':<8} {'iters':>7} {'overruns':>8} {'p50 us':>8} {'p99 us':>8} {'max us':>9} {'cpu':>7}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each row (default 3)")
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0, 1000.0])
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"switch interval {1e3 * sys.getswitchinterval():.1f} ms, {args.seconds:g} s per row")
    print(HEADER)
    for rate in args.rates:
        stats, cpu = paced_loop(rate, args.seconds, 0.0)
        print(row(rate, "sleep", stats, cpu), flush=True)
        stats, cpu = paced_loop(rate, args.seconds, 0.0012)
        print(row(rate, "hybrid", stats, cpu), flush=True)
        stats, cpu = session_loop(rate, args.seconds)
        print(row(rate, "session", stats, cpu), flush=True)
    print("cpu: CPU time of the pacing thread (process for 'session') per wall second; "
          "jitter = |period - target period|")


if __name__ == "__main__":
    main()
