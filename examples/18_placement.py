"""Placement: where the serving C thread runs, beside a busy thread of yours.

A pure-Python thread spins (your policy, a data loader) while the arm holds its
pose, with each placement in turn: the default ``serve_cpu="auto"`` (on the CPU
the states arrive on), ``"least-busy"`` (off a CPU another thread keeps busy)
and ``None`` (the scheduler decides). The figures show where the serving
thread ran, how often it moved, whether it followed the states, and how much
of a core the busy thread got. The serving thread needs a few percent of a
core whichever it is, so the busy thread keeps nearly a whole one.

Runs against the embedded simulator: python examples/18_placement.py
See docs/kernel-serving.md#placement.
"""

import asyncio
import threading
import time

from aiofranka import Controller, Robot


def spin(stop: threading.Event, result: dict) -> None:
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    n = 0
    while not stop.is_set():
        for _ in range(10_000):
            n += 1
    result["share"] = (time.thread_time() - cpu0) / (time.perf_counter() - wall0)


async def hold_beside_a_busy_thread(robot: Robot, serve_cpu) -> None:
    stop, result = threading.Event(), {}
    async with Controller(robot, serve_cpu=serve_cpu) as controller:
        worker = threading.Thread(target=spin, args=(stop, result))
        worker.start()
        await controller.wait(3.0)
        stop.set()
        await asyncio.to_thread(worker.join)
    stats = controller.stats
    print(f"serve_cpu={serve_cpu!r}: served by {stats.serve} on CPU {stats.serve_cpu} "
          f"({stats.serve_moves} moves{', following the states' if stats.serve_follows else ''}), "
          f"{stats.lost_cycles} lost; "
          f"the busy thread got {100 * result['share']:.1f} % of a core")


async def main() -> None:
    with Robot() as robot:
        for serve_cpu in ("auto", "least-busy", None):
            await hold_beside_a_busy_thread(robot, serve_cpu)


if __name__ == "__main__":
    asyncio.run(main())
