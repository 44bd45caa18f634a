"""Server mode: state-read latency, command round trips, and a GIL-hogging script beside the loop.

In one run, against the embedded simulator (communication constraints enforced):

1. **State read**: ``FrankaRemoteController.state`` (a seqlocked copy out of
   shared memory, no round trip) and the bare ``seqlock_read`` under it, beside
   the in-process ``Controller.state`` read from another thread's point of view
   (a hop onto the controller's event loop, the only safe way to read it there).
2. **Command round trip**: assigning ``q_desired`` and reading ``mode``
   through the remote controller (pipe to the child, hop onto its loop, reply).
3. **A script that holds the GIL**: every 50 ms it burns 50 ms of pure-Python
   CPU, then sets a new ``q_desired`` (a 20 Hz script that never sleeps), for
   ``--seconds`` (default 20):

   * ``remote``: against ``FrankaRemoteController`` (server mode);
   * ``in-process``: the same script as a coroutine on the controller's own
     event loop, with the guardian serving the stalled cycles (the default);
   * ``in-process, no guardian``: the same, ``guardian=False``.

   Each row gives lost cycles, the longest run of lost cycles the robot saw
   (``min success``), whether it ended in a reflex, and ``sim/s`` (simulator
   states per wall second: the simulator shares the cores).

Usage: ``python benchmarks/server.py [--seconds 20] [--reads 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time

import numpy as np

from aiofranka import Controller, FrankaRemoteController, Robot, _kernel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _policies import burn_python  # noqa: E402 - the same pure-Python work the tests use


def percentiles(samples_ns) -> str:
    a = np.asarray(samples_ns, dtype=float) / 1000.0
    return f"p50 {np.percentile(a, 50):8.1f}  p99 {np.percentile(a, 99):8.1f}  max {a.max():8.1f} us"


def time_calls(fn, n: int) -> list[int]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
    return out


def target_at(q0: np.ndarray, k: int) -> np.ndarray:
    q = q0.copy()
    q[0] += 0.15 * np.sin(0.5 * k)
    return q


def row(label: str, cycles: int, lost: int, min_success: float, error, robot_s: float, wall_s: float) -> str:
    ending = type(error).__name__ if error is not None else "none"
    rate = cycles / wall_s if wall_s > 0 else float("nan")
    return (f"  {label:<26} {cycles:>7} {lost:>6} {min_success:>8.2f} {ending:>22} {rate:>7.0f}"
            f"   (robot {robot_s:.1f} s)")


def remote_rows(args, priority=None, label="remote") -> list[str]:
    lines = []
    with FrankaRemoteController(priority=priority) as ctl:
        snap = np.zeros(_kernel.FRAME_LEN)
        for _ in range(200):
            ctl.state
        lines.append("state read (remote, running loop)")
        lines.append(f"  FrankaRemoteController.state  {percentiles(time_calls(lambda: ctl.state, args.reads))}")
        lines.append("  seqlock_read alone            "
                     + percentiles(time_calls(lambda: _kernel.seqlock_read(ctl._view, snap), args.reads)))
        q0 = ctl.state.q
        lines.append("command round trip (remote)")
        n = max(200, args.reads // 20)
        lines.append("  q_desired = ...               "
                     + percentiles(time_calls(lambda: setattr(ctl, "q_desired", q0), n)))
        lines.append("  read mode                     " + percentiles(time_calls(lambda: ctl.mode, n)))
        # The GIL-hogging script.
        before = ctl.stats
        t0 = time.monotonic()
        error = None
        k = 0
        try:
            while time.monotonic() - t0 < args.seconds:
                burn_python(0.05)
                ctl.q_desired = target_at(q0, k)
                k += 1
        except Exception as exc:  # noqa: BLE001 - a reflex is a result here
            error = exc
        wall = time.monotonic() - t0
        stats = ctl.stats
        ctl.q_desired = q0
    lines.append(("burn", row(label, stats.cycles - before.cycles, stats.lost_cycles - before.lost_cycles,
                              stats.min_success_rate, error, stats.robot_time_s - before.robot_time_s, wall),
                  k))
    return lines


async def in_process(robot: Robot, seconds: float, guardian: bool):
    controller = Controller(robot, guardian=guardian, on_stall="silent")
    await controller.start()
    q0 = controller.state.q
    error = None
    t0 = time.monotonic()
    k = 0
    try:
        while time.monotonic() - t0 < seconds:
            burn_python(0.05)  # on the event loop: what a plain script would do there
            controller.q_desired = target_at(q0, k)
            k += 1
            await asyncio.sleep(0)
            if not controller.running:
                break
    except Exception as exc:  # noqa: BLE001
        error = exc
    wall = time.monotonic() - t0
    stats = controller.stats
    try:
        await controller.stop()
    except Exception as exc:  # noqa: BLE001 - the reflex, raised by stop()
        error = error or exc
    return stats, error, wall, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each GIL-hogging run")
    parser.add_argument("--priority", type=int, default=80,
                        help="also run the remote row with the loop thread SCHED_FIFO at this priority (0: skip)")
    parser.add_argument("--reads", type=int, default=20000, help="state reads to time")
    args = parser.parse_args()
    print(f"# benchmarks/server.py on {platform.node()}: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    lines = remote_rows(args)
    if args.priority:
        lines += [x for x in remote_rows(args, args.priority, f"remote, priority {args.priority}")
                  if isinstance(x, tuple)]
    burn = [x for x in lines if isinstance(x, tuple)]
    for line in lines:
        if isinstance(line, str):
            print(line)

    robot = Robot()
    try:
        controller = Controller(robot)

        async def local_reads():
            await controller.start()
            loop = asyncio.get_running_loop()
            samples = []

            def reader():
                for _ in range(max(200, args.reads // 20)):
                    t0 = time.perf_counter_ns()
                    asyncio.run_coroutine_threadsafe(_state(controller), loop).result()
                    samples.append(time.perf_counter_ns() - t0)

            thread = threading.Thread(target=reader)
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0.01)
            await controller.stop()
            return samples

        samples = asyncio.run(local_reads())
        print("state read (in-process Controller, from another thread via its loop)")
        print(f"  Controller.state via loop     {percentiles(samples)}")
        results = []
        for guardian in (True, False):
            stats, error, wall, k = asyncio.run(in_process(robot, args.seconds, guardian))
            label = "in-process" if guardian else "in-process, no guardian"
            results.append(row(label, stats.cycles, stats.lost_cycles, stats.min_success_rate, error,
                               stats.robot_time_s, wall))
            if robot.in_reflex():
                robot.recover()
    finally:
        robot.close()
    print(f"a script burning 50 ms of pure Python, then setting q_desired, for {args.seconds:.0f} s")
    print(f"  {'':<26} {'cycles':>7} {'lost':>6} {'min succ':>8} {'ended by':>22} {'sim/s':>7}")
    for _, text, k in burn:
        print(text + f"   {k} targets set")
    for text in results:
        print(text)


async def _state(controller):
    return controller.state


if __name__ == "__main__":
    main()
